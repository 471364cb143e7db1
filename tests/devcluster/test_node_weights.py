"""Node-local weights on the simulated cluster: two replicas of one GrokDeployment forced onto one node; one
copies the model from the shared cache to the node's own folder, the other reads nothing from the shared
cache (counted by the servers, read from their start-up reports). The operator then labels the node as
holding the model, which its replicas prefer."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from grok_devcluster.cluster import DevCluster, is_ready
from tests.operatorlib import OperatorProcess, bind_weights, tiny_grokd, wait_for

pytestmark = pytest.mark.cluster

NAME = "node-weights"
NODE = "h100-2"
SELECTOR = f"app.kubernetes.io/name=grok-server,serving.grok.dev/deployment={NAME}"
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--dtype", "float32",
               "--max-num-seqs", "4", "--no-warmup"]


@pytest.fixture(scope="module")
def namespace(devcluster: DevCluster) -> Iterator[str]:
    ns = f"node-weights-{os.getpid()}"
    devcluster.kubectl("create", "namespace", ns)
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    yield ns
    devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def report(pod: dict) -> dict:
    url = f"http://{pod['status']['podIP']}:9090/startup"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_second_replica_on_a_node_reads_nothing_from_the_shared_cache(
        devcluster: DevCluster, grok_operator: OperatorProcess, namespace: str, tiny_grok_checkpoint: Path,
        tmp_path: Path) -> None:
    # A copy of the checkpoint of this test's own, with new modification times (copytree's default keeps
    # them): the node copy is keyed by names, sizes and times, and other tests' replicas may have brought
    # the shared tiny checkpoint to this node already. A model no node holds yet.
    model = shutil.copytree(tiny_grok_checkpoint, tmp_path / "tiny", copy_function=shutil.copy)
    bind_weights(devcluster, namespace, "weights", model)
    body = tiny_grokd(NAME, {"engineArgs": ENGINE_ARGS, "nodeSelector": {"kubernetes.io/hostname": NODE}},
                      replicas=2)
    devcluster.apply([{**body, "metadata": {"name": NAME, "namespace": namespace}}])

    def ready() -> list[dict] | None:
        found = devcluster.get_json("pods", "-n", namespace, "-l", SELECTOR)["items"]
        found = [p for p in found if is_ready(p)]
        return found if len(found) == 2 else None

    pods = wait_for(ready, 900, interval=2, message="two Ready server pods")
    assert {p["spec"]["nodeName"] for p in pods} == {NODE}
    weights = [report(p)["weights"] for p in pods]
    model_bytes = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    assert [w["source"] for w in weights] == ["node", "node"], weights
    # One copied the whole model from the shared cache; the other waited for it and read nothing there.
    assert sorted(w["shared_bytes"] for w in weights) == [0, model_bytes], weights
    (path,) = {w["path"] for w in weights}
    node_copy = Path(path)
    assert node_copy.is_relative_to(devcluster.node_dir(NODE)), path
    assert sorted(p.name for p in node_copy.iterdir() if p.name != "grok-weights.json") == sorted(
        p.name for p in model.iterdir())
    # The operator marks the node (from the reports: the servers have no API access).
    def last_startup() -> dict | None:
        status = devcluster.get_json("grokdeployment", NAME, "-n", namespace).get("status") or {}
        return status.get("lastStartup")

    startup = wait_for(last_startup, 120, interval=1, message="status.lastStartup")
    assert startup["weightsSource"] == "node" and startup["weightsPath"] == path
    labels = wait_for(lambda: [k for k, v in devcluster.get_json("node", NODE)["metadata"]["labels"].items()
                               if k.startswith("models.grok.dev/") and v == "true"], 120, interval=1,
                      message="the node's model label")
    affinity = pods[0]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["preference"]["matchExpressions"][0]["key"] in labels
