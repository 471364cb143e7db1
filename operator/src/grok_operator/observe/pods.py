"""Reading pods (pure): since when a pod has been Ready (its Ready condition read by grok_common.pods, as the
router reads it), when a pod was made, and which turned Ready last: for the autoscaler and
status.lastStartup."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from grok_common.pods import is_ready, ready_condition


def timestamp(stamp: str | None) -> float | None:
    """An API server timestamp (RFC 3339) as seconds since the epoch; None for none."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def ready_since(pod: dict[str, Any]) -> float | None:
    """When the pod's Ready condition turned True, or None while it is not Ready."""
    return timestamp((ready_condition(pod) or {}).get("lastTransitionTime")) if is_ready(pod) else None


def created_at(pod: dict[str, Any]) -> float | None:
    """The pod's creation time (an index entry's `created`, or the object's creationTimestamp)."""
    return timestamp(pod.get("created") or (pod.get("metadata") or {}).get("creationTimestamp"))


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
