"""`make demo` end to end: the README's main command, run as a user runs it (and torn down after)."""

import subprocess
import sys
from pathlib import Path

import pytest

from grok_devcluster.cluster import DevCluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_cleans_up():
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    for milestone in (
        "STATUS: deployed",  # helm install
        "grok-1-tiny   1          1       1     pvc://grok-1-tiny-weights/tiny   Ready",
        "h100-",  # the replica's pod sits on a simulated H100 node
        '"architecture": "Grok1ModelForCausalLM"',  # grok-client info from the real server
        "ScaledUp",  # the autoscaler acted on the real server's queue
        "autoscaled 1 -> ",
    ):
        assert milestone in out, f"{milestone!r} missing from the demo's output:\n{out[-4000:]}"
    assert "refused 0" in out
    assert not DevCluster("grok-demo").exists(), "the demo tears its cluster down"
