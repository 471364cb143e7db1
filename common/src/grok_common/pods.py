"""A pod's (or node's) Ready condition, read one way by the router (which pods get calls), the operator
(status, the autoscaler) and the development cluster (pure: a pod as the API server's JSON, no client)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's Ready condition (any status), or None where it has none yet."""
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Whether a pod or a node has its Ready condition True."""
    ready = ready_condition(obj)
    return ready is not None and ready.get("status") == "True"
