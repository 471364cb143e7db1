"""Autoscaling end to end: a real Prometheus scrapes a real grok-server (tiny Grok-1 on the CPU) labelled
as the replicas of a GrokDeployment on the simulated cluster; a gRPC load generator drives it; the
operator (as the chart's ServiceAccount) decides through the scale subresource."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grok_devcluster.prometheus import PrometheusServer
from tests.operator.test_operator_cluster import apply, conditions, get, grokd, weights_claim
from tests.operator.test_operator_cluster import events as read_events
from tests.operatorlib import OperatorProcess, wait_for
from tests.server.serverlib import ServerProcess, launch_server, wait_serving

# On a 2-core machine a saturated engine and load generator would starve the control plane (TLS handshakes
# to the API server time out): they run at a lower CPU priority than everything the test observes.
NICE = 10


@contextlib.contextmanager
def niced_server(model: Path, workdir: Path, *flags: str) -> Iterator[ServerProcess]:
    server = launch_server(model, workdir, *flags, nice=NICE)  # the engine processes inherit it
    try:
        wait_serving(server)
        yield server
    finally:
        server.stop()


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
                preexec_fn=lambda: os.nice(NICE),  # noqa: PLW1509
            )

    def close(self) -> None:
        self.clients(0)


@pytest.fixture
def prometheus(tmp_path) -> Iterator[PrometheusServer]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(workdir)
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


def test_scales_on_load_holds_at_target_and_on_missing_data(
    devcluster, k8s_namespace, tiny_grok_checkpoint, prometheus, autoscaling_operator, tmp_path
):
    ns = k8s_namespace
    # The engine runs two sequences at a time: the other clients' requests wait, so in a closed loop
    # the waiting count is steady at (clients - 2).
    with niced_server(
        tiny_grok_checkpoint, tmp_path / "server", "--max-num-seqs", "2", "--max-concurrent-requests", "64"
    ) as server:
        prometheus.scrape(
            (
                f"127.0.0.1:{server.metrics_port}",
                {"namespace": ns, "serving_grok_dev_deployment": "auto", "pod": "auto-0"},
            )
        )
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
        tiny = {"uri": "pvc://weights/tiny", "profile": "grok-1-tiny", "maxModelLen": 1024}
        apply(devcluster, ns, weights_claim(), grokd("auto", replicas=1, model=tiny, autoscaling=autoscaling))
        load = Load(server.target, tmp_path / "load.log")
        try:
            # Steady load at the target (about 4 waiting on the one replica): no scaling.
            load.clients(6)
            wait_for(
                lambda: (
                    conditions(devcluster, ns, "auto").get("AutoscalingActive", {}).get("status") == "True"
                ),
                message="autoscaler evaluating",
            )
            steady_until = time.monotonic() + 3 * UP_WINDOW
            while time.monotonic() < steady_until:
                assert replicas(devcluster, ns) in (1, -1), conditions(devcluster, ns, "auto")[
                    "AutoscalingActive"
                ]
                time.sleep(1)

            # A load step: about 20 waiting. Scale-up within the window plus a few evaluations.
            stepped = time.monotonic()
            load.clients(22)
            wait_for(
                lambda: replicas(devcluster, ns) > 1,
                timeout=UP_WINDOW + 10 * INTERVAL + 15,
                message="scale-up",
            )
            reaction = time.monotonic() - stepped
            assert reaction >= UP_WINDOW  # not before the stabilization window
            last = get(devcluster, ns, "grokdeployment", "auto")["status"]["lastScale"]
            assert last["to"] > last["from"] >= 1 and last["metric"] == "waitingRequestsPerReplica"
            assert last["value"] > 4 * 1.5
            scaled = wait_for(
                lambda: [e["message"] for e in events(devcluster, ns, "auto") if e["reason"] == "ScaledUp"],
                message="ScaledUp events",
            )
            assert any(m.startswith("1 -> 2:") for m in scaled), scaled

            # Load stops: scale-down only after the down window.
            peak = wait_for(
                lambda: (r := replicas(devcluster, ns)) >= 3 and r,
                timeout=60,
                message="more scale-up while the queue stays long",
            )
            load.clients(0)
            stopped = time.monotonic()
            wait_for(
                lambda: 0 < replicas(devcluster, ns) < peak, timeout=DOWN_WINDOW + 120, message="scale-down"
            )
            assert time.monotonic() - stopped >= DOWN_WINDOW - INTERVAL
        finally:
            load.close()

        # Prometheus goes away: replicas are held and a condition says why.
        held = wait_for(lambda: max(replicas(devcluster, ns), 0), message="replicas")
        prometheus.stop()
        cond = wait_for(
            lambda: (
                (c := conditions(devcluster, ns, "auto").get("AutoscalingActive"))
                and c["status"] == "False"
                and c
            ),
            timeout=30,
            message="AutoscalingActive False",
        )
        assert cond["reason"] == "PrometheusUnreachable"
        assert f"holding {held} replicas" in cond["message"]
        time.sleep(DOWN_WINDOW + 2 * INTERVAL)
        assert wait_for(lambda: max(replicas(devcluster, ns), 0), message="replicas") == held
