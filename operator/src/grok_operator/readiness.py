"""A Kubernetes object's Ready condition: whether a pod (or a node) is Ready, and since when. The one reading
of it that the autoscaler, status.lastStartup and the development cluster share (pure: no API calls)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def timestamp(stamp: str | None) -> float | None:
    """An API server timestamp (RFC 3339) as seconds since the epoch; None for none."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def ready_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object's Ready condition (any status), or None where it has none yet."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def is_ready(obj: dict[str, Any]) -> bool:
    """Whether a pod or a node has its Ready condition True."""
    ready = ready_condition(obj)
    return ready is not None and ready.get("status") == "True"


def ready_since(pod: dict[str, Any]) -> float | None:
    """When the pod's Ready condition turned True, or None while it is not Ready."""
    return timestamp((ready_condition(pod) or {}).get("lastTransitionTime")) if is_ready(pod) else None
