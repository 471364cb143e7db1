"""Children's handlers: a child deleted or edited away from its desired state is re-applied (drift repair);
a workload or server pod that changes refreshes its owner's status; a fetched model or a pvc:// claim that
appears or goes reconciles the GrokDeployments that wait for it."""

from __future__ import annotations

from typing import Any

import kopf

from grok_operator.api.resource import INSTANCE_LABEL, MODEL_LABEL
from grok_operator.control import metrics
from grok_operator.control.grokdeployments import reconcile_and_report, refresh_status
from grok_operator.control.reconcile import is_subset
from grok_operator.control.state import MANAGED, SERVER_PODS, State, Views, plain
from grok_operator.manifests.children import desired_children
from grok_operator.plan.admission import admit


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
def child_event(
    event: dict[str, Any],
    body: kopf.Body,
    resource: kopf.Resource,
    namespace: str,
    labels: dict[str, str],
    **_: Any,
) -> None:
    views = Views.of(_)
    owner = views.owner(namespace, labels.get(INSTANCE_LABEL))
    if owner is None:
        return
    admission = admit(owner)
    spec, the_plan = admission.spec, admission.plan
    if spec is None or the_plan is None:
        return
    child = {**plain(body), "kind": resource.kind}
    deleted = event.get("type") == "DELETED"
    meta = owner["metadata"]
    if State.handled.get(meta["uid"]) != int(meta.get("generation", 1)):
        # A spec change being applied right now: a difference is not drift, but the status must still
        # follow what the child reports (the reconcile's own status write may already be behind it).
        refresh_status(owner, views)
        return
    assert State.service_monitors is not None
    wanted = {
        (c["kind"], c["metadata"]["name"]): c
        for c in desired_children(spec, the_plan, State.service_monitors.monitor_labels(),
                                   State.metrics_from)
    }
    desired = wanted.get((child["kind"], child["metadata"]["name"]))
    if desired is not None and (deleted or not is_subset(desired, child)):
        what = "was deleted" if deleted else "was changed"
        kopf.event(
            owner,
            type="Normal",
            reason="DriftRepaired",
            message=f"{child['kind']} {child['metadata']['name']} {what}: restored",
        )
        metrics.DRIFT_REPAIRS.labels(child["kind"]).inc()
        reconcile_and_report(owner, views, trigger="drift")
    elif child["kind"] in ("Deployment", "LeaderWorkerSet"):
        refresh_status(owner, views)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def fetch_job_event(
    body: kopf.Body,
    namespace: str,
    labels: dict[str, str],
    **_: Any,
) -> None:
    """The model is fetched (or failed): start or report on every GrokDeployment that waits for it."""
    views = Views.of(_)
    for ref in body["metadata"].get("ownerReferences") or []:
        owner = views.owner(namespace, ref.get("name"))
        spec = admit(owner).spec if owner else None
        if (
            owner is not None
            and spec is not None
            and spec.model.cache_key == labels.get(MODEL_LABEL)
        ):
            reconcile_and_report(owner, views, trigger="model")


@kopf.on.event("", "v1", "persistentvolumeclaims")
def claim_event(
    event: dict[str, Any],
    namespace: str,
    name: str,
    **_: Any,
) -> None:
    """A claim named by a pvc:// model appeared or went: reconcile the deployments that use it."""
    if event.get("type") not in ("ADDED", "DELETED"):
        return
    views = Views.of(_)
    for (ns, gd_name), _store in list(views.grokds.items()):
        owner = views.owner(ns, gd_name) if ns == namespace else None
        spec = admit(owner).spec if owner else None
        if (
            owner is not None
            and spec is not None
            and spec.model.scheme == "pvc"
            and spec.model.location == name
        ):
            reconcile_and_report(owner, views, trigger="model")


@kopf.on.event("", "v1", "pods", labels=SERVER_PODS)
def server_pod_event(
    namespace: str,
    labels: dict[str, str],
    **_: Any,
) -> None:
    views = Views.of(_)
    owner = views.owner(namespace, labels.get(INSTANCE_LABEL))
    if owner is not None:
        refresh_status(owner, views)


