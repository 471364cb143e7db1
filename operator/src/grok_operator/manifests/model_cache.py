"""The model's cache volume and the Job that fetches the weights into it (shared by the GrokDeployments
of one model in a namespace), and where servers find the model.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

import math
from typing import Any

from grok_operator.api.resource import MANAGED_BY, GrokDeploymentSpec
from grok_operator.manifests.meta import POD_SECURITY, shared_metadata
from grok_operator.plan.planner import weight_bytes

MODEL_MOUNT = "/models"


def cache_claim_name(spec: GrokDeploymentSpec) -> str:
    return f"grok-model-{spec.model.cache_key}"


def fetch_job_name(spec: GrokDeploymentSpec) -> str:
    return f"grok-fetch-{spec.model.cache_key}"


def model_path(spec: GrokDeploymentSpec) -> str:
    if spec.model.scheme == "pvc":
        return f"{MODEL_MOUNT}/{spec.model.path}".rstrip("/")
    return f"{MODEL_MOUNT}/model"  # where grok-fetch leaves a loadable checkpoint in the cache volume


def model_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
    claim = spec.model.location if spec.model.scheme == "pvc" else cache_claim_name(spec)
    return {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def cache_size_gib(spec: GrokDeploymentSpec) -> int:
    # Published checkpoints are bf16 (vLLM quantizes to fp8 while loading); xAI's original is int8 shards,
    # converted to bf16 beside them.
    stored = weight_bytes(spec.shape, "none", "auto") / 1024**3
    if spec.model.format == "xai":
        stored += weight_bytes(spec.shape, "int8", "auto") / 1024**3
    return max(1, math.ceil(stored * 1.2))


def model_cache_claim(spec: GrokDeploymentSpec) -> dict[str, Any]:
    cache = spec.model_spec.cache
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": shared_metadata(spec, cache_claim_name(spec), "model-cache"),
        "spec": {
            # ReadWriteMany so replicas on every node mount the one copy (read-only).
            "accessModes": [cache.access_mode],
            "resources": {"requests": {"storage": cache.size or f"{cache_size_gib(spec)}Gi"}},
        },
    }
    if cache.storage_class_name:
        claim["spec"]["storageClassName"] = cache.storage_class_name
    return claim


def fetch_job(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """Downloads the weights once into the cache volume (and converts xAI's ckpt-0 when format is xai)."""
    secret = spec.model_spec.secret_ref.get("name")
    container: dict[str, Any] = {
        "name": "fetch",
        "image": spec.server.image,
        "imagePullPolicy": spec.server.image_pull_policy,
        "command": ["grok-fetch"],
        "args": [
            "--uri",
            spec.model.uri,
            "--revision",
            spec.model.revision,
            "--format",
            spec.model.format,
            "--out",
            MODEL_MOUNT,
        ],
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}],
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
        # grok-fetch's last line says why it failed: kept in the pod's status for the operator's condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": shared_metadata(spec, fetch_job_name(spec), "model-fetch"),
        "spec": {
            "backoffLimit": 4,  # retries resume: grok-fetch skips files already complete
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "grok-model-fetch",
                        "app.kubernetes.io/managed-by": MANAGED_BY,
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": dict(POD_SECURITY),
                    "containers": [container],
                    "volumes": [
                        {"name": "model", "persistentVolumeClaim": {"claimName": cache_claim_name(spec)}}
                    ],
                },
            },
        },
    }
