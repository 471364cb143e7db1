"""Helpers for the chart, example and Dockerfile tests: helm and kubectl as users run them."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from grok_devcluster import DevCluster
from grok_devcluster.tools import tools_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "grok-operator"
CRDS = CHART / "crds"
EXAMPLES = ROOT / "examples"
CRD_NAME = "grokdeployments.serving.grok.dev"
KUBE_VERSION = "1.36.3"


def helm(
    *args: str, cluster: DevCluster | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Runs helm (against `cluster` when given); never raises on a non-zero exit."""
    env = cluster.env() if cluster else {**os.environ, "KUBECONFIG": os.devnull}
    return subprocess.run(
        [str(tools_dir() / "helm"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def template(release: str, namespace: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """`helm template` of the chart, offline; the documents it rendered (none when it failed)."""
    result = helm("template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *args)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result, docs


def unique_release(prefix: str = "gt") -> str:
    """Release names are unique per test: the chart's cluster-scoped RBAC is named after the release."""
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def grok_crd(devcluster: DevCluster) -> str:
    """The GrokDeployment CRD, installed from the chart (server-side apply, as the chart README says)."""
    devcluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    devcluster.wait_crd_established(CRD_NAME)
    return CRD_NAME


@pytest.fixture(scope="session")
def installable_chart(devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart to `helm install` into the simulated cluster: the chart itself, unless the cluster's
    kube-apiserver reports no real version. Built from the Go module proxy without version ldflags it
    says v0.0.0-master, which the chart's `kubeVersion: >=1.30.0-0` refuses; only then is the chart
    copied with that one line dropped (test_chart checks the constraint itself with --kube-version)."""
    version = json.loads(devcluster.kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    if re.match(r"^v1\.(\d+)\.", version) and int(version.split(".")[1]) >= 30:
        return CHART
    copy = tmp_path_factory.mktemp("chart") / CHART.name
    shutil.copytree(CHART, copy)
    chart_yaml = copy / "Chart.yaml"
    lines = chart_yaml.read_text().splitlines(keepends=True)
    chart_yaml.write_text("".join(line for line in lines if not line.startswith("kubeVersion:")))
    return copy
