"""GrokDeployment handlers: reconcile a generation not yet handled by this process (new, edited, scaled, or
first seen after a restart), refresh its status from its children, and, as a safety net for a reconcile that
failed for good, try again every two minutes (the one timer; without any API call once handled)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from grok_operator.api.resource import GROUP, PLURAL, VERSION, GrokDeploymentSpec
from grok_operator.control import metrics
from grok_operator.control.reconcile import reconcile
from grok_operator.control.state import State, Views, kube, plain
from grok_operator.control.status_writer import api_message, report_refused, with_retries, write_status
from grok_operator.manifests.node_cache import node_label
from grok_operator.observe.children import observe
from grok_operator.observe.pods import ready_since
from grok_operator.observe.startup import (
    cache_unavailable,
    holds_node_copy,
    newest_ready_server,
    node_copy_unavailable,
    ready_servers,
)
from grok_operator.observe.status import status_patch
from grok_operator.plan.admission import admit

log = logging.getLogger("grok_operator")
FRONT_DOOR_OPEN = ("the router takes calls without credentials, and the servers take calls from any pod: set "
                   "spec.router.auth to a Secret of API keys to admit only the tenants it names (and to let "
                   "only the router reach the servers)")


def reconcile_and_report(body: dict[str, Any], views: Views, trigger: str) -> bool:
    """Returns whether the spec was handled (False after a permanent error, which is reported as an Event)."""
    started = time.monotonic()
    probe, groups = State.service_monitors, State.leader_worker_sets
    assert probe is not None and groups is not None
    try:
        result = with_retries(lambda: reconcile(kube(), body, probe, groups, State.metrics_from))
    except ApiException as err:
        if err.status == 403 and "being terminated" in (err.body or ""):
            return True  # the namespace is going away, and everything in it with it
        metrics.RECONCILE_ERRORS.labels(trigger).inc()
        log.exception("reconciling %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
        message = f"{err.status} {err.reason}: {api_message(err)}"
        kopf.event(body, type="Warning", reason="ReconcileFailed", message=message)
        report_refused(body, message)
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
    if trigger == "spec" and result.spec is not None and result.spec.router_enabled \
            and result.spec.router.auth is None:
        # Said once per generation: an open front door is a choice, not an accident.
        kopf.event(body, type="Normal", reason="FrontDoorOpen", message=FRONT_DOOR_OPEN)

    def make(old: dict[str, Any]) -> dict[str, Any]:
        return result.status(old, generation, views.pods(ns, name), views.deployment(ns, name))

    with_retries(lambda: write_status(body, make))
    return True


def refresh_status(owner: dict[str, Any], views: Views) -> None:
    """Status only (no writes to children): pods scheduled or pending, replicas becoming ready."""
    if State.refused.get(owner["metadata"]["uid"]) == int(owner["metadata"].get("generation", 1)):
        return  # the status says the edit was refused until a reconcile of it succeeds
    admission = admit(owner)
    spec, the_plan = admission.spec, admission.plan
    if spec is None or the_plan is None:
        return  # written when the spec was reconciled; children are left alone
    model = State.models.get(owner["metadata"]["uid"])
    if model is None:
        return  # not reconciled by this process yet: the GrokDeployment's own event comes first
    collect_startup(owner, views.pods(spec.namespace, spec.name), spec)

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

    with_retries(lambda: write_status(owner, make))


# Reports fetched per event, in parallel, newest pods first: an event never waits on a whole fleet (a restart
# of ours beside hundreds of replicas, or replicas whose metrics port does not answer: 3 s each); the next
# events fetch the rest.
FETCHES_PER_EVENT = 8


def collect_startup(owner: dict[str, Any], pods: list[dict[str, Any]], spec: GrokDeploymentSpec) -> None:
    """Fetches the start-up reports of the Ready server pods, once per pod (outside the status lock: a slow
    pod delays no status write for long, and fails nothing): replicas turning Ready together, or before a
    restart of ours, each have their node labelled when they loaded its copy of the model (the label
    replicas prefer: the servers themselves have no API access), and a fallback to the shared cache said.
    The pod that turned Ready last (status.lastStartup's) also says once when its compile cache volume could
    not be used."""
    newest = newest_ready_server(pods)
    reports = State.startup_reports
    due = sorted((p for p in ready_servers(pods) if reports.wanted(p)), key=lambda p: ready_since(p) or 0.0,
                 reverse=True)[:FETCHES_PER_EVENT]
    if not due:
        return
    with ThreadPoolExecutor(len(due)) as pool:
        fetched = list(pool.map(lambda p: reports.collect(p, spec.server.metrics_port), due))
    newest_report = None
    for pod, report in zip(due, fetched, strict=True):
        if report is None:
            continue  # no report yet: tried again at the pod's next event
        node_copy(owner, pod, report, spec)
        if pod is newest:
            newest_report = report
    reason = cache_unavailable(newest_report) if newest_report is not None else None
    reported = ((owner.get("status") or {}).get("lastStartup") or {}).get("pod")
    if newest is not None and reason and reported != newest["metadata"]["name"]:  # (said before our restart)
        log.warning("%s/%s: pod %s runs without its compile cache: %s", owner["metadata"]["namespace"],
                    owner["metadata"]["name"], newest["metadata"]["name"], reason)
        kopf.event(owner, type="Warning", reason="CompileCacheUnavailable",
                   message=f"pod {newest['metadata']['name']}: {reason}")


def node_copy(owner: dict[str, Any], pod: dict[str, Any], report: dict[str, Any],
              spec: GrokDeploymentSpec) -> None:
    name, node = pod["metadata"]["name"], (pod.get("spec") or {}).get("nodeName")
    if (reason := node_copy_unavailable(report)) is not None:
        log.warning("%s/%s: pod %s loads the model from the shared cache: %s", spec.namespace, spec.name,
                    name, reason)
        kopf.event(owner, type="Warning", reason="NodeCopyUnavailable",
                   message=f"pod {name} on node {node} loads the model from the shared cache: {reason}")
    elif holds_node_copy(report) and node:
        try:
            kube().label_node(node, {node_label(spec): "true"})
        except ApiException as err:  # a hint for scheduling only: nothing fails without it
            log.warning("could not label node %s as holding %s: %s %s", node, spec.model.uri, err.status,
                        err.reason)


@kopf.on.event(GROUP, VERSION, PLURAL)
def grokdeployment_event(
    event: dict[str, Any],
    body: kopf.Body,
    uid: str,
    **_: Any,
) -> None:
    if event.get("type") == "DELETED":
        State.forget(uid)
        metrics.GROKDEPLOYMENTS.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    generation = int(body["metadata"].get("generation", 1))
    if State.handled.get(uid) == generation:
        return  # our own status writes, or a generation already handled
    views = Views.of(_)
    if reconcile_and_report(plain(body), views, trigger="spec"):
        State.handled[uid] = generation


@kopf.timer(GROUP, VERSION, PLURAL, interval=120, initial_delay=120)
def retry_unhandled(
    body: kopf.Body, uid: str, **_: Any
) -> None:
    """A safety net for a reconcile that failed for good (the API server down for longer than the
    retries): tries again every two minutes; without any API call once the generation is handled."""
    generation = int(body["metadata"].get("generation", 1))
    if State.handled.get(uid) != generation and reconcile_and_report(
        plain(body), Views.of(_), trigger="retry"
    ):
        State.handled[uid] = generation


