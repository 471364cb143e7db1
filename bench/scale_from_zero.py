"""Scale from zero, measured on the simulated cluster (real operator, Prometheus, router and server pods):
a GrokDeployment at zero replicas (autoscaling.minReplicas 0) gets one request through its router, which
holds it until a replica is Ready. From that request to its first token, split into:

- decision: request sent -> the autoscaler set replicas to 1 (its evaluation period and Prometheus' scrape
  of the router's held gauge);
- scheduling: replicas set -> the pod scheduled (Deployment, ReplicaSet, scheduler);
- process start: scheduled -> the container running;
- model load: running -> Ready (the server's startup probe passed);
- holding's own cost: Ready -> first token (the router seeing the pod Ready, sending the held call, the
  first token): the target is at most 1 s. Also to the millisecond from the router's side: the router
  logging the replica joined (its watch saw the pod Ready) -> the first token.

    .venv/bin/python bench/scale_from_zero.py [--sizes tiny small] [--interval 2]

API timestamps have one-second resolution: the split is to about a second; the total is the client's own,
and the router's part is read from its log (milliseconds, the same clock).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import DevCluster, NodePool, is_ready
from grok_devcluster.local import free_port, wait
from grok_devcluster.prometheus import PrometheusServer
from grok_operator.observe.pods import timestamp as stamp
from grok_server.checkpoints.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "2"]


def grokd(size: str, max_model_len: int) -> dict:
    return {
        "apiVersion": "serving.grok.dev/v1alpha1", "kind": "GrokDeployment", "metadata": {"name": "cold"},
        "spec": {
            "model": {"uri": "pvc://weights/model", "profile": f"grok-1-{size}",
                      "maxModelLen": max_model_len},
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
            "replicas": 0,
            "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "scaleToZeroAfterSeconds": 3600},
            "server": {"drainSeconds": 10, "engineArgs": ENGINE_ARGS},
        },
    }


def joined_at(router_log: str, pod: str) -> float:
    """When the router logged `pod` joining its ready replicas (its log's asctime: local time, in ms)."""
    line = next(entry for entry in router_log.splitlines()
                if f"replica {pod} " in entry and entry.endswith("joined"))
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def one_round(cluster: DevCluster, work: Path, size: str, round_: int) -> dict:
    ns = f"cold-{size}-{round_}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    model = work / size
    if not model.exists():
        make_tiny_checkpoint(model, size=size, naming="hpcai", seed=0)
    cluster.apply([{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "weights", "namespace": ns},
                    "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                             "resources": {"requests": {"storage": "1Gi"}}}}])
    volume = wait(lambda: cluster.get_json("pvc", "weights", "-n", ns)["spec"].get("volumeName"), 60, "claim")
    folder = Path(cluster.get_json("pv", volume)["spec"]["hostPath"]["path"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model").symlink_to(model, target_is_directory=True)
    cluster.apply([{**grokd(size, 1024), "metadata": {"name": "cold", "namespace": ns}}])
    routers = "app.kubernetes.io/name=grok-router,serving.grok.dev/deployment=cold"
    router = wait(lambda: next((p for p in cluster.get_json("pods", "-n", ns, "-l", routers)["items"]
                                if is_ready(p)), None), 300, "the router")
    target = f"{router['status']['podIP']}:50051"
    time.sleep(5)  # the router's gauges scraped at least once before the request (Prometheus: 1 s scrapes)

    sent = time.time()
    with grpc.insecure_channel(target) as channel:
        stream = pb_grpc.GenerationServiceStub(channel).GenerateStream(pb.GenerateRequest(
            text="hello", stopping=pb.StoppingCriteria(max_new_tokens=1)), timeout=1800)
        next(iter(stream))
    token = time.time()
    servers = "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment=cold"
    (pod,) = cluster.get_json("pods", "-n", ns, "-l", servers)["items"]
    events = cluster.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=cold")["items"]
    scaled = min(stamp(e.get("lastTimestamp") or e["eventTime"]) for e in events if e["reason"] == "ScaledUp")
    conditions = {c["type"]: stamp(c["lastTransitionTime"]) for c in pod["status"]["conditions"]}
    running = stamp(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    router_log = cluster.kubectl("logs", router["metadata"]["name"], "-n", ns).stdout
    joined = joined_at(router_log, pod["metadata"]["name"])
    result = {
        "size": size,
        "round": round_,
        "request_to_first_token_s": round(token - sent, 1),
        "decision_s": round(scaled - sent, 1),
        "scheduling_s": round(conditions["PodScheduled"] - scaled, 1),
        "process_start_s": round(running - conditions["PodScheduled"], 1),
        "model_load_s": round(conditions["Ready"] - running, 1),
        "holding_cost_ready_to_first_token_s": round(token - conditions["Ready"], 2),
        "router_joined_to_first_token_s": round(token - joined, 3),
    }
    cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=300s", check=False)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--interval", type=float, default=2.0, help="the autoscaler's evaluation period (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grok-bench-zero-") as tmp, DevCluster() as cluster:
        work = Path(tmp)
        cluster.up([NodePool(2, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1, volumes=8)
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/grok-operator/crds"))
        cluster.wait_crd_established("grokdeployments.serving.grok.dev")
        (work / "prometheus").mkdir()
        prometheus = PrometheusServer(work / "prometheus", kubeconfig=cluster.kubeconfig)
        prometheus.start()
        try:
            operator = subprocess.Popen(
                [sys.executable, "-m", "grok_operator.main", "--metrics-port", str(free_port()),
                 "--health-port", str(free_port()), "--log-format", "text",
                 "--prometheus-url", prometheus.url,
                 "--autoscale-interval", str(args.interval), "--metrics-stale-seconds", "30"],
                env={**cluster.env(), "POD_NAMESPACE": "default"}, stdout=(work / "operator.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
            cluster.adopt(operator.pid)
            results = [one_round(cluster, work, size, r) for size in args.sizes for r in range(args.rounds)]
        finally:
            prometheus.stop()
    print(f"autoscaler evaluation period {args.interval:g} s; Prometheus scrape interval 1 s")
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
