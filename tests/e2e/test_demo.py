"""`make demo` end to end: the README's main command, run as a user runs it (and torn down after): the
GrokDeployment's own pods serve, through the simulated cluster's pod runner."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from grok_devcluster.cluster import DevCluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    png = tmp_path / "dashboard.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo.py"), "--png", str(png), "--prove-alerts"],
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
        "both replicas Ready and scraped",  # the new replica's pod ran a second real server
        '"object": "text_completion"',  # OpenAI's completions, through the router
    ):
        assert milestone in out, f"{milestone!r} missing from the demo's output:\n{out[-4000:]}"
    assert "refused 0" in out
    # The router spread the load generator's requests (one client) over both replicas.
    spread = [line.split() for line in out.splitlines() if "requests through the router" in line]
    assert len(spread) >= 2 and all(int(s[1]) > 0 for s in spread), spread
    # The summary: every replica's pod at a loopback address of its own, Ready and scraped by Prometheus.
    pods = [line.split() for line in out.splitlines() if line.startswith("  pod grok-1-tiny-")]
    assert len(pods) >= 2, out[-3000:]
    assert len({p[2] for p in pods}) == len(pods) and all(p[2].startswith("127.") for p in pods)
    assert sum(p[3:] == ["Ready", "scraped"] for p in pods) >= 2, pods
    # The chart's dashboard and alert rules against the demo's Prometheus (hack/observability.py): every
    # panel's, variable's and rule's query returned series, none names a metric Prometheus has not seen; every
    # loaded rule (the shipped 7 and the proof's copy) was evaluated by Prometheus without error, and each
    # whole rule expression evaluates; no alert fired, and none was pending but TTFT's p99 (the load queues on
    # purpose, and TTFT counts the queueing: hack/demo.py's QUEUED_ON_PURPOSE); the main panels were drawn
    # from it; then deleting every replica while the router held a call fired the held-without-replica alert
    # (its rule with `for` shortened), which resolved once the call was served.
    checked = re.search(r"alert rules: (\d+) of (\d+) queries returned series", out)
    assert checked and checked[1] == checked[2] and int(checked[2]) >= 50, out[-4000:]
    for milestone in (
        "metrics named that no scraped target exposes: 0 \n",
        "alert rules loaded by Prometheus: 8, each evaluated with health ok; "
        "whole expressions queried: 7 of 7 evaluate",
        "alerts firing or pending: none (of 7 rules)",
        "alert firing: GrokNoReadyReplicaWhileRequestsHeld (the shipped rule with for: 3s)",
        "the shipped rule (for 10m): pending",
        "the held request completed once a replica was Ready again (4 tokens)",
        "GrokNoReadyReplicaWhileRequestsHeld resolved",
    ):
        assert milestone in out, f"{milestone!r} missing from the demo's output:\n{out[-4000:]}"
    assert png.read_bytes().startswith(b"\x89PNG") and "0 series" not in out
    assert not DevCluster("grok-demo").exists(), "the demo tears its cluster down"
