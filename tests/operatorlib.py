"""The operator as users run it: a real process, authenticated as the chart's ServiceAccount, with
exactly the RBAC the chart grants, against the simulated GPU cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from grok_devcluster import DevCluster
from grok_devcluster.cluster import ClusterError
from grok_devcluster.local import free_port, parse_metrics, wait
from tests.caches import run_compile_cache

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "grok-operator"
CRDS = CHART / "crds"
OPERATOR_NAMESPACE = "grok-system"
RELEASE = "grok"
SERVICE_ACCOUNT = "grok-grok-operator"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def render_chart(cluster: DevCluster, *args: str) -> list[dict]:
    result = subprocess.run(
        [
            str(cluster.bin_dir / "helm"),
            "template",
            RELEASE,
            str(CHART),
            "-n",
            OPERATOR_NAMESPACE,
            "--kube-version",
            "1.36.3",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


class OperatorProcess:
    """One `grok-operator` process; logs go to a file the tests can read."""

    def __init__(self, cluster: DevCluster, kubeconfig: Path, log_path: Path, *args: str) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_path
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grok_operator.main",
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                "--log-format",
                "json",
                *args,
            ],
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def read_metric(self, name: str, timeout: float = 60) -> float:
        """The metric's value, scraping until a scrape succeeds and has it (one can time out on a busy
        machine)."""
        return wait_for(
            lambda: (value := self.metric(name)) is not None and (value,),
            timeout,
            message=f"{name} from the operator's /metrics",
        )[0]

    def metric(self, name: str) -> float | None:
        """The first series of `name` (any labels), or None when it is absent or the scrape fails."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                samples = parse_metrics(r.read().decode())
        except OSError:
            return None
        return next((v for k, v in samples.items() if k == name or k.startswith(name + "{")), None)

    def wait_leading(self, timeout: float = 120) -> None:
        def leading() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"operator exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2):
                return True

        wait_for(leading, timeout, message=f"the operator to lead (log {self.log_path})")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            log = self.log_path.read_text()[-3000:]
            raise AssertionError(f"operator did not exit {timeout} s after signal {sig}:\n{log}") from None

    def logs(self) -> list[dict]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="session")
def operator_kubeconfig(devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CRD and the chart's ServiceAccount and RBAC, applied; a kubeconfig that is that account."""
    devcluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    devcluster.wait_crd_established("grokdeployments.serving.grok.dev")
    devcluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    devcluster.apply([d for d in render_chart(devcluster) if d["kind"] in RBAC_KINDS])
    return devcluster.service_account_kubeconfig(
        OPERATOR_NAMESPACE, SERVICE_ACCOUNT, tmp_path_factory.mktemp("operator") / "kubeconfig"
    )


@pytest.fixture(scope="session")
def grok_operator(
    devcluster: DevCluster, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        devcluster, operator_kubeconfig, tmp_path_factory.mktemp("operator-logs") / "operator.log"
    )
    proc.wait_leading()
    yield proc
    proc.stop()


# A kubectl call that failed or timed out, a refused or timed-out HTTP request: on a loaded machine the
# control plane answers late now and then, which is not the answer a wait is for.
TRANSIENT_ERRORS = (ClusterError, subprocess.TimeoutExpired, OSError)


def wait_for(predicate, timeout: float = 90, interval: float = 0.3, message: str = "condition"):
    """Polls `predicate` until it returns something truthy; returns that value. A transient error from it
    counts as "not yet"; if the deadline passes with one, the failure names it."""
    try:
        return wait(predicate, timeout, message, interval=interval, transient=TRANSIENT_ERRORS)
    except TimeoutError as e:
        raise AssertionError(str(e)) from e.__cause__


def tiny_grokd(name: str, server: dict, claim: str = "weights", replicas: int = 1, **spec: object) -> dict:
    """A GrokDeployment of the tiny Grok-1 checkpoint (`tiny/` in the claim, as bind_weights leaves it) on a
    simulated H100: its pods run real grok-servers."""
    return {
        "apiVersion": "serving.grok.dev/v1alpha1",
        "kind": "GrokDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"pvc://{claim}/tiny", "profile": "grok-1-tiny", "maxModelLen": 1024},
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
            "replicas": replicas,
            # The run's compile cache (tests/conftest.py), not the node default under /var/cache.
            "server": {"compileCache": {"hostPath": {"path": run_compile_cache()}}, **server},
            **spec,
        },
    }


def bind_weights(
    cluster: DevCluster, ns: str, claim: str, checkpoint: Path, spec: dict | None = None
) -> None:
    """A claim (of `spec`, or a small read-only one) bound to one of the cluster's static volumes, with the
    checkpoint in its folder under tiny/."""
    spec = spec or {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                    "resources": {"requests": {"storage": "1Gi"}}}
    cluster.apply([{
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
        "spec": spec,
    }])
    volume = wait_for(lambda: cluster.get_json("pvc", claim, "-n", ns)["spec"].get("volumeName"), 60,
                      message="the claim to bind")
    folder = Path(cluster.get_json("pv", volume)["spec"]["hostPath"]["path"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny").symlink_to(checkpoint, target_is_directory=True)
