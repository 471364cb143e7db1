"""The built-in autoscaler: one loop per GrokDeployment with spec.autoscaling, reading its servers' and
router's metrics from Prometheus, deciding with scaling.decide and writing the scale subresource."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from grok_operator.api.resource import GROUP, PLURAL, VERSION
from grok_operator.api.spec import DEFAULT_REPLICAS, AutoscalingSpec, parse
from grok_operator.control import metrics
from grok_operator.control.state import State, Views, kube
from grok_operator.control.status_writer import with_retries, write_status
from grok_operator.observe.status import condition, merge_conditions, now
from grok_operator.scale.decide import History, Observation, Policy, decide
from grok_operator.scale.prometheus import (
    MetricsUnavailable,
    Prometheus,
    metric_query,
    replica_startup,
    router_queries,
)

log = logging.getLogger("grok_operator")


def _autoscaled(spec: dict[str, Any], **_: Any) -> bool:
    return bool(spec.get("autoscaling"))


@kopf.daemon(GROUP, VERSION, PLURAL, when=_autoscaled, cancellation_timeout=5)
def autoscaler(
    stopped: kopf.DaemonStopped,
    namespace: str,
    name: str,
    **_: Any,
) -> None:
    """One loop per autoscaled GrokDeployment (kopf stops it when spec.autoscaling goes away, and the
    built-in autoscaler stands aside: HPA or KEDA can then drive the scale subresource)."""
    views = Views.of(_)
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
    policy = Policy.from_spec(parse(AutoscalingSpec, spec["autoscaling"], "spec.autoscaling"))
    replicas = int(spec.get("replicas", DEFAULT_REPLICAS))
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
        kube().patch_scale(ns, name, decision.replicas)
        direction = "up" if decision.replicas > replicas else "down"
        metrics.scaled(ns, name, direction)
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

    with_retries(lambda: write_status(owner, make))
