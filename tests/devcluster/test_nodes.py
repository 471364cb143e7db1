"""The simulated nodes' manifests carry what GPU feature discovery and the device plugin would."""

import pytest

from grok_devcluster.cluster import NodePool
from grok_devcluster.nodes import cpu_node, gpu_node
from grok_operator.api.gpus import GPU_PRODUCTS, gpu_product


def test_gpu_node_is_labelled_sized_and_tainted_like_a_real_one():
    node = gpu_node("gpu-0", gpu_product("NVIDIA-H100-80GB-HBM3"), gpus=8)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_amd_gpus_use_their_own_resource_and_labels():
    node = gpu_node("mi-0", gpu_product("AMD-Instinct-MI300X"), gpus=8)
    assert node["status"]["allocatable"]["amd.com/gpu"] == "8"
    assert node["metadata"]["labels"]["amd.com/gpu.product"] == "AMD-Instinct-MI300X"
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]


def test_odd_gpu_counts_get_a_synthetic_instance_type():
    node = gpu_node("gpu-0", gpu_product("NVIDIA-L40S"), gpus=4)
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "sim-4x-gpu"


def test_cpu_node_has_no_gpus_and_no_taint():
    node = cpu_node("cpu-0")
    assert not any("gpu" in key for key in node["status"]["allocatable"])
    assert "taints" not in node["spec"]


def test_node_pool_names_nodes_by_prefix_and_rejects_unknown_products():
    assert [n["metadata"]["name"] for n in NodePool(2, 8, "NVIDIA-H200", "h200").manifests()] == [
        "h200-0",
        "h200-1",
    ]
    with pytest.raises(ValueError, match=r"unknown GPU product 'H100'.*NVIDIA-H100-80GB-HBM3"):
        NodePool(1, 8, "H100").manifests()


def test_every_product_has_a_plausible_memory_size():
    for product in GPU_PRODUCTS.values():
        assert 32 <= product.memory_gib <= 256, product
