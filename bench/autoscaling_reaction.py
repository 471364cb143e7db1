"""Autoscaler reaction and stability, on real components: Prometheus scraping a real grok-server (tiny
Grok-1 on the CPU) labelled as a GrokDeployment's replica on the simulated cluster, the operator deciding.

Prints (1) the reaction time from a load step to the scale decision, against the target of two scrape
intervals plus the evaluation period (the scale-up stabilization window is set to 0 here: it adds to the
reaction by design), and (2) the number of scale events during steady load at 90% of the target.

    .venv/bin/python bench/autoscaling_reaction.py [--steady-seconds 600] [--scrape-seconds 5] [--interval 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from grok_devcluster import DevCluster, NodePool
from grok_devcluster.cluster import ClusterError
from grok_devcluster.local import free_port, launch_server
from grok_devcluster.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[1]
TARGET = 10  # waiting requests per replica; the engine runs 2 sequences at a time (--max-num-seqs 2)
# The engine and the load run at a lower CPU priority than the control plane, Prometheus and the operator,
# whose timing is what is measured: on 2 cores a saturated engine would otherwise starve the API server.
NICE = 10


def spawn(log: Path, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(cmd),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        # Its own process group (killed as a whole) in this session: the kernel's autogroup scheduling makes
        # each session a scheduling group, and a separate one changes who gets the 2 cores here.
        process_group=0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady-seconds", type=float, default=600)
    parser.add_argument("--scrape-seconds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=5, help="the autoscaler's evaluation period")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # run the clean-up below when killed
    work = Path(tempfile.mkdtemp(prefix="grok-bench-autoscaling-"))
    model = (
        Path(os.environ.get("GROK_CACHE", Path.home() / ".cache/grok-serve")) / "models" / "grok-1-tiny-seed0"
    )
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "grok_server.checkpoints.tiny", str(model)], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    (work / "prometheus").mkdir()
    prometheus = PrometheusServer(work / "prometheus", scrape_interval=f"{args.scrape_seconds}s")
    # Its server runs beside the cluster (one engine, the reaction measured against it): status-only pods.
    with DevCluster(f"bench-as-{os.getpid()}", run_pods=False) as cluster:
        try:
            cluster.up([NodePool(2, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1, volumes=2)
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/grok-operator/crds"))
            cluster.wait_crd_established("grokdeployments.serving.grok.dev")
            prometheus.start()
            procs.append(
                spawn(
                    work / "operator.log",
                    sys.executable,
                    "-m",
                    "grok_operator.main",
                    "--prometheus-url",
                    prometheus.url,
                    "--autoscale-interval",
                    str(args.interval),
                    "--no-leader-election",
                    "--metrics-port",
                    str(free_port()),
                    "--health-port",
                    str(free_port()),
                    env={"KUBECONFIG": str(cluster.kubeconfig)},
                )
            )
            server = launch_server(
                model,
                work / "server",
                "--enforce-eager",
                "--kv-cache-memory-bytes",
                str(256 << 20),
                "--max-num-seqs",
                "2",
                nice=NICE,
            )
            procs.append(server.proc)
            server.wait_ready(300)
            port, metrics_port = server.port, server.metrics_port
            prometheus.scrape(
                (
                    f"127.0.0.1:{metrics_port}",
                    {"namespace": "default", "serving_grok_dev_deployment": "bench"},
                )
            )
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "weights", "namespace": "default"},
                "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
            }
            grokd = {
                "apiVersion": "serving.grok.dev/v1alpha1",
                "kind": "GrokDeployment",
                "metadata": {"name": "bench", "namespace": "default"},
                "spec": {
                    "model": {"uri": "pvc://weights/tiny", "profile": "grok-1-tiny", "maxModelLen": 1024},
                    "replicas": 1,
                    "autoscaling": {
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "target": TARGET,
                        "tolerance": 0.15,
                        "scaleUpStabilizationSeconds": 0,
                        "scaleDownStabilizationSeconds": 3600,
                        "maxScaleUpStep": 1,
                    },
                },
            }
            cluster.apply([claim, grokd])

            def replicas() -> int:
                for attempt in range(5):  # a saturated 2-core machine makes the odd API call time out
                    try:
                        return int(cluster.get_json("grokdeployment", "bench")["spec"]["replicas"])
                    except ClusterError:
                        if attempt == 4:
                            raise
                        time.sleep(1)
                raise AssertionError("unreachable")

            def load(clients: int) -> subprocess.Popen[bytes]:
                return spawn(
                    work / f"load-{clients}.log",
                    "nice",
                    "-n",
                    str(NICE),
                    sys.executable,
                    "-m",
                    "grok_server.client.load",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--clients",
                    str(clients),
                )

            time.sleep(3 * args.scrape_seconds)  # a quiet baseline in Prometheus
            # (1) Reaction: a step to twice the target (22 clients: 20 waiting).
            step = load(2 + 2 * TARGET)
            # The step is when the server holds the new load (not when the load process was spawned:
            # starting a Python process and its gRPC channel takes seconds here).
            held_by = time.monotonic() + 120
            while server.metric("grok_requests_in_flight") < 2 + 2 * TARGET:
                if time.monotonic() > held_by or step.poll() is not None:
                    raise SystemExit(f"the load never reached the server: {work}/load-{2 + 2 * TARGET}.log")
                time.sleep(0.1)
            stepped = time.monotonic()
            while replicas() == 1 and time.monotonic() - stepped < 300:
                time.sleep(0.2)
            reaction = time.monotonic() - stepped
            print(f"reaction: {reaction:.1f}s", file=sys.stderr)
            os.killpg(step.pid, signal.SIGTERM)
            step.wait(120)

            # (2) Steady load at 90% of the target on one replica: 11 clients, 9 waiting. First the step must
            # be gone from the server, Prometheus and the autoscaler's last evaluation, or the autoscaler
            # (rightly) scales the single replica straight back up.
            while server.metric("grok_requests_in_flight") > 0:
                time.sleep(0.5)
            time.sleep(2 * args.scrape_seconds + 2 * args.interval)
            cluster.kubectl("scale", "grokdeployment", "bench", "--replicas=1")
            time.sleep(2 * args.scrape_seconds + 2 * args.interval)
            if replicas() != 1:
                raise SystemExit("the autoscaler did not stay at 1 replica without load; see operator.log")
            steady_from = datetime.now(UTC)
            steady = load(2 + int(0.9 * TARGET))
            changes, last, began = 0, replicas(), time.monotonic()
            waiting: list[float] = []
            while time.monotonic() - began < args.steady_seconds:
                now = replicas()
                changes += now != last
                last = now
                if time.monotonic() - began > 3 * args.scrape_seconds:  # the load has ramped up
                    waiting.append(server.metric("grok_requests_waiting") / now)
                time.sleep(1)
            os.killpg(steady.pid, signal.SIGTERM)
            steady.wait(120)
            scale_events = [
                e
                for e in cluster.get_json(
                    "events",
                    "--field-selector",
                    "involvedObject.name=bench,involvedObject.kind=GrokDeployment",
                )["items"]
                if e["reason"].startswith("Scaled")
                and datetime.fromisoformat((e.get("lastTimestamp") or e["eventTime"]).replace("Z", "+00:00"))
                >= steady_from
            ]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(120)
            prometheus.stop()

    budget = 2 * args.scrape_seconds + args.interval
    print(f"\nscrape {args.scrape_seconds}s, evaluation {args.interval:g}s, target {TARGET} waiting/replica")
    print(
        f"reaction, load step -> scale decision: {reaction:.1f}s (target <= {budget:g}s: "
        f"{'met' if reaction <= budget else 'MISSED'})"
    )
    print(
        f"steady load at 90% of target for {args.steady_seconds:.0f}s: {changes} replica changes, "
        f"{len(scale_events)} scale events (target 0); waiting per replica, sampled each second: "
        f"mean {statistics.mean(waiting):.2f}, min {min(waiting):.0f}, max {max(waiting):.0f}"
    )
    print(f"logs: {work}")
    print(yaml.safe_dump({"reaction_seconds": round(reaction, 1), "flaps": changes}).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
