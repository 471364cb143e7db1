"""A replica's start-up, as its server reports it (GET /startup on the metrics port), shaped for the
GrokDeployment's status.lastStartup (pure: the fetch is startup_reports.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grok_operator.observe.pods import is_ready, turned_ready_last

SERVER_NAME = "grok-server"  # app.kubernetes.io/name of the pods that run grok-server (not the workers)


def server_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that run grok-server: a multi-node group's leader, never its workers."""
    return [pod for pod in pods
            if ((pod.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name", SERVER_NAME)
            == SERVER_NAME]


def ready_servers(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [pod for pod in server_pods(pods) if is_ready(pod)]


def newest_ready_server(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the server pods, the Ready one that turned Ready last; None before any did."""
    return turned_ready_last(server_pods(pods))


def pod_uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def last_startup(pods: list[dict[str, Any]], reports: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """status.lastStartup: the report of the server pod that turned Ready last, once it was fetched (None
    until then: the status keeps what it had)."""
    pod = newest_ready_server(pods)
    return reports.get(pod_uid(pod)) if pod is not None else None


def _number(value: Any, digits: int = 2) -> float:
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return 0.0


def startup_status(report: dict[str, Any], pod: str) -> dict[str, Any]:
    """The server's /startup body (see grok_server's StartupReport.to_json) as status.lastStartup."""
    cache = report.get("compile_cache") or {}
    weights = report.get("weights") or {}
    phases = report.get("phases") or {}
    shaped: dict[str, Any] = {
        "pod": pod,
        "seconds": _number(report.get("seconds")),
        "phases": {str(k): _number(v) for k, v in phases.items()} if isinstance(phases, dict) else {},
        "compileCache": str(cache.get("state") or "unknown"),
        "compileCacheReason": str(cache.get("reason") or ""),
        "weightsSource": str(weights.get("source") or ""),
        "weightsBytes": int(weights.get("bytes") or 0),
        "weightsSharedBytes": int(weights.get("shared_bytes") or 0),
    }
    for key, name in (("path", "weightsPath"), ("reason", "weightsReason")):
        if weights.get(key):
            shaped[name] = str(weights[key])
    rate = report.get("weights_gb_per_second")
    if isinstance(rate, int | float):
        shaped["weightsGBPerSecond"] = _number(rate, 3)
    if isinstance(report.get("engine_processes"), int):
        shaped["engineProcesses"] = report["engine_processes"]
    if report.get("engine_prestart"):  # "used", or "not used: <why>" (grok_server/server/prestart.py)
        shaped["enginePrestart"] = str(report["engine_prestart"])
    overran = [str(p) for p in report.get("overran") or []]
    if overran:
        shaped["overran"] = overran
    return shaped


# How grok-server words a compile cache it was given but could not use (compile_cache.prepare).
UNAVAILABLE_MARKS = ("not writable", "starting without the compile cache")


def cache_unavailable(report: dict[str, Any]) -> str | None:
    """The server's reason when its compile cache volume could not be used (worth a Warning Event), else
    None (a hit, a miss, or a cache that is off for another reason)."""
    cache = report.get("compile_cache") or {}
    reason = str(cache.get("reason") or "")
    if cache.get("state") == "off" and any(mark in reason for mark in UNAVAILABLE_MARKS):
        return reason
    return None


NO_NODE_CACHE = "no --node-cache-dir"  # how grok-server words a replica not given a node folder


def node_copy_unavailable(report: dict[str, Any]) -> str | None:
    """The server's reason when it was given a node folder but loads from the shared cache (worth a Warning
    Event: slower, and every such replica reads the whole model from the shared volume), else None."""
    weights = report.get("weights") or {}
    reason = str(weights.get("reason") or "")
    if weights.get("source") == "shared" and reason and not reason.startswith(NO_NODE_CACHE):
        return reason
    return None


def holds_node_copy(report: dict[str, Any]) -> bool:
    """Whether the server loaded its node's copy of the model (its node holds the model)."""
    return (report.get("weights") or {}).get("source") == "node"


def replacing(old: Any, new: Any) -> Any:
    """`new`, with a null for every key `old` had and `new` has not, at every depth: the status is written
    with a JSON merge patch, which would otherwise keep an earlier pod's keys beside the new ones."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    return {**{k: None for k in old if k not in new}, **{k: replacing(old.get(k), v) for k, v in new.items()}}
