"""Pods that run, measured on the simulated cluster:

1. the pod runner's own CPU while idle: CPU-seconds per minute of the runner process, with no pod and with
   N pods running (each with a readiness and a liveness probe), over a fixed window;
2. time from `kubectl apply` of a GrokDeployment of the tiny model to its first served token, split into:
   operator (apply -> pod created), scheduling (created -> scheduled), process start (scheduled -> the
   container running), model load (running -> Ready), first token (Ready -> a token at the pod's address);
3. a replica's crash recovery: its pod deleted -> the replacement Ready, and -> its first token.

    .venv/bin/python bench/pods_that_run.py [--idle-seconds 60] [--idle-pods 4] [--rounds 1]

CPU-seconds come from /proc (noise on this machine moves wall time, much less CPU time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from benchlib import cpu_seconds
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import DevCluster, NodePool, is_ready
from grok_devcluster.local import free_port, wait
from grok_operator.observe.pods import timestamp as stamp
from grok_server.checkpoints.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


SERVERS = "app.kubernetes.io/name=grok-server"  # not the router's pod, which turns Ready long before


def ready_pods(cluster: DevCluster, ns: str, selector: str = "") -> list[dict]:
    pods = cluster.get_json("pods", "-n", ns, *(["-l", selector] if selector else []))["items"]
    return [p for p in pods if is_ready(p) and not p["metadata"].get("deletionTimestamp")]


def idle_cost(cluster: DevCluster, seconds: float, pods: int) -> None:
    runner = int((cluster.runner_dir / "pid").read_text())
    manifests = []
    for i in range(pods):
        manifests.append({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"idle-{i}", "namespace": "default"},
            "spec": {"containers": [{
                "name": "main", "image": "grok-serve/server:0.1.0",
                "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 10},
            }]},
        })
    for count in (0, pods):
        if count:
            cluster.apply(manifests)
            wait(lambda n=count: len(ready_pods(cluster, "default")) == n, 120, "idle pods")
        before, began = cpu_seconds(runner), time.monotonic()
        time.sleep(seconds)
        used, took = cpu_seconds(runner) - before, time.monotonic() - began
        print(f"runner idle, {count} pod(s) running: {used:.2f} CPU-s in {took:.0f} s "
              f"= {60 * used / took:.2f} CPU-s per minute")
    cluster.kubectl("delete", "pods", "--all", "-n", "default", "--wait=true", "--timeout=120s")


def first_token(cluster: DevCluster, work: Path, rounds: int) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/grok-operator/crds"))
    cluster.wait_crd_established("grokdeployments.serving.grok.dev")
    operator = subprocess.Popen(
        [sys.executable, "-m", "grok_operator.main", "--metrics-port", str(free_port()), "--health-port",
         str(free_port()), "--log-format", "text"],
        env={**cluster.env(), "POD_NAMESPACE": "default"}, stdout=(work / "operator.log").open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    cluster.adopt(operator.pid)
    model = make_tiny_checkpoint(work / "tiny", size="tiny", naming="hpcai", seed=0)
    for r in range(rounds):
        ns = f"bench-{r}"
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
        manifests = list(yaml.safe_load_all((ROOT / "examples/grok-1-tiny-cpu.yaml").read_text()))
        claim = next(m for m in manifests if m["kind"] == "PersistentVolumeClaim")
        grokd = next(m for m in manifests if m["kind"] == "GrokDeployment")
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(claim))
        claim_name = claim["metadata"]["name"]
        volume = wait(lambda c=claim_name, n=ns: cluster.get_json("pvc", c, "-n", n)["spec"].get(
            "volumeName"), 60, "the claim")
        folder = Path(cluster.get_json("pv", volume)["spec"]["hostPath"]["path"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tiny").symlink_to(model, target_is_directory=True)
        applied = time.time()
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(grokd))

        pod = wait(lambda n=ns: next(iter(ready_pods(cluster, n, SERVERS)), None), 900, "the pod to be Ready")
        ready_seen = time.time()
        one_token(pod)
        token = time.time()
        conditions = {c["type"]: stamp(c["lastTransitionTime"]) for c in pod["status"]["conditions"]}
        created = stamp(pod["metadata"]["creationTimestamp"])
        running = stamp(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
        # API timestamps have one-second resolution: the split is to about a second, the total is exact.
        print(json.dumps({
            "round": r,
            "apply_to_first_token_s": round(token - applied, 1),
            "operator_s": round(created - applied, 1),
            "scheduling_s": round(conditions["PodScheduled"] - created, 1),
            "process_start_s": round(running - conditions["PodScheduled"], 1),
            "model_load_to_ready_s": round(conditions["Ready"] - running, 1),
            "ready_to_first_token_s": round(token - ready_seen, 2),
        }))
        # A replica's crash recovery: its pod deleted, the replacement Ready and serving.
        deleted = time.time()
        cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", ns, "--wait=false")
        replacement = wait(lambda n=ns, old=pod["metadata"]["name"]: next(
            (p for p in ready_pods(cluster, n, SERVERS) if p["metadata"]["name"] != old), None), 900,
            "a replacement")
        replaced = time.time()
        one_token(replacement)
        print(json.dumps({"round": r, "pod_deleted_to_replacement_ready_s": round(replaced - deleted, 1),
                          "pod_deleted_to_first_token_s": round(time.time() - deleted, 1)}))
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=180s")


def one_token(pod: dict) -> None:
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        stream = pb_grpc.GenerationServiceStub(channel).GenerateStream(pb.GenerateRequest(
            text="hello", stopping=pb.StoppingCriteria(max_new_tokens=1)), timeout=120)
        next(iter(stream))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--idle-pods", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grok-bench-pods-") as tmp, DevCluster() as cluster:
        cluster.up([NodePool(2, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1, volumes=8)
        idle_cost(cluster, args.idle_seconds, args.idle_pods)
        first_token(cluster, Path(tmp), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
