"""The watch indexes: in-memory views of GrokDeployments and their children that the watch streams keep
current (kopf passes each to every handler by its function's name)."""

from __future__ import annotations

from typing import Any

import kopf

from grok_operator.api.resource import GROUP, INSTANCE_LABEL, PLURAL, VERSION
from grok_operator.control.state import MANAGED, SERVER_PODS, plain


@kopf.index(GROUP, VERSION, PLURAL)
def grokds(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): plain(body)}


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
    # name label, podIP and metrics port: to fetch a server's start-up report once; the node: to label it as
    # holding the model when the report says the server loaded the node's copy).
    return {
        (namespace, labels.get(INSTANCE_LABEL)): {
            "metadata": {"name": meta.name, "uid": uid,
                         "labels": {"app.kubernetes.io/name": labels.get("app.kubernetes.io/name", "")}},
            "status": plain(status),
            "created": meta.creation_timestamp,
            "metricsPort": _metrics_port(spec),
            "spec": {"nodeName": (spec or {}).get("nodeName")},
        }
    }


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): plain(body)}


# Multi-node replicas' workload (kopf starts watching it once the LeaderWorkerSet CRD exists).
@kopf.index("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED)
def groups(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    # Keyed by its GrokDeployment (it is named <name>-group: see manifests.group.leader_worker_set_name).
    return {(namespace, labels.get(INSTANCE_LABEL)): {**plain(body), "kind": "LeaderWorkerSet"}}


