"""The operator's process-wide state: API clients, the watch indexes as views, and what this process did.

Why not kopf's `memo`: it is per object and reachable only from that object's own handlers, while these
tables are read by the children's handlers too (a pod event refreshes its owner's status). So they are keyed
by the owner's uid here, and dropped together when it is deleted (`State.forget`).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import kopf

from grok_operator.api.resource import MANAGED_BY
from grok_operator.control.kube import Kube, load_config
from grok_operator.control.reconcile import CrdProbe, ServiceMonitorProbe
from grok_operator.manifests.group import LWS_CRD
from grok_operator.observe.startup_reports import StartupReports
from grok_operator.scale.prometheus import DEFAULT_DEPLOYMENT_LABEL

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
SERVER_PODS = {**MANAGED, "app.kubernetes.io/component": "server"}


class State:
    """Process-wide clients and bookkeeping (one operator per process)."""

    kube: Kube | None = None
    service_monitors: ServiceMonitorProbe | None = None
    leader_worker_sets: CrdProbe | None = None
    prometheus_url: str = ""
    monitor_labels: dict[str, str] = {}  # extra labels on the server ServiceMonitors
    metrics_from: list[dict[str, Any]] = []  # NetworkPolicy peers that may scrape servers behind auth
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

    @classmethod
    def forget(cls, uid: str) -> None:
        """A GrokDeployment was deleted (its children go with it: they carry owner references)."""
        tables = (cls.handled, cls.refused, cls.written, cls.status_locks, cls.models, cls.last_decisions)
        for table in tables:
            table.pop(uid, None)


def kube() -> Kube:
    if State.kube is None:
        State.kube = Kube(load_config())
        State.service_monitors = ServiceMonitorProbe(State.kube, labels=State.monitor_labels)
        State.leader_worker_sets = CrdProbe(State.kube, LWS_CRD)
    return State.kube



def plain(body: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(body)))



def one(index: kopf.Index, key: Any) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store else None


class Views:
    """The indexes a handler was given, read at the moment a status is computed."""

    def __init__(self, grokds: kopf.Index, server_pods: kopf.Index, deployments: kopf.Index,
                 groups: kopf.Index | None = None) -> None:
        self.grokds, self.server_pods, self.deployments = grokds, server_pods, deployments
        self.groups = groups

    @classmethod
    def of(cls, indexes: dict[str, Any]) -> Views:
        """From a handler's keyword arguments, where kopf passes every index by its name (`groups` only once
        the LeaderWorkerSet API exists)."""
        return cls(indexes["grokds"], indexes["server_pods"], indexes["deployments"], indexes.get("groups"))

    def owner(self, namespace: str, name: str | None) -> dict[str, Any] | None:
        body = one(self.grokds, (namespace, name)) if name else None
        return None if body is None or body["metadata"].get("deletionTimestamp") else body

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.server_pods.get((namespace, name), []))

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The replicas' workload: the Deployment, or the LeaderWorkerSet of a multi-node plan."""
        found = one(self.deployments, (namespace, name))
        if found is None and self.groups is not None:
            found = one(self.groups, (namespace, name))
        return found


