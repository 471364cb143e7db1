"""kopf handlers: watch GrokDeployments and their children; reconcile on change, never on a timer.

- A GrokDeployment event reconciles it when its generation was not yet handled by this process
  (new, edited, scaled, or first seen after a restart).
- A child event (Deployment, Service, PDB, Job, Pod) refreshes the owner's status; a child deleted or
  edited away from its desired state is re-applied (drift repair).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import kopf

from grok_operator import metrics
from grok_operator.kube import Kube, load_config
from grok_operator.reconcile import (
    ReconcileResult,
    ServiceMonitorProbe,
    desired_children,
    is_subset,
    observe,
    planned,
    read_spec,
    reconcile,
)
from grok_operator.resource import GROUP, INSTANCE_LABEL, MANAGED_BY, MODEL_LABEL, PLURAL, VERSION
from grok_operator.status import merge_conditions, status_patch

log = logging.getLogger("grok_operator")
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
BAD_WHEN = {
    "PlanValid": "False",
    "ModelReady": "False",
    "Unschedulable": "True",
    "Degraded": "True",
    "Ready": "False",
}


class State:
    """Process-wide clients and bookkeeping (one operator per process)."""

    kube: Kube | None = None
    service_monitors: ServiceMonitorProbe | None = None
    handled: dict[str, int] = {}  # uid -> generation this process reconciled
    written: dict[str, dict[str, Any]] = {}  # uid -> the status this process last wrote
    status_locks: dict[str, threading.Lock] = {}
    prometheus_url: str = ""
    lock = threading.Lock()


def _kube() -> Kube:
    if State.kube is None:
        State.kube = Kube(load_config())
        State.service_monitors = ServiceMonitorProbe(State.kube)
    return State.kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    # Leader election is ours (a Lease, see leader.py); kopf's peering would freeze equal-priority replicas.
    settings.peering.standalone = True
    _kube()


def _plain(body: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(body)))


# -- indexes: in-memory views the watch streams keep current, so status needs no extra API reads -----------


@kopf.index(GROUP, VERSION, PLURAL)
def grokds(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _plain(body)}


@kopf.index("", "v1", "pods", labels={**MANAGED, "app.kubernetes.io/component": "server"})
def server_pods(namespace: str, labels: dict[str, str], status: kopf.Status, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels.get(INSTANCE_LABEL)): {"status": _plain(status)}}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _plain(body)}


def _one(index: kopf.Index, key: Any) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store else None


# -- GrokDeployment ---------------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
def grokdeployment_event(
    event: dict[str, Any], body: kopf.Body, uid: str, server_pods: kopf.Index, **_: Any
) -> None:
    if event.get("type") == "DELETED":
        for table in (State.handled, State.written, State.status_locks):
            table.pop(uid, None)  # children go with it: they carry owner references
        return
    generation = int(body["metadata"].get("generation", 1))
    with State.lock:
        if State.handled.get(uid) == generation:
            return  # our own status writes, or a generation already handled
    plain = _plain(body)
    pods = list(server_pods.get((plain["metadata"]["namespace"], plain["metadata"]["name"]), []))
    _reconcile_and_report(plain, pods, reason="spec")
    with State.lock:
        State.handled[uid] = generation


def _reconcile_and_report(body: dict[str, Any], pods: list[dict[str, Any]] | None, reason: str) -> None:
    started = time.monotonic()
    kube = _kube()
    assert State.service_monitors is not None
    try:
        result = reconcile(kube, body, State.service_monitors, pods)
    except Exception:
        metrics.RECONCILE_ERRORS.labels(reason).inc()
        raise
    finally:
        metrics.RECONCILE_DURATION.labels(reason).observe(time.monotonic() - started)
    metrics.RECONCILES.labels(reason).inc()
    _write_status(body, result.status)
    _report(body, result)


def _write_status(body: dict[str, Any], status: dict[str, Any]) -> None:
    """Patches the status if it changed. Serialized per object, against the last status this process
    wrote: handlers run in parallel threads and the watch copies they read may lag our own writes."""
    meta = body["metadata"]
    with State.lock:
        lock = State.status_locks.setdefault(meta["uid"], threading.Lock())
    with lock:
        old = State.written.get(meta["uid"]) or body.get("status") or {}
        status = {
            **status,
            "conditions": merge_conditions(
                old.get("conditions") or [], status["conditions"], status["observedGeneration"]
            ),
        }
        if all(old.get(k) == v for k, v in status.items()):
            return
        _kube().patch_status(meta["namespace"], meta["name"], status)
        State.written[meta["uid"]] = {**old, **status}
        _announce_transitions(body, old.get("conditions") or [], status["conditions"])


def _announce_transitions(body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """An Event for every condition that changed status (and for a new plan)."""
    before = {c["type"]: c for c in old}
    for c in new:
        prior = before.get(c["type"])
        if prior is not None and prior["status"] == c["status"]:
            continue
        bad = BAD_WHEN.get(c["type"]) == c["status"]
        if prior is None and not bad and c["type"] not in ("PlanValid", "Ready"):
            continue  # the initial "all good" of minor conditions is noise
        if c["type"] == "Ready" and bad and (prior is None or prior["status"] != "True"):
            continue  # not ready yet is not news; losing readiness is
        kopf.event(
            body,
            type="Warning" if bad else "Normal",
            reason=c.get("reason", c["type"]),
            message=c.get("message", ""),
        )


def _report(body: dict[str, Any], result: ReconcileResult) -> None:
    meta = body["metadata"]
    if result.plan_error:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], result.plan_error[1])


# -- children ---------------------------------------------------------------------------------------------


def _owner_body(grokds: kopf.Index, namespace: str, name: str | None) -> dict[str, Any] | None:
    return _one(grokds, (namespace, name)) if name else None


def _refresh(
    owner: dict[str, Any], pods: list[dict[str, Any]], live_child: dict[str, Any] | None, deleted: bool
) -> None:
    """Status from what the watches show; a full reconcile if the child is gone or has drifted."""
    spec = read_spec(owner)
    the_plan, error = planned(spec)
    if error or the_plan is None or isinstance(spec, ValueError):
        return  # an invalid spec leaves children alone; its status was written when it was seen
    drifted = deleted
    if live_child is not None and not deleted:
        assert State.service_monitors is not None
        wanted = {
            (c["kind"], c["metadata"]["name"]): c
            for c in desired_children(spec, the_plan, State.service_monitors())
        }
        desired = wanted.get((live_child.get("kind"), live_child["metadata"]["name"]))
        drifted = desired is not None and not is_subset(desired, live_child)
    if drifted:
        kind = (live_child or {}).get("kind", "child")
        kopf.event(
            owner,
            type="Normal",
            reason="DriftRepaired",
            message=f"{kind} {(live_child or {}).get('metadata', {}).get('name', '')} "
            f"{'was deleted' if deleted else 'was changed'}: restored",
        )
        metrics.DRIFT_REPAIRS.labels(kind).inc()
    _reconcile_and_report(owner, pods, reason="drift" if drifted else "child")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
def child_event(
    event: dict[str, Any],
    body: kopf.Body,
    resource: kopf.Resource,
    namespace: str,
    labels: dict[str, str],
    grokds: kopf.Index,
    server_pods: kopf.Index,
    **_: Any,
) -> None:
    owner = _owner_body(grokds, namespace, labels.get(INSTANCE_LABEL))
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    pods = list(server_pods.get((namespace, owner["metadata"]["name"]), []))
    child = {**_plain(body), "kind": resource.kind}
    _refresh(owner, pods, child, deleted=event.get("type") == "DELETED")


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def fetch_job_event(
    event: dict[str, Any],
    body: kopf.Body,
    namespace: str,
    labels: dict[str, str],
    grokds: kopf.Index,
    server_pods: kopf.Index,
    **_: Any,
) -> None:
    """The model is fetched: start (or report on) every GrokDeployment that waits for it."""
    key = labels.get(MODEL_LABEL)
    for ref in body["metadata"].get("ownerReferences") or []:
        owner = _owner_body(grokds, namespace, ref.get("name"))
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            continue
        spec = read_spec(owner)
        if isinstance(spec, ValueError) or spec.model.cache_key != key:
            continue
        pods = list(server_pods.get((namespace, spec.name), []))
        _reconcile_and_report(owner, pods, reason="model")


@kopf.on.event("", "v1", "persistentvolumeclaims")
def claim_event(
    event: dict[str, Any], namespace: str, name: str, grokds: kopf.Index, server_pods: kopf.Index, **_: Any
) -> None:
    """A claim named by a pvc:// model appeared (or went): reconcile the deployments that wait for it."""
    if event.get("type") not in ("ADDED", "DELETED"):
        return
    for (ns, _name), store in list(grokds.items()):
        owner = next(iter(store), None)
        if ns != namespace or owner is None:
            continue
        spec = read_spec(owner)
        if not isinstance(spec, ValueError) and spec.model.scheme == "pvc" and spec.model.location == name:
            _reconcile_and_report(owner, list(server_pods.get((ns, spec.name), [])), reason="model")


@kopf.on.event("", "v1", "pods", labels={**MANAGED, "app.kubernetes.io/component": "server"})
def server_pod_event(
    namespace: str,
    labels: dict[str, str],
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    """Pods scheduled, unschedulable, ready: only the owner's status changes (no apply)."""
    owner = _owner_body(grokds, namespace, labels.get(INSTANCE_LABEL))
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    spec = read_spec(owner)
    the_plan, error = planned(spec)
    if error or the_plan is None or isinstance(spec, ValueError):
        return
    pods = list(server_pods.get((namespace, spec.name), []))
    deployment = _one(deployments, (namespace, spec.name))
    model_condition = next(
        (c for c in (owner.get("status") or {}).get("conditions") or [] if c["type"] == "ModelReady"), None
    )
    if model_condition is None:
        return  # not reconciled yet: the GrokDeployment's own event will write the status
    model = (
        "Ready" if model_condition["status"] == "True" else "Fetching",
        model_condition.get("message", ""),
    )
    observed = observe(spec, the_plan, deployment, pods, model)
    _write_status(owner, status_patch(observed, owner.get("status") or {}, spec.generation))
