"""What a GrokDeployment's children report, read into an Observed (pure): the model's state from the fetch
Job, pods that fail or cannot be scheduled, a stalled rollout, the replicas' counts and last start-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.observe.pods import last_startup_seconds
from grok_operator.observe.startup import last_startup
from grok_operator.observe.status import Observed
from grok_operator.plan.planner import Plan


def newest(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of two copies of one object, the later (resourceVersions are etcd revisions in practice)."""
    if a is None or b is None:
        return a or b

    def version(o: dict[str, Any]) -> int:
        return int(o["metadata"].get("resourceVersion") or 0)

    return a if version(a) >= version(b) else b

# How much of a failed fetch pod's own message a condition carries (its last line: grok-fetch's error).
FETCH_REASON_CHARS = 300

def fetch_job_failed(job: dict[str, Any] | None) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Failed" and c.get("status") == "True" for c in conditions)

def last_pod_reason(pods: list[dict[str, Any]]) -> str:
    """The last line of the termination message of the fetch pod that ended last (the Job's container
    keeps its logs' tail there: FallbackToLogsOnError), or ""."""
    ended = [t for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []
             if (t := (cs.get("state") or {}).get("terminated"))]
    if not ended:
        return ""
    last = max(ended, key=lambda t: t.get("finishedAt") or "")
    lines = [line.strip() for line in (last.get("message") or "").splitlines() if line.strip()]
    return lines[-1][-FETCH_REASON_CHARS:] if lines else ""

def model_state(job: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """Fetch Job status (and, once it failed, its pods) → (ModelReady state, message)."""
    if job is None:
        return "Fetching", "starting the model fetch Job"
    status = job.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Complete" and c.get("status") == "True":
            return "Ready", "weights fetched into the model cache"
        if c.get("type") == "Failed" and c.get("status") == "True":
            reason = last_pod_reason(pods or [])
            return (
                "FetchFailed",
                f"fetch Job {job['metadata']['name']} failed: {c.get('message') or c.get('reason')}"
                + (f"; its last pod: {reason}" if reason else ""),
            )
    return (
        "Fetching",
        f"fetch Job {job['metadata']['name']} is running ({status.get('failed', 0)} failed attempts)",
    )

# Container waiting reasons that do not clear by waiting: the pod needs a fix (image, config) or crashes.
FAILING_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
     "CreateContainerError", "RunContainerError"}
)

def failing_pod_messages(pods: list[dict[str, Any]]) -> list[str]:
    messages = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILING_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                messages.append(f"pod {pod['metadata']['name']}: container {cs.get('name')} "
                                f"{waiting['reason']}{detail}")
    return messages

def stalled_message(deployment: dict[str, Any] | None) -> str:
    for c in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return str(c.get("message") or "the rollout passed its progress deadline")
    return ""

def unschedulable_messages(pods: list[dict[str, Any]]) -> list[str]:
    messages = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                messages.append(c.get("message") or "no node fits")
    return messages

def observe(
    spec: GrokDeploymentSpec,
    the_plan: Plan,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    model: tuple[str, str],
    startup_reports: Mapping[str, dict[str, Any]] | None = None,
) -> Observed:
    """`startup_reports`: the servers' start-up reports fetched so far, by pod uid (status.lastStartup)."""
    dstatus = (deployment or {}).get("status") or {}
    # A LeaderWorkerSet's status has no observedGeneration: its counts are of groups, current when read.
    current = deployment is not None and (
        deployment.get("kind") == "LeaderWorkerSet"
        or dstatus.get("observedGeneration") == deployment["metadata"].get("generation"))
    port = spec.server.grpc_port
    return Observed(
        desired_replicas=spec.replicas,
        plan=the_plan,
        model_state=model[0],
        model_message=model[1],
        replicas=int(dstatus.get("replicas", 0)),
        ready_replicas=int(dstatus.get("readyReplicas", 0)),
        updated_replicas=int(dstatus.get("updatedReplicas", 0)) if current else 0,
        unschedulable=unschedulable_messages(pods),
        failing_pods=failing_pod_messages(pods),
        stalled=stalled_message(deployment),
        last_startup_seconds=last_startup_seconds(pods),
        last_startup=last_startup(pods, startup_reports or {}),
        endpoint=f"{spec.name}.{spec.namespace}.svc:{port}",
        http_endpoint=(f"{'https' if spec.router.tls else 'http'}://{spec.name}.{spec.namespace}.svc:"
                       f"{spec.router.http_port}/v1" if spec.router_enabled else ""),
        selector=spec.selector,
    )
