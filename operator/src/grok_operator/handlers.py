"""kopf handlers: watch GrokDeployments and their children; reconcile on change, never on a timer.

- A GrokDeployment event reconciles it when its generation was not yet handled by this process
  (new, edited, scaled, or first seen after a restart).
- A child event (Deployment, Service, PDB, Job, Pod, the weights' claim) refreshes the owner's status;
  a child deleted or edited away from its desired state is re-applied (drift repair).

Status is always computed inside a per-object lock from the watch indexes as they are at that moment:
handlers run in parallel threads, and a status computed from what one of them saw earlier must never
overwrite what another saw later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from grok_operator import metrics
from grok_operator.autoscaler import (
    DEFAULT_DEPLOYMENT_LABEL,
    MetricsUnavailable,
    Prometheus,
    metric_query,
    replica_startup,
    router_queries,
)
from grok_operator.kube import Kube, load_config
from grok_operator.manifests import LWS_CRD
from grok_operator.reconcile import (
    CrdProbe,
    ServiceMonitorProbe,
    desired_children,
    is_subset,
    observe,
    planned,
    read_spec,
    reconcile,
)
from grok_operator.resource import GROUP, INSTANCE_LABEL, MANAGED_BY, MODEL_LABEL, PLURAL, VERSION
from grok_operator.scaling import History, Observation, Policy, decide
from grok_operator.startup import cache_unavailable, newest_ready_server
from grok_operator.startup_reports import StartupReports
from grok_operator.status import condition, merge_conditions, now, status_patch

log = logging.getLogger("grok_operator")
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
SERVER_PODS = {**MANAGED, "app.kubernetes.io/component": "server"}
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
    leader_worker_sets: CrdProbe | None = None
    prometheus_url: str = ""
    monitor_labels: dict[str, str] = {}  # extra labels on the server ServiceMonitors
    deployment_label: str = DEFAULT_DEPLOYMENT_LABEL
    autoscale_interval: float = 15.0
    last_decisions: dict[str, tuple[str, int, int]] = {}
    metrics_stale_after: float = 60.0
    handled: dict[str, int] = {}  # uid -> generation this process reconciled
    refused: dict[str, int] = {}  # uid -> generation whose children the API server refused
    written: dict[str, dict[str, Any]] = {}  # uid -> the status this process last wrote
    models: dict[str, tuple[str, str]] = {}  # uid -> model state (Ready, Fetching, ...) at the last reconcile
    status_locks: dict[str, threading.Lock] = {}
    startup_reports = StartupReports()  # the servers' /startup reports by pod uid (status.lastStartup)
    lock = threading.Lock()


def _kube() -> Kube:
    if State.kube is None:
        State.kube = Kube(load_config())
        State.service_monitors = ServiceMonitorProbe(State.kube, labels=State.monitor_labels)
        State.leader_worker_sets = CrdProbe(State.kube, LWS_CRD)
    return State.kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf's own chatter stays out of the resources' Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    # Leader election is ours (a Lease, see leader.py); kopf's peering would freeze equal-priority replicas.
    settings.peering.standalone = True
    _kube()


def _plain(body: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(body)))


# -- indexes: in-memory views the watch streams keep current ----------------------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
def grokds(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _plain(body)}


def _metrics_port(spec: Any) -> int | None:
    for container in (spec or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return int(port["containerPort"])
    return None


@kopf.index("", "v1", "pods", labels=SERVER_PODS)
def server_pods(
    namespace: str, labels: dict[str, str], meta: kopf.Meta, status: kopf.Status, uid: str = "",
    spec: kopf.Spec | None = None, **_: Any
) -> dict[Any, Any]:
    # The parts of a pod that statuses and the autoscaler read (the name: to say which pod fails; the uid,
    # name label, podIP and metrics port: to fetch a server's start-up report once).
    return {
        (namespace, labels.get(INSTANCE_LABEL)): {
            "metadata": {"name": meta.name, "uid": uid,
                         "labels": {"app.kubernetes.io/name": labels.get("app.kubernetes.io/name", "")}},
            "status": _plain(status),
            "created": meta.creation_timestamp,
            "metricsPort": _metrics_port(spec),
        }
    }


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _plain(body)}


# Multi-node replicas' workload (kopf starts watching it once the LeaderWorkerSet CRD exists).
@kopf.index("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED)
def groups(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    # Keyed by its GrokDeployment (it is named <name>-group: see manifests.leader_worker_set_name).
    return {(namespace, labels.get(INSTANCE_LABEL)): {**_plain(body), "kind": "LeaderWorkerSet"}}


def _one(index: kopf.Index, key: Any) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store else None


class Views:
    """The indexes a handler was given, read at the moment a status is computed."""

    def __init__(self, grokds: kopf.Index, server_pods: kopf.Index, deployments: kopf.Index,
                 groups: kopf.Index | None = None) -> None:
        self.grokds, self.server_pods, self.deployments = grokds, server_pods, deployments
        self.groups = groups

    def owner(self, namespace: str, name: str | None) -> dict[str, Any] | None:
        body = _one(self.grokds, (namespace, name)) if name else None
        return None if body is None or body["metadata"].get("deletionTimestamp") else body

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.server_pods.get((namespace, name), []))

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The replicas' workload: the Deployment, or the LeaderWorkerSet of a multi-node plan."""
        found = _one(self.deployments, (namespace, name))
        if found is None and self.groups is not None:
            found = _one(self.groups, (namespace, name))
        return found


# -- status and events ------------------------------------------------------------------------------------


def _write_status(body: dict[str, Any], make_status: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    meta = body["metadata"]
    with State.lock:
        lock = State.status_locks.setdefault(meta["uid"], threading.Lock())
    with lock:
        old = State.written.get(meta["uid"]) or body.get("status") or {}
        status = make_status(old)
        metrics.GROKDEPLOYMENTS.record(
            meta["namespace"], meta["name"], int(body["spec"].get("replicas", 1)), {**old, **status})
        if all(old.get(k) == v for k, v in status.items()):
            return
        _kube().patch_status(meta["namespace"], meta["name"], status)
        State.written[meta["uid"]] = {**old, **status}
        _announce_transitions(body, old.get("conditions") or [], status["conditions"])


def _announce_transitions(body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """An Event for every condition that changed status."""
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


RETRY_DELAYS = (0.5, 1, 2, 4, 8, 16)


def _transient(err: Exception) -> bool:
    if isinstance(err, ApiException):
        return err.status in (409, 429) or (err.status or 0) >= 500
    return isinstance(err, OSError | urllib3.exceptions.HTTPError)


def _with_retries(call: Callable[[], Any]) -> Any:
    """Event handlers are not retried by kopf: ride out API-server hiccups (etcd timeouts, conflicts)."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except Exception as err:
            if delay is None or not _transient(err):
                raise
            log.info("transient API error (%s), retrying in %ss", err, delay)
            time.sleep(delay)
    return None


def _reconcile_and_report(body: dict[str, Any], views: Views, trigger: str) -> bool:
    """Returns whether the spec was handled (False after a permanent error, which is reported as an Event)."""
    started = time.monotonic()
    probe, groups = State.service_monitors, State.leader_worker_sets
    assert probe is not None and groups is not None
    try:
        result = _with_retries(lambda: reconcile(_kube(), body, probe, groups))
    except ApiException as err:
        if err.status == 403 and "being terminated" in (err.body or ""):
            return True  # the namespace is going away, and everything in it with it
        metrics.RECONCILE_ERRORS.labels(trigger).inc()
        log.exception("reconciling %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
        message = f"{err.status} {err.reason}: {_api_message(err)}"
        kopf.event(body, type="Warning", reason="ReconcileFailed", message=message)
        _report_refused(body, message)
        return False
    except Exception:
        metrics.RECONCILE_ERRORS.labels(trigger).inc()
        raise
    finally:
        metrics.RECONCILE_DURATION.labels(trigger).observe(time.monotonic() - started)
    metrics.RECONCILES.labels(trigger).inc()
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], int(meta.get("generation", 1))
    State.refused.pop(meta["uid"], None)
    if result.plan_error:
        log.warning("%s/%s: %s", ns, name, result.plan_error[1])
    State.models[meta["uid"]] = result.model

    def make(old: dict[str, Any]) -> dict[str, Any]:
        return result.status(old, generation, views.pods(ns, name), views.deployment(ns, name))

    _with_retries(lambda: _write_status(body, make))
    return True


def _api_message(err: ApiException) -> str:
    """The API server's own message from a Status body (the body itself when it is not one)."""
    try:
        return str(json.loads(err.body or "")["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return (err.body or "")[:500]


def _report_refused(body: dict[str, Any], message: str) -> None:
    """The spec's generation could not be applied: say so, and keep observedGeneration at the last one that
    was, so that nothing waiting on observedGeneration == generation takes the edit as rolled out."""
    meta = body["metadata"]
    generation = int(meta.get("generation", 1))
    State.refused[meta["uid"]] = generation
    refused = condition(
        "Progressing", False, "ReconcileFailed",
        f"generation {generation} was not applied (the running replicas are unchanged): {message}",
    )

    def make(old: dict[str, Any]) -> dict[str, Any]:
        return {"conditions": merge_conditions(old.get("conditions") or [], [refused], generation)}

    try:
        _with_retries(lambda: _write_status(body, make))
    except Exception:
        log.exception("could not write the status of %s/%s", meta["namespace"], meta["name"])


def _refresh_status(owner: dict[str, Any], views: Views) -> None:
    """Status only (no writes to children): pods scheduled or pending, replicas becoming ready."""
    if State.refused.get(owner["metadata"]["uid"]) == int(owner["metadata"].get("generation", 1)):
        return  # the status says the edit was refused until a reconcile of it succeeds
    spec = read_spec(owner)
    the_plan, error = planned(spec)
    if error or the_plan is None or isinstance(spec, ValueError):
        return  # written when the spec was reconciled; children are left alone
    model = State.models.get(owner["metadata"]["uid"])
    if model is None:
        return  # not reconciled by this process yet: the GrokDeployment's own event comes first
    _collect_startup(owner, views.pods(spec.namespace, spec.name), int(spec.server.get("metricsPort", 9090)))

    def make(old: dict[str, Any]) -> dict[str, Any]:
        observed = observe(
            spec,
            the_plan,
            views.deployment(spec.namespace, spec.name),
            views.pods(spec.namespace, spec.name),
            model,
            State.startup_reports.snapshot(),
        )
        return status_patch(observed, old, spec.generation)

    _with_retries(lambda: _write_status(owner, make))


def _collect_startup(owner: dict[str, Any], pods: list[dict[str, Any]], metrics_port: int) -> None:
    """Fetches the start-up report of the server pod that turned Ready last, once per pod (outside the
    status lock: a slow pod delays no status write for long, and fails nothing); says once per pod when the
    compile cache volume could not be used."""
    pod = newest_ready_server(pods)
    report = State.startup_reports.collect(pod, metrics_port) if pod is not None else None
    reason = cache_unavailable(report) if report is not None else None
    reported = ((owner.get("status") or {}).get("lastStartup") or {}).get("pod")
    if pod is not None and reason and reported != pod["metadata"]["name"]:  # (said before a restart of ours)
        log.warning("%s/%s: pod %s runs without its compile cache: %s", owner["metadata"]["namespace"],
                    owner["metadata"]["name"], pod["metadata"]["name"], reason)
        kopf.event(owner, type="Warning", reason="CompileCacheUnavailable",
                   message=f"pod {pod['metadata']['name']}: {reason}")


# -- GrokDeployment ---------------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
def grokdeployment_event(
    event: dict[str, Any],
    body: kopf.Body,
    uid: str,
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    if event.get("type") == "DELETED":
        for table in (State.handled, State.refused, State.written, State.status_locks, State.models):
            table.pop(uid, None)  # children go with it: they carry owner references
        metrics.GROKDEPLOYMENTS.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    generation = int(body["metadata"].get("generation", 1))
    if State.handled.get(uid) == generation:
        return  # our own status writes, or a generation already handled
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    if _reconcile_and_report(_plain(body), views, trigger="spec"):
        State.handled[uid] = generation


@kopf.timer(GROUP, VERSION, PLURAL, interval=120, initial_delay=120)
def retry_unhandled(
    body: kopf.Body, uid: str, grokds: kopf.Index, server_pods: kopf.Index, deployments: kopf.Index, **_: Any
) -> None:
    """A safety net for a reconcile that failed for good (the API server down for longer than the
    retries): tries again every two minutes; without any API call once the generation is handled."""
    generation = int(body["metadata"].get("generation", 1))
    if State.handled.get(uid) != generation and _reconcile_and_report(
        _plain(body), Views(grokds, server_pods, deployments, _.get("groups")), trigger="retry"
    ):
        State.handled[uid] = generation


# -- children ---------------------------------------------------------------------------------------------


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
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    owner = views.owner(namespace, labels.get(INSTANCE_LABEL))
    if owner is None:
        return
    spec = read_spec(owner)
    the_plan, error = planned(spec)
    if error or the_plan is None or isinstance(spec, ValueError):
        return
    child = {**_plain(body), "kind": resource.kind}
    deleted = event.get("type") == "DELETED"
    meta = owner["metadata"]
    if State.handled.get(meta["uid"]) != int(meta.get("generation", 1)):
        # A spec change being applied right now: a difference is not drift, but the status must still
        # follow what the child reports (the reconcile's own status write may already be behind it).
        _refresh_status(owner, views)
        return
    assert State.service_monitors is not None
    wanted = {
        (c["kind"], c["metadata"]["name"]): c
        for c in desired_children(spec, the_plan, State.service_monitors.monitor_labels())
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
        _reconcile_and_report(owner, views, trigger="drift")
    elif child["kind"] in ("Deployment", "LeaderWorkerSet"):
        _refresh_status(owner, views)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def fetch_job_event(
    body: kopf.Body,
    namespace: str,
    labels: dict[str, str],
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    """The model is fetched (or failed): start or report on every GrokDeployment that waits for it."""
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    for ref in body["metadata"].get("ownerReferences") or []:
        owner = views.owner(namespace, ref.get("name"))
        spec = read_spec(owner) if owner else None
        if (
            owner is not None
            and spec is not None
            and not isinstance(spec, ValueError)
            and spec.model.cache_key == labels.get(MODEL_LABEL)
        ):
            _reconcile_and_report(owner, views, trigger="model")


@kopf.on.event("", "v1", "persistentvolumeclaims")
def claim_event(
    event: dict[str, Any],
    namespace: str,
    name: str,
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    """A claim named by a pvc:// model appeared or went: reconcile the deployments that use it."""
    if event.get("type") not in ("ADDED", "DELETED"):
        return
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    for (ns, gd_name), _store in list(grokds.items()):
        owner = views.owner(ns, gd_name) if ns == namespace else None
        spec = read_spec(owner) if owner else None
        if (
            owner is not None
            and spec is not None
            and not isinstance(spec, ValueError)
            and spec.model.scheme == "pvc"
            and spec.model.location == name
        ):
            _reconcile_and_report(owner, views, trigger="model")


@kopf.on.event("", "v1", "pods", labels=SERVER_PODS)
def server_pod_event(
    namespace: str,
    labels: dict[str, str],
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    owner = views.owner(namespace, labels.get(INSTANCE_LABEL))
    if owner is not None:
        _refresh_status(owner, views)


# -- autoscaling ------------------------------------------------------------------------------------------


def _autoscaled(spec: dict[str, Any], **_: Any) -> bool:
    return bool(spec.get("autoscaling"))


@kopf.daemon(GROUP, VERSION, PLURAL, when=_autoscaled, cancellation_timeout=5)
def autoscaler(
    stopped: kopf.DaemonStopped,
    namespace: str,
    name: str,
    grokds: kopf.Index,
    server_pods: kopf.Index,
    deployments: kopf.Index,
    **_: Any,
) -> None:
    """One loop per autoscaled GrokDeployment (kopf stops it when spec.autoscaling goes away, and the
    built-in autoscaler stands aside: HPA or KEDA can then drive the scale subresource)."""
    views = Views(grokds, server_pods, deployments, _.get("groups"))
    history = History()  # in memory: after a restart, a full window passes before any change
    while not stopped:
        owner = views.owner(namespace, name)
        if owner is not None and owner["spec"].get("autoscaling"):
            try:
                _autoscale_once(owner, views, history)
            except Exception:
                log.exception("autoscaling %s/%s failed; trying again next period", namespace, name)
        stopped.wait(State.autoscale_interval)


def _router_activity(prometheus: Prometheus, ns: str, name: str, window: float) -> tuple[float | None,
                                                                                     float | None]:
    """The router's held calls now, and its calls over the window; None for what has no series (no router
    scraped: never scale to zero on that)."""
    held_query, recent_query = router_queries(ns, name, window, State.deployment_label)
    held = prometheus.instant(held_query)
    recent = prometheus.instant(recent_query)
    return (held[0] if held else None), (recent[0] if recent else None)


def _autoscale_once(owner: dict[str, Any], views: Views, history: History) -> None:
    meta, spec = owner["metadata"], owner["spec"]
    ns, name = meta["namespace"], meta["name"]
    policy = Policy.from_spec(spec["autoscaling"])
    replicas = int(spec.get("replicas", 1))
    deployment = views.deployment(ns, name) or {}
    ready = int((deployment.get("status") or {}).get("readyReplicas", 0))
    moment = time.time()
    starting, startup = replica_startup(views.pods(ns, name), moment)
    held = recent = None
    try:
        if not State.prometheus_url:
            raise MetricsUnavailable(
                "PrometheusNotConfigured", "the operator has no --prometheus-url (chart value prometheusURL)"
            )
        prometheus = Prometheus(State.prometheus_url)
        if policy.min_replicas == 0:
            held, recent = _router_activity(prometheus, ns, name, policy.scale_to_zero_after)
        value: float | None = None
        problem = None
        if replicas > 0:  # at zero there is no server to measure: the router's held calls decide
            query = metric_query(policy.metric, ns, name, State.deployment_label)
            value = prometheus.metric(query, State.metrics_stale_after)
    except MetricsUnavailable as err:
        value, problem = None, err
    observation = Observation(moment, replicas, ready, value, starting, startup, held, recent)
    decision = decide(policy, observation, history)
    summary = (problem.reason if problem else decision.reason.split(":")[-1].strip(), ready, len(starting))
    if State.last_decisions.get(meta["uid"]) != summary:  # log when what the autoscaler thinks changes
        State.last_decisions[meta["uid"]] = summary
        log.info(
            "%s/%s autoscaler: %s (replicas %d, ready %d, starting %d)",
            ns,
            name,
            problem or decision.reason,
            replicas,
            ready,
            len(starting),
        )

    if replicas == 0 and policy.min_replicas > 0:
        active = condition("AutoscalingActive", False, "ScalingDisabled", decision.reason)
    elif replicas == 0 and problem is None:
        active = condition("AutoscalingActive", True, "ScaledToZero", decision.reason)
    elif problem is not None:
        what = decision.reason if decision.changes(replicas) else (
            f"holding {replicas} replicas (never scaling on missing data)")
        active = condition("AutoscalingActive", False, problem.reason, f"{problem}; {what}")
    else:
        active = condition("AutoscalingActive", True, "Evaluating", decision.reason)
    last_scale = None
    if decision.changes(replicas):
        _kube().patch_scale(ns, name, decision.replicas)
        direction = "up" if decision.replicas > replicas else "down"
        metrics.SCALING_DECISIONS.labels(direction).inc()
        last_scale = {
            "time": now(),
            "from": replicas,
            "to": decision.replicas,
            "metric": policy.metric,
            "value": round(decision.per_replica or 0.0, 4),
            "reason": decision.reason,
        }
        kopf.event(
            owner,
            type="Normal",
            reason=f"Scaled{direction.capitalize()}",
            message=f"{replicas} -> {decision.replicas}: {decision.reason}",
        )
        log.info("%s/%s scaled %s -> %s: %s", ns, name, replicas, decision.replicas, decision.reason)

    def make(old: dict[str, Any]) -> dict[str, Any]:
        conditions = merge_conditions(old.get("conditions") or [], [active], int(meta.get("generation", 1)))
        # Only the condition's status is news; its message (the live metric value) changes every period.
        previous = next((c for c in old.get("conditions") or [] if c["type"] == "AutoscalingActive"), None)
        if (
            previous
            and previous["status"] == active["status"]
            and previous["reason"] == active["reason"]
            and last_scale is None
        ):
            conditions = old.get("conditions") or []
        status: dict[str, Any] = {"conditions": conditions}
        if last_scale is not None:
            status["lastScale"] = last_scale
        return status

    _with_retries(lambda: _write_status(owner, make))
