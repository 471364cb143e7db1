"""`make demo`: the main job, end to end, on an embedded default (a simulated GPU cluster).

Brings up a local control plane with simulated H100 nodes, places a tensor-parallel-8 serving workload
on them the way the operator will, shows where it landed, and tears everything down (or keeps it with
--keep and prints how to connect).
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from grok_devcluster import DevCluster, NodePool

CLUSTER_NAME = "grok-demo"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()

    started = time.monotonic()
    cluster = DevCluster(CLUSTER_NAME)
    if cluster.exists():
        step(f"removing the previous demo cluster {CLUSTER_NAME!r}")
        cluster.down()
    step("starting the simulated GPU cluster (etcd, kube-apiserver, controller-manager, scheduler, KWOK)")
    cluster.up([NodePool(4, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1)
    try:
        print(
            cluster.kubectl(
                "get", "nodes", "-L", "nvidia.com/gpu.product,node.kubernetes.io/instance-type"
            ).stdout
        )

        step("placing a tensor-parallel-8 workload (8 GPUs per pod, 2 replicas) on the H100 nodes")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_tp8_workload()))
        cluster.kubectl("rollout", "status", "deployment/grok-demo", "--timeout=60s")
        print(cluster.kubectl("get", "pods", "-o", "wide").stdout)
        print(
            cluster.kubectl("describe", "nodes", "h100-0")
            .stdout.split("Allocated resources:")[1]
            .split("Events:")[0]
        )

        step(f"done in {time.monotonic() - started:.1f}s")
        if args.keep:
            print(
                f"the cluster keeps running:\n  export KUBECONFIG={cluster.kubeconfig}\n"
                f"  export PATH={cluster.bin_dir}:$PATH\n  kubectl get nodes\n"
                f"stop it with: .venv/bin/grok-devcluster down --name {CLUSTER_NAME}"
            )
    finally:
        if not args.keep:
            step("tearing the cluster down")
            cluster.down()
    return 0


def _tp8_workload() -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "grok-demo", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "grok-demo"}},
            "template": {
                "metadata": {"labels": {"app": "grok-demo"}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "server",
                            "image": "grok-serve/server:dev",
                            "args": ["--tensor-parallel-size", "8"],
                            "resources": {"limits": {"nvidia.com/gpu": "8"}},
                        }
                    ],
                },
            },
        },
    }


if __name__ == "__main__":
    sys.exit(main())
