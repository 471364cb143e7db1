"""Finds (and on first use builds) the binaries the simulated cluster runs: its control plane, Helm,
Prometheus and the LeaderWorkerSet manager."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build_tools.sh")
REQUIRED = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
    "helm",
    "prometheus",
    "promtool",  # checks the chart's alert rules
    "lws-manager",
    "lws-config",  # the LeaderWorkerSet module's CRDs and webhook configurations
)


class ToolsMissing(RuntimeError):
    pass


def _complete(bin_dir: Path) -> bool:
    return all((bin_dir / name).exists() for name in REQUIRED)


def tools_dir(build: bool = True) -> Path:
    """The folder holding every binary; builds them from the Go module proxy if needed (once per version).

    GROK_DEVCLUSTER_BIN points at a folder of prebuilt binaries instead.
    """
    override = os.environ.get("GROK_DEVCLUSTER_BIN")
    if override:
        bin_dir = Path(override)
        if not _complete(bin_dir):
            missing = [n for n in REQUIRED if not (bin_dir / n).exists()]
            raise ToolsMissing(f"GROK_DEVCLUSTER_BIN={bin_dir} lacks: {', '.join(missing)}")
        return bin_dir
    if not build:
        raise ToolsMissing("binaries not built yet: run `grok-devcluster build-tools`")
    if shutil.which("go") is None:
        raise ToolsMissing("building the control plane needs Go (https://go.dev/dl/) on PATH")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ToolsMissing(
            f"building the control-plane binaries failed (exit {result.returncode}); see above"
        )
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if not _complete(bin_dir):
        raise ToolsMissing(f"build finished but {bin_dir} is incomplete")
    return bin_dir
