"""How clients and Prometheus reach the servers: the Services, the PodDisruptionBudget, the ServiceMonitor.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

from typing import Any

from grok_operator.api.resource import INSTANCE_LABEL, GrokDeploymentSpec
from grok_operator.manifests.meta import metadata


def grpc_service_port(port: int) -> dict[str, Any]:
    return {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c"}


def service(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """The GrokDeployment's address (status.endpoint): its router, or its servers when the router is off."""
    if not spec.router_enabled:
        return server_service(spec, spec.name, headless=False)
    http_port = spec.router.http_port
    grpc_port = grpc_service_port(spec.server.grpc_port)
    http_protocol = "http"
    if spec.router.tls is not None:
        # Both ports serve TLS (spec.router.tls): a gateway or mesh that reads appProtocol must not send them
        # cleartext (h2c, http).
        grpc_port["appProtocol"] = http_protocol = "https"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, spec.name, "router"),
        "spec": {
            "selector": spec.router_selector_labels,
            "ports": [
                grpc_port,
                {"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP",
                 "appProtocol": http_protocol},
            ],
        },
    }


def servers_service_name(spec: GrokDeploymentSpec) -> str:
    return f"{spec.name}-servers"


def servers_service(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """Headless: DNS answers with every Ready server pod, for clients that balance calls themselves
    (`dns:///<name>-servers.<namespace>.svc:50051` with round_robin) and bypass the router."""
    return server_service(spec, servers_service_name(spec), headless=True)


def server_service(spec: GrokDeploymentSpec, name: str, headless: bool) -> dict[str, Any]:
    s = spec.server
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, name),
        "spec": {
            "selector": spec.selector_labels,
            "ports": [
                grpc_service_port(s.grpc_port),
                {
                    "name": "metrics",
                    "port": s.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }
    if headless:
        body["spec"]["clusterIP"] = "None"
    return body


def pod_disruption_budget(spec: GrokDeploymentSpec) -> dict[str, Any]:
    # Voluntary disruptions (node drains) take at most one replica at a time.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": spec.selector_labels},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def service_monitor(spec: GrokDeploymentSpec, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = metadata(spec, spec.name)
    meta["labels"] = {**(extra_labels or {}), **meta["labels"]}  # ours win: selectors depend on them
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {INSTANCE_LABEL: spec.name}},
            # Series carry serving_grok_dev_deployment: the autoscaler's queries select on it.
            "podTargetLabels": [INSTANCE_LABEL],
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }
