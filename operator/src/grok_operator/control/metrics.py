"""The operator's own Prometheus metrics (served by `grok-operator --metrics-port`)."""

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("grok_operator_reconciles_total", "Reconciliations, by trigger", ["trigger"])
RECONCILE_ERRORS = Counter(
    "grok_operator_reconcile_errors_total", "Reconciliations that failed, by trigger", ["trigger"]
)
RECONCILE_DURATION = Histogram(
    "grok_operator_reconcile_duration_seconds",
    "Time to reconcile one GrokDeployment",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DRIFT_REPAIRS = Counter(
    "grok_operator_drift_repairs_total", "Children restored after deletion or edit", ["kind"]
)
# Per GrokDeployment, labelled as the status series below are (dashboards follow one GrokDeployment).
SCALING_DECISIONS = Counter(
    "grok_operator_scaling_decisions_total", "Autoscaler decisions that changed replicas",
    ["grokdeployment_namespace", "grokdeployment", "direction"],
)
DIRECTIONS = ("up", "down")


def scaled(namespace: str, name: str, direction: str) -> None:
    """Counts one of the autoscaler's decisions that changed a GrokDeployment's replicas ("up" or "down")."""
    SCALING_DECISIONS.labels(namespace, name, direction).inc()


LEADER = Gauge("grok_operator_leader", "1 while this replica holds the leader Lease and acts")


class GrokDeploymentStatus(Collector):
    """Each GrokDeployment's status as this operator last wrote it (the leader writes; a follower has none):
    desired, current and Ready replicas, its conditions (one series per condition, value 1, labelled with
    its status and reason, as kube-state-metrics does for pods) and its phase. Dashboards and alert rules
    read replicas, scale-to-zero, the autoscaler's reason and crash loops (Degraded, PodsFailing) from these.
    The labels are grokdeployment_namespace and grokdeployment, not namespace: a scrape of the operator's
    pod sets namespace to the operator's own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    def record(self, namespace: str, name: str, desired: int, status: dict[str, Any]) -> None:
        with self._lock:
            self._status[(namespace, name)] = (desired, status)

    def forget(self, namespace: str, name: str) -> None:
        """Drops every series of a deleted GrokDeployment: its status and its scaling decisions."""
        with self._lock:
            self._status.pop((namespace, name), None)
        for direction in DIRECTIONS:
            SCALING_DECISIONS.remove(namespace, name, direction)  # a no-op where it never scaled so

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["grokdeployment_namespace", "grokdeployment"]
        replicas = GaugeMetricFamily(
            "grok_operator_grokdeployment_replicas",
            "A GrokDeployment's replicas: desired (spec), current (pods made) and ready",
            labels=[*labels, "kind"])
        conditions = GaugeMetricFamily(
            "grok_operator_grokdeployment_condition",
            "A GrokDeployment's status conditions (1 per condition)",
            labels=[*labels, "type", "status", "reason"])
        phase = GaugeMetricFamily(
            "grok_operator_grokdeployment_phase", "A GrokDeployment's phase (1 for the current one)",
            labels=[*labels, "phase"])
        with self._lock:
            found = list(self._status.items())
        for (namespace, name), (desired, status) in found:
            replicas.add_metric([namespace, name, "desired"], desired)
            replicas.add_metric([namespace, name, "current"], int(status.get("replicas") or 0))
            replicas.add_metric([namespace, name, "ready"], int(status.get("readyReplicas") or 0))
            for c in status.get("conditions") or []:
                conditions.add_metric([namespace, name, c["type"], c["status"], c.get("reason", "")], 1)
            if status.get("phase"):
                phase.add_metric([namespace, name, status["phase"]], 1)
        yield replicas
        yield conditions
        yield phase


GROKDEPLOYMENTS = GrokDeploymentStatus()
REGISTRY.register(GROKDEPLOYMENTS)
