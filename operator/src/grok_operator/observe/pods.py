"""Reading pods (pure): when they were made and turned Ready, and which turned Ready last."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _time(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def created_at(pod: dict[str, Any]) -> float | None:
    """The pod's creation time (an index entry's `created`, or the object's creationTimestamp)."""
    return _time(pod.get("created") or (pod.get("metadata") or {}).get("creationTimestamp"))


def _ready_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's Ready condition while it is True."""
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready" and c.get("status") == "True"), None)


def is_ready(pod: dict[str, Any]) -> bool:
    return _ready_condition(pod) is not None


def ready_since(pod: dict[str, Any]) -> float | None:
    """When the pod's Ready condition turned True, or None while it is not Ready (or does not say when)."""
    ready = _ready_condition(pod)
    return _time(ready.get("lastTransitionTime")) if ready else None


def turned_ready_last(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the Ready pods, the one that turned Ready last; None before any did."""
    newest: tuple[float, dict[str, Any]] | None = None
    for pod in pods:
        became = ready_since(pod)
        if became is not None and (newest is None or became > newest[0]):
            newest = (became, pod)
    return None if newest is None else newest[1]


def last_startup_seconds(pods: list[dict[str, Any]]) -> float | None:
    """Creation to Ready of the replica that turned Ready last (its cold start: scheduling, process start,
    model load), or None before any did."""
    pod = turned_ready_last([p for p in pods if created_at(p) is not None])
    if pod is None:
        return None
    return max(0.0, (ready_since(pod) or 0.0) - (created_at(pod) or 0.0))
