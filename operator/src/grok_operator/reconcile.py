"""Reconciliation of one GrokDeployment: plan, apply children, report status. Idempotent.

Every child has a deterministic name and is written with server-side apply, so running this twice (an
operator restarted mid-way, two events at once) converges on the same objects and never duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grok_operator import manifests
from grok_operator.admission import check_attention_backend
from grok_operator.autoscaler import last_startup_seconds
from grok_operator.kube import Kube
from grok_operator.planner import Plan, PlanError, plan
from grok_operator.resource import MANAGED_BY, GrokDeploymentSpec
from grok_operator.startup import last_startup
from grok_operator.status import Observed, status_patch

log = logging.getLogger(__name__)

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"


@dataclass
class ReconcileResult:
    spec: GrokDeploymentSpec | None
    plan: Plan | None
    plan_error: tuple[str, str] | None
    model: tuple[str, str] = ("Ready", "")
    deployment: dict[str, Any] | None = None  # as the API server returned it when applied
    applied: list[str] = field(default_factory=list)
    blocked: tuple[str, str] | None = None  # (reason, message): what the cluster lacks to run the plan

    def status(
        self,
        old_status: dict[str, Any],
        generation: int,
        pods: list[dict[str, Any]],
        deployment: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The status to write, from the freshest view of pods and Deployment the caller has."""
        if self.spec is not None and not self.spec.autoscaling:  # the autoscaler's condition goes with it
            kept = [c for c in old_status.get("conditions") or [] if c["type"] != "AutoscalingActive"]
            old_status = {**old_status, "conditions": kept}
        if self.plan is None or self.spec is None:
            # The running Deployment (if any) was left alone: report what it still serves, and keep the
            # selector the scale subresource hands to HPA or KEDA.
            dstatus = (deployment or {}).get("status") or {}
            invalid = Observed(
                desired_replicas=0,
                plan_error=self.plan_error,
                replicas=int(dstatus.get("replicas", 0)),
                ready_replicas=int(dstatus.get("readyReplicas", 0)),
                updated_replicas=int(dstatus.get("updatedReplicas", 0)),
                selector=old_status.get("selector", ""),
                endpoint=old_status.get("endpoint", ""),
                http_endpoint=old_status.get("httpEndpoint", ""),
            )
            return status_patch(invalid, old_status, generation)
        live = newest(self.deployment, deployment)
        observed = dataclasses.replace(observe(self.spec, self.plan, live, pods, self.model),
                                       blocked=self.blocked)
        return status_patch(observed, old_status, generation)


def newest(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of two copies of one object, the later (resourceVersions are etcd revisions in practice)."""
    if a is None or b is None:
        return a or b

    def version(o: dict[str, Any]) -> int:
        return int(o["metadata"].get("resourceVersion") or 0)

    return a if version(a) >= version(b) else b


def planned(spec_or_error: GrokDeploymentSpec | ValueError) -> tuple[Plan | None, tuple[str, str] | None]:
    if isinstance(spec_or_error, ValueError):
        return None, ("InvalidSpec", str(spec_or_error))
    try:
        check_attention_backend(spec_or_error)
        return plan(spec_or_error.plan_request()), None
    except PlanError as err:
        return None, (err.reason, str(err))
    except ValueError as err:
        return None, ("InvalidSpec", str(err))


def read_spec(body: dict[str, Any]) -> GrokDeploymentSpec | ValueError:
    try:
        return GrokDeploymentSpec.from_body(body)
    except ValueError as err:
        return err


def field_manager(spec: GrokDeploymentSpec) -> str:
    # One manager per GrokDeployment: objects shared by several (the model cache) keep each owner's reference.
    return f"{MANAGED_BY}/{spec.name}"[:128]


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field we state has the value we stated (the API server may add defaults, and stores an
    empty map or list as no field at all)."""
    if live is None and isinstance(desired, dict | list) and not desired:
        return True
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(is_subset(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(live, str | int | float):
        return str(desired) == str(live)
    return desired == live


class CrdProbe:
    """Whether an API the operator can use but does not need (a CRD) is installed; re-checked at most once
    per `ttl` seconds, so reconciles do not each ask."""

    def __init__(self, kube: Kube, crd: str, ttl: float = 60) -> None:
        self.kube, self.crd, self.ttl = kube, crd, ttl
        self._value, self._checked = False, -1e9

    def __call__(self) -> bool:
        if time.monotonic() - self._checked > self.ttl:
            self._value, self._checked = self.kube.crd_exists(self.crd), time.monotonic()
        return self._value


class ServiceMonitorProbe(CrdProbe):
    """Whether the Prometheus Operator's ServiceMonitor CRD exists, and the labels the monitors get."""

    def __init__(self, kube: Kube, ttl: float = 60, labels: dict[str, str] | None = None) -> None:
        super().__init__(kube, SERVICE_MONITOR_CRD, ttl)
        self.labels = dict(labels or {})  # extra labels for the ServiceMonitors (what Prometheus selects)

    def monitor_labels(self) -> dict[str, str] | None:
        """desired_children's argument: None without the CRD."""
        return self.labels if self() else None


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


def desired_children(
    spec: GrokDeploymentSpec, the_plan: Plan, monitor_labels: dict[str, str] | None
) -> list[dict[str, Any]]:
    """`monitor_labels`: None where the ServiceMonitor CRD is missing (the pods get scrape annotations
    instead), else the extra labels the ServiceMonitor needs for Prometheus to select it."""
    workload = manifests.leader_worker_set if the_plan.multi_node else manifests.deployment
    children = [
        workload(spec, the_plan, scrape_annotations=monitor_labels is None),
        manifests.service(spec),
        manifests.servers_service(spec),
        manifests.pod_disruption_budget(spec),
        *manifests.router_children(spec),
    ]
    if monitor_labels is not None:
        children.append(manifests.service_monitor(spec, monitor_labels))
    return children


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
        http_endpoint=(f"http://{spec.name}.{spec.namespace}.svc:{spec.router.http_port}/v1"
                       if spec.router_enabled else ""),
        selector=spec.selector,
    )


def ensure_shared(kube: Kube, manifest: dict[str, Any], manager: str) -> dict[str, Any]:
    """The model cache claim and the fetch Job: made by the first GrokDeployment of the model, then joined
    as one more owner. Never applied again: a Job's template and most of a claim's spec cannot change, so
    applying an edited spec (a new server image, secretRef or cache size) fails with 422 and would stop the
    rollout."""
    meta = manifest["metadata"]
    live = kube.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    if live is None:
        return kube.apply(manifest, manager)
    (mine,) = meta["ownerReferences"]
    if any(o.get("uid") == mine["uid"] for o in live["metadata"].get("ownerReferences") or []):
        return live
    return kube.add_owner(live, mine)


LWS_MISSING = (
    "the plan needs {nodes} nodes per replica, run as LeaderWorkerSet groups, but the LeaderWorkerSet API "
    "(leaderworkerset.x-k8s.io/v1) is not installed: install it (kubectl apply --server-side -f "
    "https://github.com/kubernetes-sigs/lws/releases/download/v0.9.0/manifests.yaml), or plan for one node "
    "(quantization fp8_per_tensor, or GPUs with more memory)"
)


def reconcile(kube: Kube, body: dict[str, Any], service_monitors: ServiceMonitorProbe,
              leader_worker_sets: CrdProbe) -> ReconcileResult:
    """Brings the children in line with the spec; the caller writes the status from the result."""
    spec = read_spec(body)
    the_plan, plan_error = planned(spec)
    if the_plan is None or isinstance(spec, ValueError):
        # Leave running children alone: a bad edit must not take down what serves now.
        return ReconcileResult(None, None, plan_error)

    manager = field_manager(spec)
    applied: list[str] = []
    model = ("Ready", f"mounted read-only from PersistentVolumeClaim {spec.model.location}")
    if (
        spec.model.scheme == "pvc"
        and kube.get("v1", "PersistentVolumeClaim", spec.namespace, spec.model.location) is None
    ):
        model = (
            "ClaimNotFound",
            f"PersistentVolumeClaim {spec.model.location!r} not found in namespace "
            f"{spec.namespace}: create it with the weights, or use an hf:// or s3:// uri",
        )
    elif spec.model.needs_fetch:
        ensure_shared(kube, manifests.model_cache_claim(spec), manager)
        job = ensure_shared(kube, manifests.fetch_job(spec), manager)
        applied += ["PersistentVolumeClaim", "Job"]
        # Only a failed Job's pods are read (why it failed is in their termination message).
        selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
        pods = kube.list("v1", "Pod", spec.namespace, selector) if fetch_job_failed(job) else []
        model = model_state(job, pods)

    deployment = None
    if the_plan.multi_node and not leader_worker_sets():
        # Nothing half-made: without the LeaderWorkerSet API no group can exist, so no Service either.
        return ReconcileResult(spec, the_plan, None, model, None, applied, blocked=(
            "LeaderWorkerSetMissing", LWS_MISSING.format(nodes=the_plan.nodes_per_replica)))
    if model[0] == "Ready":
        for child in desired_children(spec, the_plan, service_monitors.monitor_labels()):
            live = kube.apply(child, manager)
            applied.append(child["kind"])
            if child["kind"] in ("Deployment", "LeaderWorkerSet"):
                deployment = live
    return ReconcileResult(spec, the_plan, None, model, deployment, applied)
