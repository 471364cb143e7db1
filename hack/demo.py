"""`make demo`: grok-serve end to end on an embedded default, a simulated GPU cluster on this machine.

1. a local control plane with four simulated 8-GPU H100 nodes (grok-devcluster), whose pod runner runs the
   server pods for real (a process per pod, on a loopback address of its own);
2. `helm install` of the operator chart (CRD, RBAC); the operator runs here as the chart's ServiceAccount
   (there is no container runtime: the chart's own operator pod is simulated and does nothing); a real
   Prometheus discovers pods through the API server, as on a cluster;
3. a tiny Grok-1-shaped checkpoint on a volume, and a GrokDeployment for it (examples/grok-1-tiny-cpu.yaml,
   with autoscaling on): the operator plans it, its pod starts a real grok-server (vLLM on the CPU) with the
   operator's arguments and turns Ready once the model is loaded;
4. a streamed completion through grok-client at the pod's address;
5. load from a gRPC load generator until the autoscaler scales up: the new pod starts a second real server,
   which turns Ready and is scraped;
6. the chart's dashboard and alert rules against that Prometheus (which scrapes the operator too and evaluates
   the rules): every panel's and rule's query returns data, every rule evaluates without error, no alert fires
   or is pending; the dashboard's main panels are drawn to a PNG (bench/dashboard_png.py); then a summary of
   the pods. With --prove-alerts, an alert is made to fire: every replica is deleted while the router holds a
   request.

Everything is torn down at the end, or kept with --keep (`make demo KEEP=1`), which prints how to connect and
the one command that stops it all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import observability  # hack/observability.py: the chart's dashboard and alert rules, as code
import yaml

from grok_devcluster import DevCluster, NodePool, is_ready, local
from grok_devcluster.cluster import ClusterError
from grok_devcluster.local import free_port, parse_metrics
from grok_devcluster.podrunner import lower_priority
from grok_devcluster.prometheus import PrometheusServer
from grok_server.client import GrokClient

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "grok-demo"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "grok-system"
NAME = "grok-1-tiny"
CACHE = Path(os.environ.get("GROK_CACHE", Path.home() / ".cache" / "grok-serve"))
STATE = CACHE / "demo"
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "metric": "waitingRequestsPerReplica",
    "target": 2,
    "tolerance": 0.5,
    "scaleUpStabilizationSeconds": 6,
    "scaleDownStabilizationSeconds": 60,
    "maxScaleUpStep": 1,
}


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: {' '.join(map(str, cmd))} failed:\n{result.stderr}")
    return result.stdout


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Polls `predicate`; a failed kubectl call (the API server busy on this small machine) is a "not yet"."""
    try:
        return local.wait(predicate, timeout, what, interval=0.5,
                          transient=(ClusterError, subprocess.TimeoutExpired))
    except TimeoutError as e:
        raise SystemExit(f"demo: {e}") from None


def tiny_checkpoint() -> Path:
    path = CACHE / "models" / "grok-1-tiny-seed0"
    if not (path / "config.json").exists():
        run(sys.executable, "-m", "grok_server.checkpoints.tiny", path, "--size", "tiny")
    return path


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster = DevCluster(CLUSTER)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.prometheus: PrometheusServer | None = None
        self.router_ip = ""
        self.applied_at = time.time()
        STATE.mkdir(parents=True, exist_ok=True)

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl(*args).stdout

    def grokd(self) -> dict:
        return yaml.safe_load(self.kubectl("get", "grokdeployment", NAME, "-n", NAMESPACE, "-o", "yaml"))

    def start(
        self, name: str, *cmd: str | Path, env: dict[str, str] | None = None, background: bool = False
    ) -> subprocess.Popen[bytes]:
        """A process of the demo's, stopped with the cluster; `background` ones (the load generator) run at
        the pods' lower priority, so that the control plane keeps answering."""
        log = (STATE / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=lower_priority if background else None,  # noqa: PLW1509
        )
        self.processes.append(proc)
        self.cluster.adopt(proc.pid)  # `grok-devcluster down` stops it too
        return proc

    # -- the steps ------------------------------------------------------------------------------------

    def control_plane(self) -> None:
        if self.cluster.exists():
            self.cluster.down()
        step("1/6 simulated GPU cluster: etcd, kube-apiserver, controller-manager, scheduler, KWOK nodes, "
             "pod runner")
        self.cluster.up([NodePool(4, 8, "NVIDIA-H100-80GB-HBM3", "h100")], cpu_nodes=1)
        print(self.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,node.kubernetes.io/instance-type"))

    def operator(self) -> None:
        step("2/6 helm install charts/grok-operator (CRD, ServiceAccount, least-privilege RBAC)")
        helm = self.cluster.bin_dir / "helm"
        print(
            run(
                helm,
                "install",
                "grok",
                ROOT / "charts" / "grok-operator",
                "-n",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "--set",
                "replicaCount=0",
                env=self.cluster.env(),
            ).split("NOTES:")[0]
        )
        shutil.rmtree(STATE / "prometheus", ignore_errors=True)  # no samples from an earlier run
        (STATE / "prometheus").mkdir()
        # Pod discovery through the API server (kubernetes_sd_configs), as Prometheus does on a cluster.
        # It evaluates the chart's alert rules, and with --prove-alerts a copy of one whose `for` is seconds.
        rule_files = [observability.RULES_PATH]
        if self.args.prove_alerts:
            rule_files.append(STATE / "prometheus" / "proof.rules.yaml")
            rule_files[-1].write_text(yaml.safe_dump(observability.shortened(PROOF_ALERT)))
        self.prometheus = PrometheusServer(
            STATE / "prometheus", kubeconfig=self.cluster.kubeconfig, rule_files=rule_files
        )
        self.prometheus.start()
        assert self.prometheus.proc is not None
        self.cluster.adopt(self.prometheus.proc.pid)
        kubeconfig = self.cluster.service_account_kubeconfig(
            OPERATOR_NAMESPACE, "grok-grok-operator", STATE / "operator-kubeconfig"
        )
        health, metrics_port = free_port(), free_port()
        self.start(
            "operator",
            sys.executable,
            "-m",
            "grok_operator.main",
            "--prometheus-url",
            self.prometheus.url,
            "--autoscale-interval",
            "2",
            "--metrics-stale-seconds",
            "10",
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            str(health),
            "--log-format",
            "text",
            env={"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE},
        )

        def healthy() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2)
                return True
            except OSError:
                return False

        wait(healthy, 90, "the operator")
        # Prometheus scrapes the operator (a process here, not a pod) as it would its metrics Service.
        self.prometheus.scrape((f"127.0.0.1:{metrics_port}", {"namespace": OPERATOR_NAMESPACE,
                                                              "pod": "grok-operator-demo"}))
        print(
            f"operator running as system:serviceaccount:{OPERATOR_NAMESPACE}:grok-grok-operator "
            f"(log: {STATE / 'operator.log'}); Prometheus at {self.prometheus.url}"
        )

    def pods(self) -> list[dict]:
        selector = f"app.kubernetes.io/name=grok-server,serving.grok.dev/deployment={NAME}"
        return list(self.cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"])

    def deployment(self) -> str:
        step("3/6 kubectl apply a GrokDeployment of a tiny Grok-1-shaped model (with autoscaling)")
        manifests = list(yaml.safe_load_all((ROOT / "examples" / "grok-1-tiny-cpu.yaml").read_text()))
        claim = next(m for m in manifests if m["kind"] == "PersistentVolumeClaim")
        grokd = next(m for m in manifests if m["kind"] == "GrokDeployment")
        grokd["spec"]["autoscaling"] = AUTOSCALING
        self.kubectl("create", "namespace", NAMESPACE)
        self.cluster.kubectl(
            "wait", "--for=create", "serviceaccount/default", "-n", NAMESPACE, "--timeout=120s"
        )
        # The weights first: the claim binds to one of the cluster's volumes; its folder gets the checkpoint.
        self.cluster.apply([claim], namespace=NAMESPACE)
        name = claim["metadata"]["name"]
        volume = wait(
            lambda: self.cluster.get_json("pvc", name, "-n", NAMESPACE)["spec"].get("volumeName"),
            60,
            "the claim",
        )
        folder = Path(self.cluster.get_json("pv", volume)["spec"]["hostPath"]["path"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tiny").symlink_to(tiny_checkpoint(), target_is_directory=True)
        print(f"claim {name} bound to {volume} ({folder}), holding the tiny checkpoint")
        applied = time.monotonic()
        self.applied_at = time.time()
        print(self.cluster.apply([grokd], namespace=NAMESPACE).stdout)
        step("the operator's pod starts a real grok-server; Ready once the model is loaded")
        wait(lambda: (self.grokd().get("status") or {}).get("phase") == "Ready", 600, "the GrokDeployment")
        print(f"Ready {time.monotonic() - applied:.0f}s after kubectl apply")
        print(self.kubectl("get", "grokdeployments", "-n", NAMESPACE))
        print(self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
        plan = self.grokd()["status"]["plan"]
        print(
            f"plan: tensor parallel {plan['tensorParallelSize']} on {plan['gpuProduct']}, "
            f"{plan['maxConcurrentSequences']} full-context sequences per replica"
        )
        # ClusterIPs are not routable in the simulated cluster (no kube-proxy): the router at its pod address.
        router = wait(lambda: next((p for p in self.routers() if is_ready(p)), None), 120, "the router pod")
        self.router_ip = router["status"]["podIP"]
        wait(lambda: self.router_metric('grok_router_replicas{state="ready"}') >= 1, 60,
             "the router to see the replica")
        print(f"router {router['metadata']['name']} at {self.router_ip}: gRPC :50051, OpenAI HTTP :8080")
        return f"{self.router_ip}:50051"

    def routers(self) -> list[dict]:
        selector = f"app.kubernetes.io/name=grok-router,serving.grok.dev/deployment={NAME}"
        return list(self.cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"])

    def router_metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.router_ip}:8080/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())

    def router_metric(self, name: str) -> float:
        return self.router_metrics().get(name, 0.0)

    def routed(self) -> dict[str, tuple[float, float]]:
        """Per replica (pod name): the calls the router has sent it (finished, any outcome), and those in
        flight there now."""
        found: dict[str, tuple[float, float]] = {}
        for key, value in self.router_metrics().items():
            if 'replica="' not in key:
                continue
            pod = key.split('replica="')[1].split('"')[0]
            done, now = found.get(pod, (0.0, 0.0))
            if key.startswith("grok_router_upstream_requests_total{"):
                found[pod] = (done + value, now)
            elif key.startswith("grok_router_replica_in_flight{"):
                found[pod] = (done, now + value)
        return found

    def completion(self, target: str) -> None:
        step(f"4/6 grok-client generate --stream through the router at {target} "
             "(random weights: the text is noise, the tokens are real)")
        out = run(
            sys.executable,
            "-m",
            "grok_server.client.cli",
            "generate",
            "--target",
            target,
            "--stream",
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "The capital of France is",
        )
        print(out)
        print(run(sys.executable, "-m", "grok_server.client.cli", "info", "--target", target))
        body = json.dumps({"model": NAME, "prompt": "The capital of France is", "max_tokens": 8,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"http://{self.router_ip}:8080/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            print(f"POST http://{self.router_ip}:8080/v1/completions (OpenAI-compatible) ->\n"
                  f"  {answer.read().decode()}")

    def autoscaling(self, target: str) -> int:
        step("5/6 load: 12 concurrent streams through the router; a replica runs 2 at a time: a queue")
        load = self.start(
            "load", sys.executable, "-m", "grok_server.client.load", "--target", target, "--clients", "12",
            background=True,
        )
        started = time.monotonic()
        try:

            def replicas() -> int:
                return int(self.grokd()["spec"]["replicas"])

            scaled = wait(lambda: replicas() > 1 and replicas(), 180, "a scale-up")
            print(f"scaled 1 -> {scaled} after {time.monotonic() - started:.0f}s of load")
            last = self.grokd()["status"].get("lastScale", {})
            print(f"lastScale: {last.get('from')} -> {last.get('to')}: {last.get('reason')}")
            step("the new replica's pod starts a second real server; Prometheus discovers it once it runs")
            wait(lambda: sum(is_ready(p) for p in self.pods()) >= 2, 600, "the second replica to turn Ready")
            assert self.prometheus is not None
            wait(lambda: len(self.scraped()) >= 2, 120, "Prometheus to scrape both replicas")
            print(f"both replicas Ready and scraped {time.monotonic() - started:.0f}s after the load began")
            step("the router spreads the same client's requests over both replicas")
            # The router sends calls to the new replica as soon as its pod is Ready (how fast they finish
            # depends on this machine, so what is shown is what was sent).
            wait(lambda: sum(1 for done, now in self.routed().values() if done + now > 0) >= 2, 300,
                 "the router to send calls to both replicas")
            # Calls finished on each (the dashboard's balance panel, drawn at the end, shows them).
            wait(lambda: sum(1 for done, _ in self.routed().values() if done >= 10) >= 2, 300,
                 "calls to finish on both replicas")
            for pod, (done, now) in sorted(self.routed().items()):
                print(f"  {pod:<34} {done + now:>5.0f} requests through the router ({now:.0f} in flight now)")
            wait(self.scaled_event, 60, "the ScaledUp event")
            print(self.kubectl("get", "grokdeployments", "-n", NAMESPACE))
            print(
                self.kubectl(
                    "get",
                    "events",
                    "-n",
                    NAMESPACE,
                    "--field-selector",
                    f"involvedObject.name={NAME}",
                    "-o",
                    "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
                )
            )
        finally:
            load.send_signal(signal.SIGTERM)
            load.wait(150)
        print("load generator: " + (STATE / "load.log").read_text().strip().splitlines()[-1])
        return scaled

    def dashboard_and_alerts(self, png: Path) -> None:
        step("6/6 the chart's dashboard and alert rules against Prometheus: every query, every alert")
        assert self.prometheus is not None
        url = self.prometheus.url
        checks: list = []
        began = time.monotonic()

        def all_answer() -> bool:
            checks[:] = observability.check_queries(url, NAMESPACE, NAME)
            return all(c.series and not c.error for c in checks)

        try:
            wait(all_answer, 120, "every panel's and rule's query to return data")
        finally:
            for c in checks:
                if not c.series or c.error:
                    print(f"  NO DATA  {c.where}: {c.query} {c.error}")
        print(f"dashboard panels, variables and alert rules: {observability.summary(checks)}")
        # Each rule as Prometheus evaluates it (every second here): one that loads but fails at every
        # evaluation (many-to-many matching, say) would never fire.
        problems: list[str] = []
        answer: dict = {}

        def rules_evaluated() -> bool:
            answer.clear()
            answer.update(observability.get(url, "/api/v1/rules"))
            problems[:] = observability.rule_problems(answer)
            return not problems

        try:
            wait(rules_evaluated, 30, "every alert rule to be evaluated without error")
        finally:
            for problem in problems:
                print(f"  RULE  {problem}")
        loaded = sum(len(g["rules"]) for g in answer["data"]["groups"])  # the answer that had no problem
        whole = observability.check_rule_expressions(url)
        broken = [c for c in whole if c.error]
        for c in broken:
            print(f"  ERROR  {c.where}: {c.query} {c.error}")
        print(f"alert rules loaded by Prometheus: {loaded}, each evaluated with health ok; whole expressions "
              f"queried: {len(whole) - len(broken)} of {len(whole)} evaluate "
              f"({sum(1 for c in whole if c.series)} with series)")
        named = observability.every_metric_named()
        unknown = sorted(named - observability.scraped_names(url))
        print(f"metrics named that no scraped target exposes: {len(unknown)} {' '.join(unknown)}")
        quiet = sorted(named - observability.series_names(url) - set(unknown))
        print(f"  of the {len(named)} named, exposed but with no series yet (nothing counted): "
              + (", ".join(quiet) or "none"))
        # Silent is neither firing nor pending (a pending alert's expression holds on this workload), but for
        # TTFT's: see QUEUED_ON_PURPOSE.
        alerts = observability.alerts(url)
        loud = observability.not_silent(alerts, may_pend=QUEUED_ON_PURPOSE)
        for a in alerts:
            if a["state"] in ("firing", "pending"):
                print(f"  ALERT  {a['state']} {a['labels']} (value {float(a['value']):.3g})")
        queued = sorted({a["labels"]["alertname"] for a in alerts
                         if a["state"] == "pending" and a["labels"]["alertname"] in QUEUED_ON_PURPOSE})
        print(f"alerts firing or pending: {', '.join(loud) or 'none'} (of {len(observability.RULES)} rules); "
              f"pending as the queued load makes it: {', '.join(queued) or 'none'}")
        drawn = dashboard_png().render(url, NAMESPACE, NAME, self.applied_at - 10, time.time(), png)
        print(f"the dashboard's main panels from Prometheus: {png} "
              + ", ".join(f"{title}: {n} series" for title, n in drawn.items()))
        print(f"(checked and drawn in {time.monotonic() - began:.0f}s)")
        if unknown or loud or broken or not all(drawn.values()):
            raise SystemExit("demo: the dashboard or the alert rules do not match what Prometheus has")

    def prove_alert(self, target: str) -> None:
        step(f"an alert on purpose: every replica deleted while the router holds a request ({PROOF_ALERT})")
        assert self.prometheus is not None
        url = self.prometheus.url
        began = time.monotonic()
        selector = f"app.kubernetes.io/name=grok-server,serving.grok.dev/deployment={NAME}"
        print(self.kubectl("delete", "pods", "-n", NAMESPACE, "-l", selector, "--wait=false").strip())
        wait(lambda: self.router_metric('grok_router_replicas{state="ready"}') == 0 or None, 120,
             "the router to see no Ready replica")
        result: dict = {}

        def held_call() -> None:
            try:
                with GrokClient(target, timeout=900) as client:
                    result["answer"] = client.generate("held", max_tokens=4, ignore_eos=True)
            except Exception as err:  # reported below
                result["error"] = err

        call = threading.Thread(target=held_call, daemon=True)
        call.start()
        wait(lambda: self.router_metric("grok_router_requests_held") >= 1, 120, "the router to hold the call")

        def named() -> list[dict]:
            return [a for a in observability.alerts(url) if a["labels"]["alertname"] == PROOF_ALERT]

        fired = wait(lambda: [a for a in named() if a["state"] == "firing"], 180, f"{PROOF_ALERT} to fire")[0]
        print(f"alert firing: {PROOF_ALERT} ({fired['labels'].get('proof')}): "
              f"{fired['annotations']['summary']}")
        shipped = [a["state"] for a in named() if "proof" not in a["labels"]]
        print(f"  the shipped rule (for {observability.rule(PROOF_ALERT).for_}): {', '.join(shipped) or '-'}")
        call.join(900)
        if "answer" not in result:
            raise SystemExit(f"demo: the held call failed: {result.get('error')}")
        print(f"the held request completed once a replica was Ready again "
              f"({result['answer'].usage.generated_tokens} tokens)")
        wait(lambda: not [a for a in named() if a["state"] == "firing"], 180, f"{PROOF_ALERT} to resolve")
        print(f"{PROOF_ALERT} resolved ({time.monotonic() - began:.0f}s after the replicas were deleted)")

    def scraped(self) -> list[str]:
        assert self.prometheus is not None
        return [t["labels"]["pod"] for t in self.prometheus.targets()
                if t["labels"].get("serving_grok_dev_deployment") == NAME and t["health"] == "up"]

    def scaled_event(self) -> bool:
        events = self.cluster.get_json(
            "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={NAME}"
        )
        return any(e["reason"] == "ScaledUp" for e in events["items"])

    def summary_of_pods(self) -> None:
        scraped = set(self.scraped())
        for pod in self.pods():
            name = pod["metadata"]["name"]
            print(f"  pod {name:<34} {pod['status'].get('podIP', '-'):<14} "
                  f"{'Ready' if is_ready(pod) else 'not Ready':<10} {'scraped' if name in scraped else ''}")

    def stop_processes(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.prometheus is not None:
            self.prometheus.stop()


PROOF_ALERT = "GrokNoReadyReplicaWhileRequestsHeld"
# The load queues on purpose (12 streams on a replica that runs 2 at a time: the queue the autoscaler scales
# on), and time to first token counts that queueing: its p99 on this CPU is a minute, far above the rule's
# 5 s, so that alert is pending (never firing: its `for` is longer than the demo). Every other one is silent.
QUEUED_ON_PURPOSE = ("GrokTimeToFirstTokenP99High",)


def dashboard_png():  # type: ignore[no-untyped-def]
    """bench/dashboard_png.py (the dashboard's main panels, drawn with matplotlib)."""
    spec = importlib.util.spec_from_file_location("dashboard_png", ROOT / "bench" / "dashboard_png.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description="grok-serve end to end on a simulated GPU cluster")
    parser.add_argument(
        "--keep", action="store_true", help="leave everything running and print how to connect"
    )
    parser.add_argument("--png", type=Path, default=STATE / "dashboard.png",
                        help="where to draw the dashboard's main panels (default: %(default)s)")
    parser.add_argument("--prove-alerts", action="store_true",
                        help="at the end, make an alert fire: delete every replica while a request is held")
    args = parser.parse_args()
    demo = Demo(args)
    began = time.monotonic()
    try:
        demo.control_plane()
        demo.operator()
        target = demo.deployment()
        demo.completion(target)
        scaled = demo.autoscaling(target)
        demo.dashboard_and_alerts(args.png.resolve())
        step(f"done in {time.monotonic() - began:.0f}s")
        print(f"  cluster        {CLUSTER}: 4 simulated H100 nodes (8 GPUs each) + 1 CPU node")
        print(
            f"  GrokDeployment {NAMESPACE}/{NAME}: Ready, autoscaled 1 -> {scaled} on grok_requests_waiting"
        )
        print(f"  router         {target} (gRPC) and http://{demo.router_ip}:8080/v1 (OpenAI), at its pod "
              "address; requests spread over the replicas")
        demo.summary_of_pods()
        if args.prove_alerts:
            demo.prove_alert(target)
        if args.keep:
            print(
                f"\nstill running (make demo KEEP=1):\n  export KUBECONFIG={demo.cluster.kubeconfig}\n"
                f"  export PATH={demo.cluster.bin_dir}:$PATH\n"
                f"  kubectl get grokd,pods -n {NAMESPACE} -o wide\n"
                f"  .venv/bin/grok-client generate --target {target} --stream 'Hello'\n"
                f"stop everything (servers, operator, Prometheus, control plane) with one command:\n"
                f"  .venv/bin/grok-devcluster down --name {CLUSTER}"
            )
        return 0
    finally:
        if not args.keep:
            step("tearing down")
            demo.stop_processes()
            demo.cluster.down()
            print("everything stopped")


if __name__ == "__main__":
    sys.exit(main())
