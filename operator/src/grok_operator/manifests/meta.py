"""What every child carries: labels, the owner reference, metadata, the pods' security context.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

from typing import Any

from grok_operator.api.resource import (
    API_VERSION,
    INSTANCE_LABEL,
    KIND,
    MANAGED_BY,
    MODEL_LABEL,
    GrokDeploymentSpec,
)

# The images run as this non-root user; fsGroup lets it write the model cache volume.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def labels(spec: GrokDeploymentSpec, component: str = "server") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "grok-server" if component == "server" else f"grok-{component}",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "grok-serve",
        INSTANCE_LABEL: spec.name,
    }


def owner_reference(spec: GrokDeploymentSpec, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def metadata(spec: GrokDeploymentSpec, name: str, component: str = "server") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels(spec, component),
        "ownerReferences": [owner_reference(spec)],
    }


def shared_metadata(spec: GrokDeploymentSpec, name: str, component: str) -> dict[str, Any]:
    """Cache and fetch Job are shared by every GrokDeployment of the same model in the namespace: each
    adds itself as a (non-controller) owner, so they are collected when the last one goes."""
    meta = metadata(spec, name, component)
    meta["labels"] = {
        k: v for k, v in meta["labels"].items() if k not in (INSTANCE_LABEL, "app.kubernetes.io/instance")
    }
    meta["labels"][MODEL_LABEL] = spec.model.cache_key
    meta["ownerReferences"] = [owner_reference(spec, controller=False)]
    return meta
