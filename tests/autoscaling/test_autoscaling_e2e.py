"""Autoscaling end to end, on the path a user's replicas take: the GrokDeployment's pods run real
grok-servers (tiny Grok-1 on the CPU, through the simulated cluster's pod runner); a real Prometheus finds
them by pod discovery; a gRPC load generator drives the first replica at its pod address; the operator (as
the chart's ServiceAccount) decides through the scale subresource, and the replicas it adds start, load
their model and are scraped, as on a cluster."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grok_devcluster import is_ready
from grok_devcluster.podrunner import lower_priority
from grok_devcluster.prometheus import PrometheusServer
from grok_operator.scale.prometheus import metric_query
from grok_server.client import GrokClient
from tests.operator.test_operator_cluster import apply, conditions, get
from tests.operator.test_operator_cluster import events as read_events
from tests.operatorlib import OperatorProcess, bind_weights, tiny_grokd, wait_for

# The replicas' engines: two sequences at a time, so that a closed loop of N clients keeps N - 2 waiting.
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "2"]

pytestmark = pytest.mark.cluster

UP_WINDOW, DOWN_WINDOW, INTERVAL = 6, 20, 2


class Load:
    """Closed-loop gRPC load from a process of its own (`python -m grok_server.client.load`): this
    process forks kubectl all the time, which would disturb its own gRPC channels."""

    def __init__(self, target: str, log: Path) -> None:
        self.target, self.log, self.proc = target, log, None

    def clients(self, n: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(150)
            self.proc = None
        if n:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "grok_server.client.load",
                    "--target",
                    self.target,
                    "--clients",
                    str(n),
                ],
                stdout=self.log.open("ab"),
                stderr=subprocess.STDOUT,
                # On 2 cores a saturated load generator would starve the control plane (TLS handshakes to the
                # API server time out): it runs at the pods' lower priority.
                start_new_session=True,
                preexec_fn=lower_priority,  # noqa: PLW1509
            )

    def close(self) -> None:
        self.clients(0)


def autoscaled(name: str, autoscaling: dict, **server: object) -> dict:
    """One replica of the tiny model, autoscaled as given."""
    server_spec = {"drainSeconds": 10, "engineArgs": ENGINE_ARGS, **server}
    return tiny_grokd(name, server_spec, autoscaling=autoscaling)


@pytest.fixture
def prometheus(devcluster, tmp_path) -> Iterator[PrometheusServer]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(workdir, kubeconfig=devcluster.kubeconfig)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def autoscaling_operator(
    devcluster, operator_kubeconfig, grok_operator, prometheus, tmp_path
) -> Iterator[OperatorProcess]:
    """The session operator steps aside for one that knows Prometheus and evaluates every 2 s."""
    grok_operator.stop()
    proc = OperatorProcess(
        devcluster,
        operator_kubeconfig,
        tmp_path / "autoscaling-operator.log",
        "--prometheus-url",
        prometheus.url,
        "--autoscale-interval",
        str(INTERVAL),
        "--metrics-stale-seconds",
        "8",
    )
    try:
        proc.wait_leading()
        yield proc
    finally:
        proc.stop()
        grok_operator.__init__(devcluster, operator_kubeconfig, grok_operator.log_path)
        grok_operator.wait_leading()


def events(devcluster, ns, name) -> list[dict]:
    try:
        return read_events(devcluster, ns, name)
    except Exception:  # a slow API server: no events seen this time
        return []


def replicas(devcluster, ns) -> int:
    """spec.replicas, or -1 when a read fails (the API server can be slow to answer on a loaded machine)."""
    body = get(devcluster, ns, "grokdeployment", "auto")
    return int(body["spec"]["replicas"]) if body else -1


SCALED = re.compile(r" scaled (\d+) -> (\d+):")
UP_HOLDS = ("not high for the whole",)
DOWN_HOLDS = ("not low for the whole", "not scaling down meanwhile")


def autoscaler_lines(operator: OperatorProcess, ns: str) -> list[str]:
    """The operator's log lines about this test's GrokDeployment, in order (what it decided and why)."""
    lines = []
    for line in operator.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            message = json.loads(line).get("message", "") if line.startswith("{") else ""
            if message.startswith(f"{ns}/auto "):
                lines.append(message)
    return lines


def held_before_scaling(
    operator: OperatorProcess, ns: str, since: int, up: bool, holds: tuple[str, ...]
) -> tuple[bool] | None:
    """Whether, from log line `since` on, the autoscaler logged one of `holds` before its first scaling in
    that direction (and after any scaling the other way); None while it has not scaled that way yet."""
    held = False
    for line in autoscaler_lines(operator, ns)[since:]:
        if m := SCALED.search(line):
            if (int(m[2]) > int(m[1])) == up:
                return (held,)
            held = False
        elif any(h in line for h in holds):
            held = True
    return None


def waiting_seen_by_operator(prometheus: PrometheusServer, ns: str) -> float | None:
    """The waiting requests summed over the deployment's series: the autoscaler's own query."""
    result = prometheus.query(metric_query("waitingRequestsPerReplica", ns, "auto").value)
    return float(result[0]["value"][1]) if result else None


def test_scales_on_load_holds_at_target_and_on_missing_data(
    devcluster, k8s_namespace, tiny_grok_checkpoint, prometheus, autoscaling_operator, tmp_path
):
    ns = k8s_namespace
    bind_weights(devcluster, ns, "weights", tiny_grok_checkpoint)
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "metric": "waitingRequestsPerReplica",
        "target": 4,
        "tolerance": 0.5,
        "scaleUpStabilizationSeconds": UP_WINDOW,
        "scaleDownStabilizationSeconds": DOWN_WINDOW,
        "maxScaleUpStep": 1,
    }
    grokd = autoscaled("auto", autoscaling, maxConcurrentRequests=64)
    assert apply(devcluster, ns, grokd).returncode == 0
    selector = "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment=auto"

    def ready_pods() -> list[dict]:
        return [p for p in devcluster.get_json("pods", "-n", ns, "-l", selector)["items"] if is_ready(p)]

    first = wait_for(ready_pods, 600, interval=1, message="the first replica to load and turn Ready")[0]
    # The first replica takes the load at its pod address (no router yet: one connection, one replica).
    load = Load(f"{first['status']['podIP']}:50051", tmp_path / "load.log")
    try:
        # Steady load at the target (about 4 waiting on the one replica): no scaling.
        load.clients(6)
        wait_for(
            lambda: (
                conditions(devcluster, ns, "auto").get("AutoscalingActive", {}).get("status") == "True"
            ),
            120,
            message="autoscaler evaluating",
        )
        # The steady window starts once the autoscaler's query sees the load, not when it was started.
        wait_for(
            lambda: (waiting_seen_by_operator(prometheus, ns) or 0) >= 6 - 2,
            120,
            message="Prometheus to see the steady load's waiting requests",
        )
        steady_until = time.monotonic() + 3 * UP_WINDOW
        while time.monotonic() < steady_until:
            assert replicas(devcluster, ns) in (1, -1), conditions(devcluster, ns, "auto")[
                "AutoscalingActive"
            ]
            time.sleep(1)

        # A load step: about 20 waiting. Scale-up, but not at the first evaluation that sees it.
        step_line = len(autoscaler_lines(autoscaling_operator, ns))
        load.clients(22)
        wait_for(lambda: replicas(devcluster, ns) > 1, timeout=180, message="scale-up")
        # The status and the log follow the scale subresource by a moment.
        last = wait_for(
            lambda: ((get(devcluster, ns, "grokdeployment", "auto") or {}).get("status") or {}).get(
                "lastScale"
            ),
            120,
            message="status.lastScale",
        )
        assert last["to"] > last["from"] >= 1 and last["metric"] == "waitingRequestsPerReplica"
        assert last["value"] > 4 * 1.5
        # The stabilization window: an evaluation saw the step and held before the first scale-up.
        (held,) = wait_for(
            lambda: held_before_scaling(autoscaling_operator, ns, step_line, True, UP_HOLDS),
            120,
            message="the scale-up in the operator's log",
        )
        assert held, autoscaler_lines(autoscaling_operator, ns)[step_line:]
        wait_for(
            lambda: any(
                e["reason"] == "ScaledUp" and e["message"].startswith("1 -> 2:")
                for e in events(devcluster, ns, "auto")
            ),
            120,
            message="the 1 -> 2 ScaledUp event",
        )

        # The replica it added is a real server: it loads, turns Ready and is scraped (pod discovery), and
        # only then counts as capacity, so further scale-up waits for it.
        wait_for(lambda: len(ready_pods()) >= 2, 600, interval=1, message="the second replica to turn Ready")

        def scraped() -> set[str]:
            return {t["labels"]["pod"] for t in prometheus.targets()
                    if t["labels"].get("serving_grok_dev_deployment") == "auto" and t["health"] == "up"}

        wait_for(lambda: len(scraped()) >= 2, 120, message="Prometheus to scrape both replicas")

        # Load stops: scale-down only after the down window.
        peak = wait_for(
            lambda: (r := replicas(devcluster, ns)) >= 3 and r,
            timeout=600,
            message="more scale-up while the queue stays long",
        )
        stop_line = len(autoscaler_lines(autoscaling_operator, ns))
        load.clients(0)
        wait_for(
            lambda: 0 < replicas(devcluster, ns) < peak, timeout=DOWN_WINDOW + 180, message="scale-down"
        )
        # No wall-clock bound here: the operator stamps a recommendation before its Prometheus queries, so
        # a down window can begin before the load stops by as long as those take, which nothing bounds on
        # a loaded machine. What the windows guarantee is this: the first evaluation that sees the queue
        # gone recommends fewer replicas and holds (the window still has the high ones).
        (held,) = wait_for(
            lambda: held_before_scaling(autoscaling_operator, ns, stop_line, False, DOWN_HOLDS),
            120,
            message="the scale-down in the operator's log",
        )
        assert held, autoscaler_lines(autoscaling_operator, ns)[stop_line:]
    finally:
        load.close()

    # Prometheus goes away: replicas are held where they are and a condition says why. (Until the operator
    # notices, it may still be stepping down; what it holds is what the condition says.)
    prometheus.stop()
    cond = wait_for(
        lambda: (
            (c := conditions(devcluster, ns, "auto").get("AutoscalingActive"))
            and c["status"] == "False"
            and c
        ),
        timeout=120,
        message="AutoscalingActive False",
    )
    assert cond["reason"] == "PrometheusUnreachable"
    holding = re.search(r"holding (\d+) replicas \(never scaling on missing data\)", cond["message"])
    assert holding, cond["message"]
    held = int(holding[1])
    assert 1 <= held < peak
    assert wait_for(lambda: max(replicas(devcluster, ns), 0), message="replicas") == held
    time.sleep(DOWN_WINDOW + 2 * INTERVAL)  # a whole down window and more: nothing may move meanwhile
    assert wait_for(lambda: max(replicas(devcluster, ns), 0), message="replicas") == held


def test_scales_to_zero_when_idle_and_a_held_request_brings_a_replica_back(
    devcluster, k8s_namespace, tiny_grok_checkpoint, prometheus, autoscaling_operator
):
    """minReplicas 0: idle for scaleToZeroAfterSeconds (as the autoscaler saw the router's counters) goes to
    zero, ScaledToZero and not Degraded; a request at zero waits in the router, the next evaluation starts a
    replica, and the request completes: a slow first answer, not an error."""
    ns = k8s_namespace
    bind_weights(devcluster, ns, "weights", tiny_grok_checkpoint)
    grokd = autoscaled("zero", {"minReplicas": 0, "maxReplicas": 1, "scaleToZeroAfterSeconds": 60})
    assert apply(devcluster, ns, grokd).returncode == 0
    servers = "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment=zero"
    routers = "app.kubernetes.io/name=grok-router,serving.grok.dev/deployment=zero"

    def ready(selector: str) -> list[dict]:
        return [p for p in devcluster.get_json("pods", "-n", ns, "-l", selector)["items"] if is_ready(p)]

    wait_for(lambda: ready(servers), 600, interval=1, message="the first replica to turn Ready")
    router = wait_for(lambda: ready(routers), 300, interval=1, message="the router to turn Ready")[0]
    target = f"{router['status']['podIP']}:50051"

    with GrokClient(target, timeout=600) as client:
        assert client.generate("before", max_tokens=4, ignore_eos=True).usage.generated_tokens == 4

    def status() -> dict:
        return (get(devcluster, ns, "grokdeployment", "zero") or {}).get("status") or {}

    wait_for(lambda: replicas_of(devcluster, ns, "zero") == 0, 900, interval=2, message="the scale to zero")
    wait_for(lambda: not devcluster.get_json("pods", "-n", ns, "-l", servers)["items"], 300, interval=2,
             message="the replica to go")
    wait_for(lambda: status().get("phase") == "ScaledToZero", 120, message="phase ScaledToZero")
    found = conditions(devcluster, ns, "zero")
    assert found["Ready"]["reason"] == "ScaledToZero" and found.get("Degraded", {}).get("status") != "True"
    assert found["AutoscalingActive"]["status"] == "True"
    assert "no request for 60s" in status()["lastScale"]["reason"]

    with GrokClient(target, timeout=900) as client:  # held by the router through the cold start
        answer = client.generate("after", max_tokens=4, ignore_eos=True)
    assert answer.usage.generated_tokens == 4
    assert replicas_of(devcluster, ns, "zero") == 1
    assert "held at zero" in status()["lastScale"]["reason"]


def replicas_of(devcluster, ns, name) -> int:
    body = get(devcluster, ns, "grokdeployment", name)
    return int(body["spec"]["replicas"]) if body else -1
