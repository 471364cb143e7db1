"""Status of a GrokDeployment (pure): conditions, phase and counts from what its children report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from grok_operator.observe.startup import replacing
from grok_operator.plan.planner import Plan


@dataclass(frozen=True)
class Observed:
    """What the operator saw of the children."""

    desired_replicas: int
    plan: Plan | None = None
    plan_error: tuple[str, str] | None = None  # (reason, message)
    model_state: str = "Ready"  # Ready, Fetching, FetchFailed
    model_message: str = ""
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    unschedulable: list[str] = field(default_factory=list)  # scheduler messages of Pending pods
    failing_pods: list[str] = field(default_factory=list)  # crash loops, image pulls: the kubelet's reasons
    stalled: str = ""  # the Deployment's ProgressDeadlineExceeded message
    endpoint: str = ""
    http_endpoint: str = ""
    blocked: tuple[str, str] | None = None  # (reason, message): an API the plan needs is not installed
    last_startup_seconds: float | None = None  # creation to Ready of the replica that turned Ready last
    last_startup: dict[str, Any] | None = None  # that replica's own report (startup.startup_status)
    selector: str = ""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def merge_conditions(
    old: list[dict[str, Any]], new: list[dict[str, Any]], generation: int, timestamp: str | None = None
) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where a condition's status did not change, and keeping
    old conditions of the types the new list does not speak of (each writer owns its own types)."""
    previous = {c["type"]: c for c in old or []}
    spoken = {c["type"] for c in new}
    merged = []
    for c in new:
        before = previous.get(c["type"])
        changed = before is None or before.get("status") != c["status"]
        stamp = (timestamp or now()) if changed else before.get("lastTransitionTime") or timestamp or now()
        merged.append({**c, "lastTransitionTime": stamp, "observedGeneration": generation})
    return merged + [c for c in old or [] if c["type"] not in spoken]


def conditions_and_phase(o: Observed) -> tuple[list[dict[str, Any]], str]:
    if o.plan_error is not None:
        reason, message = o.plan_error
        return [
            condition("PlanValid", False, reason, message),
            condition("Ready", False, "PlanInvalid", "the spec cannot be served: see PlanValid"),
            condition("Progressing", False, "PlanInvalid", "nothing is rolled out until the spec is fixed"),
        ], "Invalid"

    assert o.plan is not None
    p = o.plan
    plan_message = (
        f"tensor parallel {p.tensor_parallel_size} on {p.gpu_product}: {p.weight_gib_per_gpu:.1f} GiB "
        f"weights and {p.kv_cache_gib_per_gpu:.1f} GiB KV cache per GPU, {p.max_concurrent_sequences} "
        "full-context sequences per replica"
    )
    conditions = [condition("PlanValid", True, "Planned", plan_message)]

    model_ok = o.model_state == "Ready"
    model_reasons = {
        "Ready": "ModelAvailable",
        "Fetching": "Fetching",
        "FetchFailed": "FetchFailed",
        "ClaimNotFound": "ClaimNotFound",
    }
    conditions.append(
        condition(
            "ModelReady",
            model_ok,
            model_reasons.get(o.model_state, o.model_state),
            o.model_message or ("weights available" if model_ok else ""),
        )
    )

    want, ready = o.desired_replicas, o.ready_replicas
    rolling = model_ok and (o.updated_replicas < want or ready < want or o.replicas > want)
    unschedulable = bool(o.unschedulable)
    unschedulable_reason = "Scheduled"
    if unschedulable:
        short_of_gpus = any("Insufficient" in m and "gpu" in m for m in o.unschedulable)
        unschedulable_reason = "InsufficientGPUs" if short_of_gpus else "Unschedulable"
    conditions.append(
        condition(
            "Unschedulable",
            unschedulable,
            unschedulable_reason,
            (
                f"{len(o.unschedulable)} pod(s) cannot be scheduled: {o.unschedulable[0]}"
                if unschedulable
                else "no pod is waiting for a node"
            ),
        )
    )
    if o.blocked:
        progress = condition("Progressing", False, o.blocked[0], "nothing is made until " + o.blocked[1])
    elif not model_ok:
        progress = condition(
            "Progressing",
            o.model_state == "Fetching",
            o.model_state,
            "waiting for the model weights before starting servers",
        )
    elif rolling:
        progress = condition(
            "Progressing",
            True,
            "RollingOut",
            f"{o.updated_replicas} of {want} replicas updated, {ready} ready",
        )
    else:
        progress = condition("Progressing", False, "Complete", f"{want} replicas up to date")
    conditions.append(progress)

    if want == 0:
        ready_cond = condition("Ready", False, "ScaledToZero", "no replicas requested")
    elif ready >= want:
        ready_cond = condition("Ready", True, "AllReplicasReady", f"{ready} of {want} replicas ready")
    else:
        ready_cond = condition("Ready", False, "ReplicasNotReady", f"{ready} of {want} replicas ready")
    conditions.append(ready_cond)

    degraded_reason = ""
    if o.blocked:
        degraded_reason, degraded_message = o.blocked
    elif o.model_state in ("FetchFailed", "ClaimNotFound"):
        degraded_reason, degraded_message = o.model_state, o.model_message
    elif unschedulable:
        degraded_reason, degraded_message = unschedulable_reason, conditions[2]["message"]
    elif o.failing_pods:
        degraded_reason = "PodsFailing"
        degraded_message = f"{len(o.failing_pods)} pod(s) failing: " + "; ".join(o.failing_pods[:3])
    elif o.stalled:
        degraded_reason, degraded_message = "ProgressDeadlineExceeded", o.stalled
    conditions.append(
        condition(
            "Degraded",
            bool(degraded_reason),
            degraded_reason or "Healthy",
            degraded_message if degraded_reason else "all replicas healthy",
        )
    )

    if o.model_state in ("FetchFailed", "ClaimNotFound") or o.blocked:
        phase = "Failed"
    elif o.model_state == "Fetching":
        phase = "Fetching"
    elif want == 0:
        phase = "ScaledToZero"
    elif ready >= want and not rolling:
        phase = "Ready"
    elif unschedulable and ready == 0:
        phase = "Pending"
    elif degraded_reason:
        phase = "Degraded"
    else:
        phase = "Progressing"
    return conditions, phase


def status_patch(o: Observed, old_status: dict[str, Any], generation: int) -> dict[str, Any]:
    conditions, phase = conditions_and_phase(o)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": merge_conditions(old_status.get("conditions") or [], conditions, generation),
        "replicas": o.replicas,
        "readyReplicas": o.ready_replicas,
        "updatedReplicas": o.updated_replicas,
        "selector": o.selector,
        "endpoint": o.endpoint,
        "httpEndpoint": o.http_endpoint,
    }
    if o.plan is not None:
        status["plan"] = o.plan.to_status()
    if o.last_startup_seconds is not None:
        status["lastStartupSeconds"] = round(o.last_startup_seconds)
    if o.last_startup is not None:
        status["lastStartup"] = replacing(old_status.get("lastStartup"), o.last_startup)
    return status
