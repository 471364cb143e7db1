"""Manifests of simulated nodes (pure functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grok_operator.api.gpus import GPUProduct

# KWOK manages the nodes that carry this annotation (kwokctl's default selector).
KWOK_NODE_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}


def _node(name: str, labels: dict[str, str], capacity: dict[str, str], taints: list[dict[str, str]]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(KWOK_NODE_ANNOTATION),
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }


def gpu_node(
    name: str, product: GPUProduct, gpus: int, cpu: int = 192, memory_gib: int = 2048
) -> dict[str, Any]:
    """A GPU node as GPU feature discovery and the device plugin would label and size it."""
    prefix = product.label_prefix
    instance_type = product.instance_type if gpus == 8 and product.instance_type else f"sim-{gpus}x-gpu"
    return _node(
        name,
        labels={
            f"{prefix}/gpu.product": product.product,
            f"{prefix}/gpu.memory": str(product.memory_mib),
            f"{prefix}/gpu.count": str(gpus),
            f"{prefix}/gpu.present": "true",
            "node.kubernetes.io/instance-type": instance_type,
        },
        capacity={
            "cpu": str(cpu),
            "memory": f"{memory_gib}Gi",
            "pods": "110",
            "ephemeral-storage": "8Ti",
            product.resource: str(gpus),
        },
        # As GPU node pools are tainted in managed clusters: only pods that tolerate it land there.
        taints=[{"key": product.resource, "value": "present", "effect": "NoSchedule"}],
    )


def cpu_node(name: str, cpu: int = 16, memory_gib: int = 64) -> dict[str, Any]:
    """A node without GPUs, for the operator, download Jobs and other system pods."""
    return _node(
        name,
        labels={"node.kubernetes.io/instance-type": f"sim-{cpu}cpu"},
        capacity={"cpu": str(cpu), "memory": f"{memory_gib}Gi", "pods": "110", "ephemeral-storage": "1Ti"},
        taints=[],
    )


def static_volume(name: str, root: Path, size_gib: int = 2048) -> dict[str, Any]:
    """A pre-provisioned volume: the simulated cluster has no storage driver, so claims (the model cache,
    pvc:// weights) bind to these, as they would to a real cluster's volumes. Its hostPath is a real folder
    under `root`: what the pod runner mounts for the pods that use it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"grok-devcluster/volume": "static"}},
        "spec": {
            "capacity": {"storage": f"{size_gib}Gi"},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(root / name)},
        },
    }
