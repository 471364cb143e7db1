"""Reconciliation of one GrokDeployment: plan, apply children, report status. Idempotent.

Every child has a deterministic name and is written with server-side apply, so running this twice (an
operator restarted mid-way, two events at once) converges on the same objects and never duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grok_operator.api.resource import MANAGED_BY, GrokDeploymentSpec
from grok_operator.control.kube import Kube
from grok_operator.manifests.children import desired_children
from grok_operator.manifests.front_door import (
    front_door_closed,
    upstream_token_secret,
)
from grok_operator.manifests.model_cache import fetch_job, model_cache_claim
from grok_operator.observe.children import fetch_job_failed, model_state, newest, observe
from grok_operator.observe.status import Observed, status_patch
from grok_operator.plan.admission import admit
from grok_operator.plan.planner import Plan

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
              leader_worker_sets: CrdProbe, metrics_from: Sequence[dict[str, Any]] = ()) -> ReconcileResult:
    """Brings the children in line with the spec; the caller writes the status from the result.
    `metrics_from`: who may scrape servers behind a closed front door (NetworkPolicy peers)."""
    admission = admit(body)
    spec, the_plan = admission.spec, admission.plan
    if spec is None or the_plan is None:
        # Leave running children alone: a bad edit must not take down what serves now.
        return ReconcileResult(None, None, admission.refusal)

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
        ensure_shared(kube, model_cache_claim(spec), manager)
        job = ensure_shared(kube, fetch_job(spec), manager)
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
    if model[0] == "Ready" and front_door_closed(spec):
        ensure_upstream_token(kube, spec)
    if model[0] == "Ready":
        for child in desired_children(spec, the_plan, service_monitors.monitor_labels(), metrics_from):
            live = kube.apply(child, manager)
            applied.append(child["kind"])
            if child["kind"] in ("Deployment", "LeaderWorkerSet"):
                deployment = live
    return ReconcileResult(spec, the_plan, None, model, deployment, applied)


def ensure_upstream_token(kube: Kube, spec: GrokDeploymentSpec) -> None:
    """The router's credential for the servers: made once, with a fresh random token, never replaced. Created
    blind (409: it exists): the operator may create Secrets but never read one."""
    kube.create(upstream_token_secret(spec, secrets.token_urlsafe(32)))
