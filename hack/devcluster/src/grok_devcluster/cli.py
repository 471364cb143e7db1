"""grok-devcluster: `up`, `down`, `kubeconfig`, `list`, `build-tools`."""

from __future__ import annotations

import argparse
import sys
import time

from grok_devcluster.cluster import ClusterError, DevCluster, NodePool, state_root
from grok_devcluster.tools import ToolsMissing, tools_dir
from grok_operator.api.gpus import GPU_PRODUCTS

DEFAULT_NAME = "grok"
NODE_COLUMNS = (
    "custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
    "GPUS:.status.allocatable.nvidia\\.com/gpu,PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product,"
    "INSTANCE-TYPE:.metadata.labels.node\\.kubernetes\\.io/instance-type"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grok-devcluster",
        description="A local Kubernetes control plane with simulated GPU nodes (real API server, scheduler "
        "and controller-manager; KWOK plays the kubelets, and a pod runner runs the pods of grok-serve's "
        "server image as local processes).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a cluster and register its nodes")
    up.add_argument("--name", default=DEFAULT_NAME)
    up.add_argument("--nodes", type=int, default=4, help="GPU nodes (default 4)")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument(
        "--gpu-product",
        default="NVIDIA-H100-80GB-HBM3",
        choices=sorted(GPU_PRODUCTS),
        metavar="PRODUCT",
        help="node label nvidia.com/gpu.product; one of: " + ", ".join(sorted(GPU_PRODUCTS)),
    )
    up.add_argument(
        "--cpu-nodes", type=int, default=1, help="nodes without GPUs, for system pods (default 1)"
    )
    up.add_argument("--timeout", type=float, default=180)
    up.add_argument(
        "--no-run-pods",
        dest="run_pods",
        action="store_false",
        help="no pod runner: every pod is simulated by KWOK (Running and Ready, nothing runs)",
    )
    up.add_argument(
        "--no-lws",
        dest="lws",
        action="store_false",
        help="no LeaderWorkerSet manager (nor its CRDs and webhooks)",
    )

    for name, text in (
        ("down", "stop a cluster and remove its state"),
        ("kubeconfig", "print a cluster's kubeconfig path"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--name", default=DEFAULT_NAME)
        if name == "down":
            p.add_argument("--all", action="store_true", help="every cluster of this user")

    sub.add_parser("list", help="list running clusters")
    sub.add_parser("build-tools", help="build (once) the control-plane binaries and print their folder")
    return parser


def _existing(name: str) -> DevCluster:
    cluster = DevCluster(name)
    if not cluster.exists():
        raise ClusterError(
            f"no cluster named {name!r} is up (start one with `grok-devcluster up --name {name}`)"
        )
    return cluster


def _running() -> list[str]:
    root = state_root()
    return sorted(p.name for p in root.iterdir() if DevCluster(p.name).exists()) if root.exists() else []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            if args.nodes < 0 or args.gpus_per_node < 1 or args.cpu_nodes < 0:
                raise ClusterError("--nodes and --cpu-nodes must be ≥ 0 and --gpus-per-node ≥ 1")
            start = time.monotonic()
            cluster = DevCluster(args.name, run_pods=args.run_pods, lws=args.lws)
            cluster.up(
                [NodePool(args.nodes, args.gpus_per_node, args.gpu_product)],
                cpu_nodes=args.cpu_nodes,
                timeout=args.timeout,
            )
            print(f"cluster {cluster.name!r} up in {time.monotonic() - start:.1f}s")
            print(cluster.kubectl("get", "nodes", "-o", NODE_COLUMNS).stdout, end="")
            print(f"\nexport KUBECONFIG={cluster.kubeconfig}\nexport PATH={cluster.bin_dir}:$PATH")
            if cluster.lws:
                print(f"LeaderWorkerSet controller: log in {cluster.lws_dir / 'manager.log'}")
            print(f"stop it with: grok-devcluster down --name {cluster.name}")
        elif args.command == "down":
            names = _running() if args.all else [_existing(args.name).name]
            for name in names:
                DevCluster(name).down()
                print(f"cluster {name!r} stopped")
        elif args.command == "kubeconfig":
            print(_existing(args.name).kubeconfig)
        elif args.command == "list":
            for name in _running():
                print(name)
        elif args.command == "build-tools":
            print(tools_dir())
    except (ClusterError, ToolsMissing, ValueError) as err:
        print(f"grok-devcluster: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("grok-devcluster: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
