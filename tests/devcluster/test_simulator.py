"""The simulated GPU cluster behaves like a real one where the operator will rely on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grok_devcluster import DevCluster
from grok_devcluster.local import wait

pytestmark = pytest.mark.cluster


def gpu_deployment(name: str, gpus: int, product: str = "NVIDIA-H100-80GB-HBM3") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": product},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "server",
                            # Status only: KWOK simulates it (the pod runner runs the project's serving
                            # images only); these tests are about scheduling GPUs, not about processes.
                            "image": "sim.local/gpu-workload:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def apply(cluster: DevCluster, namespace: str, manifest: dict) -> subprocess.CompletedProcess[str]:
    return cluster.apply([manifest], namespace=namespace, check=False)


def pods(cluster: DevCluster, namespace: str, app: str) -> list[dict]:
    return cluster.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]


def test_gpu_deployment_lands_on_a_gpu_node_and_becomes_ready(devcluster, k8s_namespace):
    assert apply(devcluster, k8s_namespace, gpu_deployment("eight", 8)).returncode == 0
    devcluster.kubectl("rollout", "status", "deployment/eight", "-n", k8s_namespace, "--timeout=60s")
    (pod,) = pods(devcluster, k8s_namespace, "eight")
    node = devcluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"


def test_gpus_are_accounted_per_node(devcluster, k8s_namespace):
    """Two 8-GPU pods on H200 nodes take both H200 nodes; a third has nowhere to go."""
    manifest = gpu_deployment("h200", 8, "NVIDIA-H200")
    manifest["spec"]["replicas"] = 3
    apply(devcluster, k8s_namespace, manifest)

    def placed() -> list[str] | None:
        nodes = [p["spec"].get("nodeName") for p in pods(devcluster, k8s_namespace, "h200")]
        return nodes if len(nodes) == 3 and sum(1 for n in nodes if n) == 2 else None

    nodes = wait(placed, 60, "three pods, two of them placed", interval=0.5)
    assert sorted(n for n in nodes if n) == ["h200-0", "h200-1"]


def test_more_gpus_than_any_node_has_stays_pending_unschedulable(devcluster, k8s_namespace):
    apply(devcluster, k8s_namespace, gpu_deployment("sixteen", 16))

    def scheduled() -> dict | None:
        return next((c for pod in pods(devcluster, k8s_namespace, "sixteen")
                     for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), None)

    condition = wait(scheduled, 60, "the scheduler to look at the pod", interval=0.5)
    assert condition["status"] == "False"
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    (pod,) = pods(devcluster, k8s_namespace, "sixteen")
    assert pod["status"]["phase"] == "Pending"


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.grok.dev"},
    "spec": {
        "group": "test.grok.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 8}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_custom_resource_round_trip_and_schema_validation(devcluster, k8s_namespace):
    devcluster.apply([WIDGET_CRD])
    devcluster.wait_crd_established("widgets.test.grok.dev")

    good = {
        "apiVersion": "test.grok.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 4},
    }
    assert apply(devcluster, k8s_namespace, good).returncode == 0
    read_back = devcluster.get_json("widget", "w", "-n", k8s_namespace)
    assert read_back["spec"] == {"size": 4}

    bad = {**good, "metadata": {"name": "too-big"}, "spec": {"size": 80}}
    result = apply(devcluster, k8s_namespace, bad)
    assert result.returncode != 0
    assert (
        "spec.size: Invalid value: 80: spec.size in body should be less than or equal to 8" in result.stderr
    )


def test_service_account_tokens_work_and_rbac_denies_what_is_not_granted(devcluster, k8s_namespace):
    ns = k8s_namespace
    devcluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    token = devcluster.kubectl("create", "token", "reader", "-n", ns).stdout.strip()

    def as_reader(*args: str) -> subprocess.CompletedProcess[str]:
        # A kubeconfig-free call with the token alone: authentication by the API server's own SA keys.
        server = devcluster.kubectl(
            "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
        ).stdout
        return devcluster.kubectl(
            "--kubeconfig=/dev/null",
            f"--server={server}",
            "--insecure-skip-tls-verify",
            f"--token={token}",
            *args,
            "-n",
            ns,
            check=False,
        )

    denied = as_reader("get", "pods")
    assert denied.returncode != 0
    assert f'User "system:serviceaccount:{ns}:reader" cannot list resource "pods"' in denied.stderr

    devcluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", ns)
    devcluster.kubectl(
        "create", "rolebinding", "reader", "--role=pod-reader", f"--serviceaccount={ns}:reader", "-n", ns
    )
    # RBAC caches take a moment to see the binding.
    wait(lambda: as_reader("get", "pods").returncode == 0, 10, "the binding to allow getting pods")
    write = as_reader("create", "configmap", "not-granted")
    assert write.returncode != 0
    assert 'cannot create resource "configmaps"' in write.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(cmdline)
    return found


def test_cli_up_kubeconfig_down_leaves_no_processes(devcluster, tmp_path):
    """A second cluster beside the session's one, driven through the CLI as a user would."""
    name = f"cli-{tmp_path.name[-6:]}".lower().replace("_", "-")
    env = {**os.environ, "GROK_DEVCLUSTER_BIN": str(devcluster.bin_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "grok_devcluster.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    up = run("up", "--name", name, "--nodes", "2", "--gpus-per-node", "4", "--gpu-product", "NVIDIA-L40S")
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = run("kubeconfig", "--name", name).stdout.strip()
        assert Path(kubeconfig).exists()
        nodes = json.loads(
            subprocess.run(
                [
                    str(devcluster.bin_dir / "kubectl"),
                    "--kubeconfig",
                    kubeconfig,
                    "get",
                    "nodes",
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["items"]
        gpus = {n["metadata"]["name"]: n["status"]["allocatable"].get("nvidia.com/gpu") for n in nodes}
        assert gpus == {"gpu-0": "4", "gpu-1": "4", "cpu-0": None}
        assert _processes_mentioning(f"/{name}/"), "the cluster's processes should be running"
    finally:
        down = run("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _processes_mentioning(f"/{name}/") == []
    again = run("down", "--name", name)
    assert again.returncode == 1 and f"no cluster named {name!r} is up" in again.stderr


def test_applied_strings_stay_strings_whatever_they_look_like(devcluster, k8s_namespace):
    """PyYAML writes '1e5' and '0o17' bare (YAML 1.1 reads them as strings) where kubectl's YAML reader takes
    them for numbers: a random label value once failed a test that way. What DevCluster applies is JSON."""
    looks_numeric = {"exponent": "1e5", "random-hex": "1e234567", "octal": "0o17", "plain": "8"}
    devcluster.apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strings"},
                       "data": looks_numeric}], namespace=k8s_namespace)
    assert devcluster.get_json("configmap", "strings", "-n", k8s_namespace)["data"] == looks_numeric
