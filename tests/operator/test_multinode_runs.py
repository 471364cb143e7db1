"""A multi-node replica that runs: a GrokDeployment planned as two pipeline stages becomes a LeaderWorkerSet
group (the real LWS controller and webhooks) whose two pods the pod runner starts for real: grok-server as
the leader (node 0) and grok-server-worker (node 1), the tiny model split across them. Requests go through
the GrokDeployment's router to the leader; a worker that dies takes its group down, and the group LWS
recreates serves again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.cluster import DevCluster, is_ready
from tests.operatorlib import OperatorProcess, bind_weights, tiny_grokd, wait_for

pytestmark = pytest.mark.cluster

NAME = "duo"
GROUP = "leaderworkerset.sigs.k8s.io"
ROUTERS = f"app.kubernetes.io/name=grok-router,serving.grok.dev/deployment={NAME}"
# Pipeline parallel on vLLM's CPU backend needs its compile warm-up (no --enforce-eager: see
# tests/model/test_across_nodes.py); fp32 as the dtype field, which leader and worker both get.
ENGINE_ARGS = ["--kv-cache-memory-bytes", str(128 * 1024 * 1024), "--max-num-seqs", "4"]
PROMPT = [5, 17, 300, 42, 999, 12, 77, 8]


@dataclass
class Duo:
    cluster: DevCluster
    ns: str

    def group(self) -> list[dict]:
        return list(self.cluster.get_json("pods", "-n", self.ns, "-l", f"{GROUP}/name={NAME}-group")["items"])

    def running_group(self) -> dict[str, dict] | None:
        """The group's pods by worker index, once both are Ready and none is going."""
        pods = [p for p in self.group() if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != 2 or not all(is_ready(p) for p in pods):
            return None
        return {p["metadata"]["labels"][f"{GROUP}/worker-index"]: p for p in pods}

    def router_target(self) -> str:
        def ready_router() -> dict | None:
            items = self.cluster.get_json("pods", "-n", self.ns, "-l", ROUTERS)["items"]
            return next((p for p in items if is_ready(p)), None)

        return f"{wait_for(ready_router, 300, interval=1, message='a Ready router')['status']['podIP']}:50051"

    def status(self) -> dict:
        return self.cluster.get_json("grokd", NAME, "-n", self.ns).get("status", {})

    def logs(self, pod: dict) -> str:
        done = self.cluster.kubectl("logs", pod["metadata"]["name"], "-n", self.ns, check=False)
        return done.stdout + done.stderr


def greedy(target: str) -> list[int]:
    """Through the router (which waits for a Ready replica, holding the call): 8 greedy tokens."""
    with grpc.insecure_channel(target) as channel:
        answer = pb_grpc.GenerationServiceStub(channel).Generate(pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=PROMPT), sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True), token_ids_only=True),
            timeout=900)
    assert answer.usage.generated_tokens == 8
    return list(answer.token_ids)


@pytest.fixture(scope="module")
def duo(devcluster: DevCluster, grok_operator: OperatorProcess, tiny_grok_checkpoint: Path) -> Iterator[Duo]:
    ns = f"duo-{os.getpid()}"
    devcluster.kubectl("create", "namespace", ns)
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    bind_weights(devcluster, ns, "weights", tiny_grok_checkpoint)
    body = tiny_grokd(NAME, {"drainSeconds": 30, "engineArgs": ENGINE_ARGS},
                      parallelism={"tensor": 1, "pipeline": 2})
    body["spec"]["model"]["dtype"] = "float32"
    devcluster.apply([{**body, "metadata": {"name": NAME, "namespace": ns}}])
    yield Duo(devcluster, ns)
    devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_two_stage_replica_runs_across_its_group_and_comes_back_whole_after_a_worker_dies(duo: Duo) -> None:
    pods = wait_for(duo.running_group, 900, interval=2, message="the group's two pods Ready")
    leader, worker = pods["0"], pods["1"]
    assert leader["spec"]["nodeName"] and worker["spec"]["nodeName"]
    assert leader["status"]["podIP"] != worker["status"]["podIP"]
    plan = duo.status()["plan"]
    assert (plan["tensorParallelSize"], plan["pipelineParallelSize"], plan["nodesPerReplica"]) == (1, 2, 2)

    target = duo.router_target()
    first = greedy(target)
    # The worker really holds the second stage: its engine rank joined the leader's rendezvous.
    assert "node 1 of 2: 1 engine rank(s) ready" in duo.logs(worker)
    wait_for(lambda: duo.status().get("phase") == "Ready" and duo.status().get("readyReplicas") == 1, 300,
             message="the GrokDeployment Ready with one group")

    # The worker node dies (its process group killed, as a node loss or OOM would): vLLM cannot re-admit a
    # rank, so the group goes down whole and LWS recreates it (RecreateGroupAfterStart).
    main = int(worker["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
    os.killpg(main, signal.SIGKILL)
    old = {leader["metadata"]["uid"], worker["metadata"]["uid"]}

    def recreated() -> dict[str, dict] | None:
        group = duo.running_group()
        return group if group and not old & {p["metadata"]["uid"] for p in group.values()} else None

    wait_for(recreated, 900, interval=2, message="the whole group recreated and Ready")
    # Same weights, same stages: the same greedy tokens as before.
    assert greedy(target) == first
    wait_for(lambda: duo.status().get("phase") == "Ready" and duo.status().get("readyReplicas") == 1, 300,
             message="the GrokDeployment Ready again")
