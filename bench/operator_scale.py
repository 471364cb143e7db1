"""Operator at scale: N GrokDeployments applied at once on the simulated GPU cluster.

Prints the time until all are Ready, p50/p99 from apply to children created, the operator's peak RSS,
and its CPU use while idle for a minute afterwards. Targets (500 deployments): all Ready <= 60 s,
RSS <= 250 MB, idle CPU ~ 0.

With --multinode, each is full-size Grok-1 in bf16 on H100s (tensor 8 x pipeline 2): a LeaderWorkerSet
group of two 8-GPU pods per replica, made by the real LWS controller.

    .venv/bin/python bench/operator_scale.py [--count 500] [--idle-seconds 60]
    .venv/bin/python bench/operator_scale.py --multinode --count 100
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml
from benchlib import percentile
from kubernetes import client, config

from grok_devcluster import DevCluster, NodePool
from grok_devcluster.local import free_port

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--multinode", action="store_true",
                        help="two-node replicas (bf16 Grok-1 on H100: LeaderWorkerSet groups)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # run the clean-up below when killed

    # A tiny replica takes 1 GPU; a two-node one, a node each for its two 8-GPU pods.
    nodes = 2 * args.count + 1 if args.multinode else math.ceil(args.count / 8) + 1
    model = ({"uri": "pvc://weights/grok-1"} if args.multinode else
             {"uri": "pvc://weights/tiny", "profile": "grok-1-tiny", "maxModelLen": 1024})
    # Status-only pods: the operator's cost at scale is measured, not hundreds of real servers.
    with DevCluster(f"bench-{os.getpid()}", run_pods=False, lws=args.multinode) as cluster:
        print(f"starting a simulated cluster with {nodes} 8-GPU nodes ...", flush=True)
        cluster.up([NodePool(nodes, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1, volumes=4)
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/grok-operator/crds"))
        cluster.wait_crd_established("grokdeployments.serving.grok.dev")
        cluster.kubectl("create", "namespace", "bench")
        cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", "bench", "--timeout=60s")
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "weights"},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        cluster.apply([{**claim, "metadata": {"name": "weights", "namespace": "bench"}}])

        api = config.new_client_from_config(str(cluster.kubeconfig))
        apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
        log = Path(tempfile.mkdtemp()) / "operator.log"
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grok_operator.main",
                "--metrics-port",
                str(free_port()),
                "--health-port",
                str(free_port()),
                "--log-level",
                "WARNING",
                "--no-leader-election",
            ],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(5)
        try:
            manifests = [
                {
                    "apiVersion": "serving.grok.dev/v1alpha1",
                    "kind": "GrokDeployment",
                    "metadata": {"name": f"g{i:04d}", "namespace": "bench"},
                    "spec": {"model": model},
                }
                for i in range(args.count)
            ]
            print(f"applying {args.count} GrokDeployments at once ...", flush=True)
            applied = time.monotonic()
            apply_done: list[float] = []

            def apply_all() -> None:
                cluster.kubectl(
                    "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(manifests), timeout=600
                )
                apply_done.append(time.monotonic() - applied)

            applier = threading.Thread(target=apply_all)
            applier.start()
            # Polled in-process with the API client (a kubectl per poll would itself eat a core).
            all_ready = None
            while time.monotonic() - applied < 600:
                listed = custom.list_namespaced_custom_object(
                    "serving.grok.dev", "v1alpha1", "bench", "grokdeployments"
                )
                phases = [(g.get("status") or {}).get("phase") for g in listed["items"]]
                if len(phases) == args.count and all(p == "Ready" for p in phases):
                    all_ready = time.monotonic() - applied
                    break
                time.sleep(1)
            applier.join()
            apply_seconds = apply_done[0] if apply_done else math.nan
            # Apply -> children: each GrokDeployment's creation to its workload's (1 s timestamps).
            born = {g["metadata"]["name"]: parse_time(g["metadata"]["creationTimestamp"])
                    for g in listed["items"]}
            if args.multinode:
                # Named <name>-group; the deployment label names its GrokDeployment.
                workloads = [(w["metadata"]["labels"]["serving.grok.dev/deployment"],
                              parse_time(w["metadata"]["creationTimestamp"]))
                             for w in custom.list_namespaced_custom_object(
                                 "leaderworkerset.x-k8s.io", "v1", "bench", "leaderworkersets")["items"]]
            else:
                workloads = [(d.metadata.name, d.metadata.creation_timestamp)
                             for d in apps.list_namespaced_deployment("bench").items]
            created = [(at - born[name]).total_seconds() for name, at in workloads if name in born]
            rss = peak_rss_mb(operator.pid)
            before = cpu_seconds(operator.pid)
            time.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(operator.pid) - before) / args.idle_seconds * 100
            rss = max(rss, peak_rss_mb(operator.pid))
        finally:
            operator.terminate()
            operator.wait(60)

    print(f"\nGrokDeployments applied at once:      {args.count} (kubectl apply took {apply_seconds:.1f}s)")
    print(
        f"all Ready, from the start of the apply: {all_ready:.1f}s"
        if all_ready
        else "all Ready: NOT within 600s"
    )
    if created:
        kind = "LeaderWorkerSets" if args.multinode else "Deployments"
        print(
            f"apply -> children created, p50/p99:   {statistics.median(created):.0f}s / "
            f"{percentile(created, 99):.0f}s ({len(created)} {kind}; creation timestamps, 1 s steps)"
        )
    print(f"operator peak RSS:                    {rss:.0f} MB")
    print(f"operator CPU while idle ({args.idle_seconds:.0f}s):        {idle_cpu:.2f}% of one core")
    return 0 if all_ready else 1


if __name__ == "__main__":
    sys.exit(main())
