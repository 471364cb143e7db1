"""The few Kubernetes API calls the operator makes (server-side apply, status, events, reads)."""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from grok_operator.api.resource import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

# Why a hand-kept kind -> REST path table and ApiClient.param_serialize, not the kubernetes client's
# DynamicClient with server_side_apply: measured with bench/kube_client.py (fresh processes, empty /tmp as in
# a starting pod, simulated cluster with the GrokDeployment CRD and without the optional ServiceMonitor and
# LeaderWorkerSet CRDs, kubernetes==37.0.2; 2026-12-07, two runs each):
#   - memory: RSS after importing the operator and resolving its 12 kinds of then (before Secret and
#     NetworkPolicy): 63.4-63.6 MiB with this table,
#     63.7-63.8 MiB with DynamicClient. No reason either way.
#   - API round trips before the first apply: 0 here; 71 (25 distinct discovery paths) with DynamicClient,
#     0.09-0.19 s on a loopback API server (against 0.01-0.03 s). Resolving a core kind ("v1") reads every
#     group's discovery document (20 requests), and each kind whose CRD is absent (ServiceMonitor without the
#     Prometheus Operator, LeaderWorkerSet without LWS) throws the discovery cache away, so the next lookup
#     reads them all again (21 requests): the operator would have to cache "absent" itself, which crd_exists
#     already does, on one request.
#   - DynamicClient also writes its discovery cache as a file under TMPDIR.
# The 14 kinds and their paths are fixed by the manifests this operator builds; a kind missing here fails
# the first test that applies it (KeyError), so the table cannot drift silently.
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Job": "jobs",
    "Pod": "pods",
    "LeaderWorkerSet": "leaderworkersets",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Secret": "secrets",
    "NetworkPolicy": "networkpolicies",
    "GrokDeployment": PLURAL,
}


def _path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def load_config() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=payload, _request_timeout=30)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else {}

    def apply(self, manifest: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply: we own exactly the fields we state; `force` takes them back after drift."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", field_manager), ("force", "true")]
        return self._call(
            "PATCH", path, body=manifest, query=query, content_type="application/apply-patch+yaml"
        )

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Creates an object unless one of its name exists (None then: someone made it first)."""
        meta = manifest["metadata"]
        try:
            return self._call("POST", _path(manifest["apiVersion"], manifest["kind"], meta["namespace"]),
                              body=manifest)
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", _path(api_version, kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call("GET", _path(api_version, kind, namespace), query=[("labelSelector", selector)])
        return result.get("items", [])

    def add_owner(self, live: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
        """One more owner reference on an existing object, unless it changed since it was read (409)."""
        meta = live["metadata"]
        patch = {
            "metadata": {
                "ownerReferences": [*(meta.get("ownerReferences") or []), owner],
                "resourceVersion": meta["resourceVersion"],
            }
        }
        path = _path(live["apiVersion"], live["kind"], meta["namespace"], meta["name"])
        return self._call("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = _path(f"{GROUP}/{VERSION}", "GrokDeployment", namespace, name) + "/status"
        self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        """Through the scale subresource, as `kubectl scale`, HPA and KEDA do."""
        path = _path(f"{GROUP}/{VERSION}", "GrokDeployment", namespace, name) + "/scale"
        self._call(
            "PATCH", path, body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json"
        )

    def label_node(self, name: str, labels: dict[str, str]) -> None:
        """Merges labels into a Node's (cluster-scoped; the operator may get and patch nodes)."""
        self._call("PATCH", f"/api/v1/nodes/{name}", body={"metadata": {"labels": labels}},
                   content_type="application/merge-patch+json")

    def crd_exists(self, name: str) -> bool:
        try:
            self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except ApiException as err:
            if err.status in (403, 404):  # not installed, or we may not look: either way, don't use it
                return False
            raise
        return True
