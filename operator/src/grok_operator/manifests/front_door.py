"""The front door's children (pure): with spec.router.auth, the API keys mounted into the router, a credential
only the router holds for the servers, and a NetworkPolicy that lets nothing else reach them.

Without auth nothing here is made: the router takes every call, and the servers every call that reaches
them (the operator says so once, in an Event).
"""

from __future__ import annotations

import json
from typing import Any

from grok_operator.api.resource import INSTANCE_LABEL, GrokDeploymentSpec
from grok_operator.api.spec import dump
from grok_operator.manifests.meta import metadata

API_KEYS_PATH = "/etc/grok-router/api-keys"
UPSTREAM_TOKEN_DIR = "/etc/grok-serve/upstream-token"
UPSTREAM_TOKEN_KEY = "token"
UPSTREAM_TOKEN_FILE = f"{UPSTREAM_TOKEN_DIR}/{UPSTREAM_TOKEN_KEY}"
TLS_DIR = "/etc/grok-router/tls"


def front_door_closed(spec: GrokDeploymentSpec) -> bool:
    return spec.router_enabled and spec.router.auth is not None


def upstream_token_secret_name(spec: GrokDeploymentSpec) -> str:
    return f"{spec.name}-upstream-token"


def upstream_token_secret(spec: GrokDeploymentSpec, token: str) -> dict[str, Any]:
    """The router's credential for the servers (made once by the operator, never re-applied: a new token
    would lock the running router out until its pods restart)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(spec, upstream_token_secret_name(spec), "router"),
        "type": "Opaque",
        "stringData": {UPSTREAM_TOKEN_KEY: token},
    }


def upstream_token_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
    return {"name": "upstream-token", "secret": {"secretName": upstream_token_secret_name(spec),
                                                 "defaultMode": 0o440}}


UPSTREAM_TOKEN_MOUNT = {"name": "upstream-token", "mountPath": UPSTREAM_TOKEN_DIR, "readOnly": True}


def router_auth_args(spec: GrokDeploymentSpec) -> list[str]:
    """grok-router's flags for the front door (none without auth)."""
    if not front_door_closed(spec):
        return []
    args = ["--api-keys-dir", API_KEYS_PATH, "--upstream-token-file", UPSTREAM_TOKEN_FILE]
    limits = spec.router.limits
    if limits is not None:
        table = {"default": dump(limits.default),
                 "tenants": {name: dump(t) for name, t in sorted(limits.tenants.items())}}
        args += ["--tenant-limits", json.dumps(table, separators=(",", ":"), sort_keys=True)]
        # Each router replica enforces its share of every limit (no shared store, no extra hop).
        args += ["--router-replicas", str(spec.router.replicas)]
    return args


def router_auth_volumes(spec: GrokDeploymentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the router pod's volumes, its container's mounts) for the keys and the upstream token."""
    if not front_door_closed(spec):
        return [], []
    assert spec.router.auth is not None
    volumes = [{"name": "api-keys", "secret": {"secretName": spec.router.auth.secret_name,
                                               "defaultMode": 0o440}},
               upstream_token_volume(spec)]
    mounts = [{"name": "api-keys", "mountPath": API_KEYS_PATH, "readOnly": True}, UPSTREAM_TOKEN_MOUNT]
    return volumes, mounts


def router_tls_args(spec: GrokDeploymentSpec) -> list[str]:
    """grok-router's flags for TLS on both ports (none without spec.router.tls)."""
    if spec.router.tls is None:
        return []
    return ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]


def router_tls_volumes(spec: GrokDeploymentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the router pod's volumes, its container's mounts) for spec.router.tls's Secret: a volume, not a
    subPath mount, so that the kubelet's renewal reaches the running router. Not optional, and its two keys
    named: a router pod waits for the Secret (the kubelet's FailedMount Event says which is missing) rather
    than serve plaintext or start without a certificate, as it waits for the API keys' Secret."""
    if spec.router.tls is None:
        return [], []
    items = [{"key": key, "path": key} for key in ("tls.crt", "tls.key")]
    volume = {"name": "tls", "secret": {"secretName": spec.router.tls.secret_name, "defaultMode": 0o440,
                                        "items": items}}
    return [volume], [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]


def network_policy(spec: GrokDeploymentSpec, metrics_from: list[dict[str, Any]]) -> dict[str, Any]:
    """Server pods take gRPC only from this GrokDeployment's router pods; anything from the other pods of
    their own replica (a LeaderWorkerSet group's rendezvous and collectives); the metrics port from
    `metrics_from` (Prometheus and the operator, as the chart's values select them; empty: from anywhere)."""
    # Leaders, single-node servers and a group's workers alike (the workers' name label differs).
    servers = {INSTANCE_LABEL: spec.name, "app.kubernetes.io/component": "server"}
    metrics_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": spec.server.metrics_port}]}
    if metrics_from:
        metrics_rule["from"] = metrics_from
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, f"{spec.name}-servers", "server"),
        "spec": {
            "podSelector": {"matchLabels": servers},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": spec.router_selector_labels}}],
                 "ports": [{"protocol": "TCP", "port": spec.server.grpc_port}]},
                {"from": [{"podSelector": {"matchLabels": servers}}]},
                metrics_rule,
            ],
        },
    }
