"""The router in front of the replicas: its Deployment, the ServiceAccount and Role it watches pods with.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.manifests.front_door import (
    router_auth_args,
    router_auth_volumes,
    router_tls_args,
    router_tls_volumes,
)
from grok_operator.manifests.meta import POD_SECURITY, labels, metadata


def router_name(spec: GrokDeploymentSpec) -> str:
    return f"{spec.name}-router"


def router_service_account(spec: GrokDeploymentSpec) -> dict[str, Any]:
    meta = metadata(spec, router_name(spec), "router")
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def router_role(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """The router watches its servers' pods (Ready, deleted) in its namespace: read-only, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(spec, router_name(spec), "router"),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def router_role_binding(spec: GrokDeploymentSpec) -> dict[str, Any]:
    name = router_name(spec)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(spec, name, "router"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}],
    }


def router_args(spec: GrokDeploymentSpec) -> list[str]:
    r = spec.router
    return [
        "--host", "$(POD_IP)",
        "--port", str(spec.server.grpc_port),
        "--http-port", str(r.http_port),
        "--model-name", spec.name,  # the servers' --served-model-name
        "--namespace", spec.namespace,
        "--selector", spec.selector,
        "--prefix-blocks", str(r.prefix_blocks),
        "--balance", str(r.balance),
        "--max-attempts", str(r.max_attempts),
        "--hold-timeout-seconds", str(r.hold_timeout_seconds),
        "--max-held", str(r.max_held_requests),
        # Calls in flight through a router that stops go on for as long as the servers would let them.
        "--drain-grace-seconds", str(spec.server.drain_seconds),
        *router_auth_args(spec),
        *router_tls_args(spec),
    ]


def router_deployment(spec: GrokDeploymentSpec) -> dict[str, Any]:
    r = spec.router
    grpc_port, http_port = spec.server.grpc_port, r.http_port
    name = router_name(spec)
    pod_labels = {**labels(spec, "router"), **spec.router_selector_labels}
    drain = spec.server.drain_seconds
    scheme = "HTTPS" if r.tls is not None else "HTTP"  # the kubelet's probes skip certificate checks
    probe = {"httpGet": {"path": "/readyz", "port": "http", "scheme": scheme}, "periodSeconds": 5,
             "failureThreshold": 2, "timeoutSeconds": 5}
    auth_volumes, auth_mounts = router_auth_volumes(spec)
    tls_volumes, tls_mounts = router_tls_volumes(spec)
    volumes, mounts = auth_volumes + tls_volumes, auth_mounts + tls_mounts
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "terminationGracePeriodSeconds": drain + 15,
        "containers": [{
            "name": "router",
            "image": r.image,
            "imagePullPolicy": r.image_pull_policy,
            "args": router_args(spec),
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [
                {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
                {"name": "http", "containerPort": http_port, "protocol": "TCP"},
            ],
            "resources": r.resources or {"requests": {"cpu": "500m", "memory": "256Mi"},
                                                "limits": {"memory": "1Gi"}},
            "readinessProbe": probe,
            "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http", "scheme": scheme},
                              "periodSeconds": 10, "failureThreshold": 6},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
            **({"volumeMounts": mounts} if mounts else {}),
        }],
        **({"volumes": volumes} if volumes else {}),
        "securityContext": dict(POD_SECURITY),
        # Router replicas on different nodes: losing a node must not take the front door with it.
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": spec.router_selector_labels},
        }],
    }
    for key, value in (("nodeSelector", r.node_selector), ("tolerations", r.tolerations)):
        if value:
            pod_spec[key] = value
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, name, "router"),
        "spec": {
            "replicas": r.replicas,
            "selector": {"matchLabels": spec.router_selector_labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(http_port),
                    "prometheus.io/path": "/metrics", "prometheus.io/scheme": scheme.lower()}},
                "spec": pod_spec,
            },
        },
    }


def router_children(spec: GrokDeploymentSpec) -> list[dict[str, Any]]:
    if not spec.router_enabled:
        return []
    return [router_service_account(spec), router_role(spec), router_role_binding(spec),
            router_deployment(spec)]
