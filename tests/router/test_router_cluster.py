"""The front door on the path a request takes: a GrokDeployment's router pod in front of its server pods, all
run for real by the simulated cluster's pod runner, each at its own loopback address.

One GrokDeployment (two replicas of the tiny model, the router the operator adds by default) serves the
module's tests in order; the last ones change it (scale up, delete, kill). Whatever must be "still running"
at a moment is held there by the test (a replica's engine core SIGSTOPped), never by the machine's speed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grok_devcluster.cluster import DevCluster, is_ready
from grok_devcluster.local import parse_metrics
from grok_server.client import GrokClient
from grok_server.server.placement import descendants, process_title
from tests.operatorlib import OperatorProcess, bind_weights, tiny_grokd, wait_for
from tests.server.serverlib import EngineHold, reflect

pytestmark = pytest.mark.cluster

NAME = "fleet"
SERVICE = "grok.serving.v1.GenerationService"
SERVERS = f"app.kubernetes.io/name=grok-server,serving.grok.dev/deployment={NAME}"
ROUTERS = f"app.kubernetes.io/name=grok-router,serving.grok.dev/deployment={NAME}"
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(128 * 1024 * 1024), "--dtype", "float32",
               "--max-num-seqs", "8"]
MAX_HELD = 12
# A prefix of more than the router's 8 affinity blocks of text (8 x 64 bytes).
SHARED_PREFIX = "You are a careful assistant. " * 24


def grokd(replicas: int) -> dict:
    return tiny_grokd(NAME, {"drainSeconds": 120, "engineArgs": ENGINE_ARGS}, replicas=replicas,
                      router={"maxHeldRequests": MAX_HELD})


@dataclass
class Fleet:
    cluster: DevCluster
    ns: str
    router_ip: str

    @property
    def target(self) -> str:
        return f"{self.router_ip}:50051"

    @property
    def http(self) -> str:
        return f"http://{self.router_ip}:8080"

    def ready_servers(self) -> list[dict]:
        items = self.cluster.get_json("pods", "-n", self.ns, "-l", SERVERS)["items"]
        return [p for p in items if is_ready(p) and not p["metadata"].get("deletionTimestamp")]

    def router_metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())

    def served_by(self) -> dict[str, float]:
        """Calls each replica (pod name) answered OK, as the router counted them."""
        found = {}
        for key, value in self.router_metrics().items():
            if key.startswith("grok_router_upstream_requests_total{") and 'code="OK"' in key:
                found[key.split('replica="')[1].split('"')[0]] = value
        return found

    def decisions(self, reason: str) -> float:
        return self.router_metrics().get(f'grok_router_routing_decisions_total{{reason="{reason}"}}', 0.0)

    def known_ready(self) -> float:
        return self.router_metrics().get('grok_router_replicas{state="ready"}', -1)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def engine_pids(pod: dict) -> list[int]:
    main = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
    return [p for p in descendants(main) if "EngineCore" in process_title(p)]


def generate(stub: pb_grpc.GenerationServiceStub, text: str, tokens: int = 4) -> pb.GenerateResponse:
    return stub.Generate(pb.GenerateRequest(text=text, stopping=pb.StoppingCriteria(
        max_new_tokens=tokens, ignore_eos=True)), timeout=300)


@pytest.fixture(scope="module")
def fleet(devcluster: DevCluster, grok_operator: OperatorProcess,
          tiny_grok_checkpoint: Path) -> Iterator[Fleet]:
    ns = f"router-{os.getpid()}"
    devcluster.kubectl("create", "namespace", ns)
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    bind_weights(devcluster, ns, "weights", tiny_grok_checkpoint)
    devcluster.apply([{**grokd(2), "metadata": {"name": NAME, "namespace": ns}}])
    fleet = Fleet(devcluster, ns, "")
    wait_for(lambda: len(fleet.ready_servers()) == 2, 900, interval=2, message="two Ready server pods")

    def ready_router() -> dict | None:
        items = devcluster.get_json("pods", "-n", ns, "-l", ROUTERS)["items"]
        return next((p for p in items if is_ready(p)), None)

    router = wait_for(ready_router, 300, interval=1, message="a Ready router pod")
    fleet.router_ip = router["status"]["podIP"]
    wait_for(lambda: fleet.known_ready() == 2, 120, message="the router to know both replicas")
    yield fleet
    devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_router_pod_serves_the_api_health_and_reflection(fleet: Fleet) -> None:
    status = fleet.cluster.get_json("grokd", NAME, "-n", fleet.ns)["status"]
    assert status["endpoint"] == f"{NAME}.{fleet.ns}.svc:50051"
    assert fleet.router_ip.startswith("127.65.")
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).model == NAME
        answer = generate(stub, "hello")
        assert answer.usage.generated_tokens == 4 and answer.finish_reason == pb.FINISH_REASON_LENGTH
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
        for version in ("v1", "v1alpha"):
            names, files = reflect(channel, version, SERVICE)
            assert SERVICE in names and "grok/serving/v1/generation.proto" in files


def test_one_client_is_spread_over_every_ready_replica(fleet: Fleet) -> None:
    """One channel (one HTTP/2 connection, all a ClusterIP Service would give to one replica) reaches both."""
    before = fleet.served_by()
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for i in range(16):
            generate(stub, f"short {i}")  # under one block of prompt: no affinity, the least loaded
    spread = delta(before, fleet.served_by())
    names = {p["metadata"]["name"] for p in fleet.ready_servers()}
    assert set(spread) == names, spread
    assert sum(spread.values()) == 16 and min(spread.values()) >= 4, spread


def test_a_shared_prefix_sticks_to_one_replica_and_spills_when_it_is_overloaded(fleet: Fleet) -> None:
    before = fleet.served_by()
    affinity = fleet.decisions("affinity")
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for i in range(6):
            generate(stub, f"{SHARED_PREFIX} question {i}?")
        (home, count), = delta(before, fleet.served_by()).items()
        assert count == 6 and fleet.decisions("affinity") - affinity == 6
        # Overload the prefix's replica: its engine held, the streams sent to it stay in flight there.
        pod = next(p for p in fleet.ready_servers() if p["metadata"]["name"] == home)
        spilled_before = fleet.decisions("affinity_overloaded")
        streams = []
        with EngineHold(pids=engine_pids(pod)) as hold, ThreadPoolExecutor(8) as pool:
            hold.hold()
            in_flight = f'grok_router_replica_in_flight{{replica="{home}"}}'
            while fleet.decisions("affinity_overloaded") == spilled_before:
                assert len(streams) < 8, "the overloaded replica kept getting the prefix"
                request = pb.GenerateRequest(text=f"{SHARED_PREFIX} held {len(streams)}?",
                                             stopping=pb.StoppingCriteria(max_new_tokens=4))
                streams.append(pool.submit(lambda r=request: list(stub.GenerateStream(r, timeout=300))))
                sent = len(streams)
                wait_for(lambda n=sent: fleet.router_metrics().get(in_flight, 0) == n
                         or fleet.decisions("affinity_overloaded") > spilled_before, 60,
                         message="the stream to reach a replica")
            # The spilled call went to the other replica and completed while the home replica was held.
            wait_for(streams[-1].done, 120, message="the spilled stream to complete elsewhere")
            assert [m.usage.generated_tokens for m in streams[-1].result()][-1] == 4
            others = delta(before, fleet.served_by())
            assert others.get(home) == 6 and sum(v for k, v in others.items() if k != home) == 1, others
            hold.release()
            for stream in streams:
                assert stream.result(timeout=300)[-1].usage.generated_tokens == 4


def test_openai_completions_with_the_openai_package(fleet: Fleet) -> None:
    client = openai.OpenAI(base_url=f"{fleet.http}/v1", api_key="unused", max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == [NAME]
    answer = client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0, seed=1,
                                       logprobs=2, extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5
    assert len(answer.choices[0].logprobs.tokens) == 5
    again = client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == answer.choices[0].text  # greedy: the same text, wherever it ran
    chunks = list(client.completions.create(model=NAME, prompt=[1, 2, 3, 4], max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-2].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=NAME, prompt="x", max_tokens="many")  # type: ignore[arg-type]
    assert bad.value.status_code == 400 and bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=NAME, prompt="x", temperature=7)
    assert "temperature" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}])
    assert "chat template" in bad.value.body["message"]


def test_vllms_own_benchmark_client_runs_against_the_router(fleet: Fleet, tiny_grok_checkpoint: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.router.vllm_bench", "--backend", "openai", "--base-url", fleet.http,
         "--model", NAME, "--tokenizer", str(tiny_grok_checkpoint), "--dataset-name", "random",
         "--random-input-len", "32", "--random-output-len", "8", "--num-prompts", "16",
         "--max-concurrency", "4", "--ignore-eos", "--disable-tqdm"],
        check=False, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["completed"] == 16 and result["failed"] == 0, result
    assert result["total_output_tokens"] == 16 * 8


def test_clients_that_bypass_the_router_balance_over_the_servers_themselves(fleet: Fleet) -> None:
    """What `dns:///<name>-servers.<ns>.svc:50051` gives on a cluster (every Ready server pod's address), as
    an explicit address list here: there is no cluster DNS in the simulated cluster."""
    servers = fleet.ready_servers()
    target = "ipv4:" + ",".join(f"{p['status']['podIP']}:50051" for p in servers)

    def served() -> list[float]:
        return [parse_metrics(urllib.request.urlopen(f"http://{p['status']['podIP']}:9090/metrics",
                                                     timeout=30).read().decode()).get(
            'grok_requests_total{code="OK",method="Generate"}', 0.0) for p in servers]

    before = served()
    with GrokClient(target, timeout=300) as client:
        for i in range(8):
            assert client.generate(f"direct {i}", max_tokens=2, ignore_eos=True).usage.generated_tokens == 2
    # Each server counts a call just after answering it: polled.
    wait_for(lambda: sum(served()) - sum(before) == 8, 60, message="the servers to count the calls")
    assert all(after - was >= 2 for after, was in zip(served(), before, strict=True)), (before, served())


def test_a_replica_added_by_kubectl_scale_takes_traffic(fleet: Fleet) -> None:
    fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "3")
    wait_for(lambda: len(fleet.ready_servers()) == 3, 900, interval=2, message="a third Ready replica")
    # The router follows the pods' Ready condition, not a scrape or a resolver's refresh.
    wait_for(lambda: fleet.known_ready() == 3, 60, message="the router to know the third replica")
    before = fleet.served_by()
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for i in range(12):
            generate(stub, f"more {i}")
    spread = delta(before, fleet.served_by())
    assert len(spread) == 3 and min(spread.values()) >= 2, spread


def test_a_deleted_replica_leaves_the_router_before_its_drain_ends(fleet: Fleet) -> None:
    victim = fleet.ready_servers()[0]
    name = victim["metadata"]["name"]
    with grpc.insecure_channel(f"{victim['status']['podIP']}:50051") as direct, \
            EngineHold(pids=engine_pids(victim)) as hold, ThreadPoolExecutor(1) as pool:
        # A stream in flight on the victim, held there: its drain cannot end before the test lets it.
        hold.hold()
        stub = pb_grpc.GenerationServiceStub(direct)
        held = pool.submit(lambda: list(stub.GenerateStream(pb.GenerateRequest(
            text="draining", stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True)), timeout=300)))
        wait_for(lambda: parse_metrics(urllib.request.urlopen(
            f"http://{victim['status']['podIP']}:9090/metrics", timeout=30).read().decode()).get(
            "grok_requests_in_flight") == 1, 60, message="the stream to be admitted")
        fleet.cluster.kubectl("delete", "pod", name, "-n", fleet.ns, "--wait=false")
        wait_for(lambda: fleet.known_ready() == 2, 60, message="the router to drop the deleted replica")
        assert not held.done(), "the victim's drain is still under way (its stream is held)"
        before = fleet.served_by()
        with grpc.insecure_channel(fleet.target) as channel:
            front = pb_grpc.GenerationServiceStub(channel)
            for i in range(6):
                generate(front, f"after delete {i}")
        assert name not in delta(before, fleet.served_by())
        hold.release()
        assert held.result(timeout=300)[-1].usage.generated_tokens == 4  # the drain let it finish


class Load:
    """Clients streaming through the router without pause, each call's outcome recorded; every call has a
    generous deadline, so a hang shows as DEADLINE_EXCEEDED, never as a stuck test."""

    def __init__(self, fleet: Fleet, workers: int) -> None:
        self.fleet = fleet
        self.outcomes: list[tuple[str, str]] = []  # (code name, details)
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(workers)
        self.workers = [self.pool.submit(self._run, w) for w in range(workers)]

    def _run(self, worker: int) -> None:
        with grpc.insecure_channel(self.fleet.target) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            i = 0
            while not self.stop.is_set():
                i += 1
                request = pb.GenerateRequest(text=f"load {worker}-{i}", stopping=pb.StoppingCriteria(
                    max_new_tokens=8, ignore_eos=True))
                try:
                    messages = list(stub.GenerateStream(request, timeout=300))
                    assert messages[-1].usage.generated_tokens == 8
                    self.outcomes.append(("OK", ""))
                except grpc.RpcError as err:
                    self.outcomes.append((err.code().name, err.details() or ""))

    def wait_more(self, count: int, message: str) -> None:
        reached = len(self.outcomes) + count
        wait_for(lambda: len(self.outcomes) >= reached, 600, message=message)

    def finish(self) -> list[tuple[str, str]]:
        self.stop.set()
        for worker in self.workers:
            worker.result(timeout=600)  # nothing hangs
        self.pool.shutdown()
        return self.outcomes


def test_under_load_a_scale_down_and_a_rolling_update_lose_no_request(fleet: Fleet) -> None:
    """Replicas leave gracefully (not Ready at once, then drained): the router stops sending them calls, the
    calls on them finish, and a call a draining server refuses is retried elsewhere. Nothing fails."""
    load = Load(fleet, 3)
    try:
        load.wait_more(6, "the load to run")
        fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "1")
        wait_for(lambda: len(fleet.cluster.get_json("pods", "-n", fleet.ns, "-l", SERVERS)["items"]) == 1,
                 600, interval=2, message="the scale-down to 1 to finish (pods drained and gone)")
        load.wait_more(6, "the load to go on with one replica")
        old = {p["metadata"]["name"] for p in fleet.ready_servers()}
        patch = {"spec": {"server": {"engineArgs": [*ENGINE_ARGS, "--max-num-seqs", "6"]}}}
        fleet.cluster.kubectl("patch", "grokd", NAME, "-n", fleet.ns, "--type", "merge",
                              "-p", json.dumps(patch))

        def rolled() -> bool:
            pods = fleet.cluster.get_json("pods", "-n", fleet.ns, "-l", SERVERS)["items"]
            return len(pods) == 1 and is_ready(pods[0]) and pods[0]["metadata"]["name"] not in old

        wait_for(rolled, 900, interval=2, message="the rolling update to replace the replica")
        load.wait_more(6, "the load to go on after the update")
    finally:
        outcomes = load.finish()
    failed = [o for o in outcomes if o[0] != "OK"]
    assert not failed, failed
    assert len(outcomes) >= 18


def in_flight_on(fleet: Fleet, replica: str) -> float:
    return fleet.router_metrics().get(f'grok_router_replica_in_flight{{replica="{replica}"}}', 0.0)


def test_a_killed_replica_fails_only_its_streams_with_output_and_nothing_hangs(fleet: Fleet) -> None:
    """A replica dies (SIGKILL) with two kinds of calls on it, both held there by the test (its engine
    stopped): a stream that had sent tokens fails UNAVAILABLE (output began: never retried, the client
    decides), and calls with no output yet are retried on the other replica and complete."""
    fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "2")
    wait_for(lambda: len(fleet.ready_servers()) == 2 and fleet.known_ready() == 2, 900, interval=2,
             message="two Ready replicas")
    servers = {p["metadata"]["name"]: p for p in fleet.ready_servers()}
    holds = {name: EngineHold(pids=engine_pids(pod)) for name, pod in servers.items()}
    channel = grpc.insecure_channel(fleet.target)
    stub = pb_grpc.GenerationServiceStub(channel)
    load = None
    try:
        # The witness: a long stream, stopped mid-output by holding both engines once its first tokens
        # arrived; the router's in-flight gauge says which replica has it. Should it have finished before
        # the hold (it is 1000 tokens long: the context is 1024), another is started.
        for attempt in range(5):
            long_stream = pb.StoppingCriteria(max_new_tokens=1000, ignore_eos=True)
            witness = stub.GenerateStream(pb.GenerateRequest(text=f"witness {attempt}", stopping=long_stream),
                                          timeout=900)
            next(witness)  # its first message reached the client: output began
            for hold in holds.values():
                hold.hold()
            serving = [name for name in servers if in_flight_on(fleet, name) >= 1]
            if len(serving) == 1:
                break
            for hold in holds.values():
                hold.release()
            list(witness)
        else:
            pytest.fail("no witness stream was still in flight when the engines were held")
        victim = serving[0]
        for name, hold in holds.items():
            if name != victim:
                hold.release()
        # Calls pile up on the held victim with no output; the other replica serves the rest.
        load = Load(fleet, 4)
        wait_for(lambda: in_flight_on(fleet, victim) >= 2, 300, message="a call without output on the victim")
        main = int(servers[victim]["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
        os.killpg(main, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as lost:
            list(witness)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, lost.value
        # Calls sent to the dead replica before its pod turns not-Ready find no server: retried elsewhere.
        load.wait_more(8, "the load to go on after the kill")
    finally:
        for hold in holds.values():
            with contextlib.suppress(ProcessLookupError):
                hold.release()
        outcomes = load.finish() if load is not None else []
        channel.close()
    failed = [o for o in outcomes if o[0] != "OK"]
    assert not failed, failed  # no output yet when the victim died: each was retried and completed
    assert len(outcomes) >= 8


def test_at_zero_replicas_calls_are_held_until_a_replica_is_ready(fleet: Fleet) -> None:
    """Scaled to zero: calls wait in the router (none fails, none is lost or duplicated), beyond the bound
    they are refused at once, a caller's own deadline still wins; one replica starting serves them all."""
    fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "0")
    wait_for(lambda: not fleet.cluster.get_json("pods", "-n", fleet.ns, "-l", SERVERS)["items"]
             and fleet.known_ready() == 0, 600, interval=2, message="zero replicas")
    held_key = "grok_router_requests_held"
    prompts = [f"held {i}" for i in range(10)]
    with grpc.insecure_channel(fleet.target) as channel, ThreadPoolExecutor(16) as pool:
        stub = pb_grpc.GenerationServiceStub(channel)

        def stream(text: str, timeout: float) -> list[pb.GenerateResponse]:
            return list(stub.GenerateStream(pb.GenerateRequest(text=text, sampling=pb.SamplingParams(
                temperature=0), stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True)),
                timeout=timeout))

        calls = [pool.submit(stream, text, 900) for text in prompts]
        wait_for(lambda: fleet.router_metrics().get(held_key) == 10, 120, message="ten calls held")
        # A caller whose deadline passes while held gets DEADLINE_EXCEEDED (no replica is started until
        # it has: the test holds the scale-up).
        with pytest.raises(grpc.RpcError) as short:
            stream("impatient", 3)
        assert short.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Beyond the bound: refused at once, with a retry hint; the ones within it wait with the others.
        extra = [pool.submit(stream, f"extra {i}", 900) for i in range(MAX_HELD - 10)]
        wait_for(lambda: fleet.router_metrics().get(held_key) == MAX_HELD, 120, message="the bound reached")
        with pytest.raises(grpc.RpcError) as refused:
            stream("one too many", 900)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after-ms", "10000") in (refused.value.trailing_metadata() or ())
        assert not any(c.done() for c in calls + extra), "held calls wait, whatever the machine's speed"
        assert fleet.router_metrics().get("grok_router_oldest_held_seconds", 0) > 0

        fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "1")
        answers = [c.result(timeout=900) for c in calls + extra]
    assert all(a[-1].usage.generated_tokens == 8 for a in answers)
    assert fleet.router_metrics().get(held_key) == 0
    # The right tokens: what the replica answers now for the same prompt (greedy), once each.
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        for text, answer in zip(prompts, answers, strict=False):
            request = pb.GenerateRequest(text=text, sampling=pb.SamplingParams(temperature=0),
                                         stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True))
            again = stub.Generate(request, timeout=300)
            assert [t for m in answer for t in m.token_ids] == list(again.token_ids)


def test_a_router_stopping_while_calls_are_held_fails_them_retryably(fleet: Fleet) -> None:
    fleet.cluster.kubectl("scale", "grokd", NAME, "-n", fleet.ns, "--replicas", "0")
    wait_for(lambda: not fleet.cluster.get_json("pods", "-n", fleet.ns, "-l", SERVERS)["items"]
             and fleet.known_ready() == 0, 600, interval=2, message="zero replicas")
    router = next(p for p in fleet.cluster.get_json("pods", "-n", fleet.ns, "-l", ROUTERS)["items"]
                  if p["status"].get("podIP") == fleet.router_ip)
    with grpc.insecure_channel(fleet.target) as channel, ThreadPoolExecutor(3) as pool:
        stub = pb_grpc.GenerationServiceStub(channel)
        calls = [pool.submit(lambda i=i: list(stub.GenerateStream(pb.GenerateRequest(
            text=f"held {i}", stopping=pb.StoppingCriteria(max_new_tokens=4)), timeout=900)))
            for i in range(3)]
        wait_for(lambda: fleet.router_metrics().get("grok_router_requests_held") == 3, 120,
                 message="three calls held")
        fleet.cluster.kubectl("delete", "pod", router["metadata"]["name"], "-n", fleet.ns, "--wait=false")
        for call in calls:
            with pytest.raises(grpc.RpcError) as ended:
                call.result(timeout=300)  # never a hang
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value


def test_with_api_keys_only_named_tenants_call_within_limits_and_only_the_router_reaches_servers(
        fleet: Fleet) -> None:
    """spec.router.auth and .limits on the running GrokDeployment: the router asks for a key (a key added to
    or removed from the Secret counts without a router restart), a tenant over its token budget gets 429
    while another is served, and a server refuses a call that does not come through the router."""
    cluster, ns = fleet.cluster, fleet.ns
    # Open until now, and said so once.
    reasons = [e["reason"] for e in cluster.get_json("events", "-n", ns, "--field-selector",
                                                      f"involvedObject.name={NAME}")["items"]]
    assert "FrontDoorOpen" in reasons

    def keys(entries: dict[str, str]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "grok-keys", "namespace": ns},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in entries.items()}}

    cluster.apply([keys({"team-a": "sk-team-a-1", "team-b": "sk-team-b-1"})])
    body = {**grokd(1), "metadata": {"name": NAME, "namespace": ns}}
    body["spec"]["router"].update(auth={"secretName": "grok-keys"},
                                  limits={"tenants": {"team-b": {"generatedTokensPerMinute": 8}}})
    cluster.apply([body])

    def network_policy() -> dict | None:
        found = cluster.kubectl("get", "networkpolicy", f"{NAME}-servers", "-n", ns, "-o", "json",
                                check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    policy = wait_for(network_policy, 300, interval=1, message="the servers' NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "serving.grok.dev/deployment": NAME, "app.kubernetes.io/name": "grok-router"}}}]

    def closed_router() -> dict | None:
        for p in cluster.get_json("pods", "-n", ns, "-l", ROUTERS)["items"]:
            if is_ready(p) and "--api-keys-dir" in p["spec"]["containers"][0]["args"] \
                    and not p["metadata"].get("deletionTimestamp"):
                return p
        return None

    def closed_servers() -> list[dict]:
        return [p for p in fleet.ready_servers() if "--auth-token-file" in p["spec"]["containers"][0]["args"]]

    router = wait_for(closed_router, 900, interval=2, message="a router with keys")
    fleet.router_ip = router["status"]["podIP"]
    wait_for(lambda: len(closed_servers()) == 1 and fleet.known_ready() == 1, 900, interval=2,
             message="a server that takes calls only from the router")

    def completion(key: str | None, tokens: int = 4) -> openai.types.Completion:
        client = openai.OpenAI(base_url=f"{fleet.http}/v1", api_key=key or "none", max_retries=0, timeout=300)
        return client.completions.create(model=NAME, prompt="front door", max_tokens=tokens,
                                         extra_body={"ignore_eos": True})

    # No key, a wrong key: 401 in OpenAI's shape; gRPC alike.
    for wrong in (None, "sk-nobody"):
        with pytest.raises(openai.AuthenticationError):
            completion(wrong)
    with grpc.insecure_channel(fleet.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            generate(stub, "no key")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.Generate(pb.GenerateRequest(text="with a key", stopping=pb.StoppingCriteria(
            max_new_tokens=4, ignore_eos=True)), metadata=[("authorization", "Bearer sk-team-a-1")],
            timeout=300)
        assert answer.usage.generated_tokens == 4
    assert completion("sk-team-a-1").usage.completion_tokens == 4  # the openai package, unchanged

    # A key added to the Secret works, a removed one stops working: no router restart.
    router_uid = closed_router()["metadata"]["uid"]
    cluster.kubectl("replace", "-f", "-", input=json.dumps(
        keys({"team-a.2": "sk-team-a-2", "team-b": "sk-team-b-1"})))

    def works(key: str) -> bool:
        try:
            return completion(key).usage.completion_tokens == 4
        except openai.AuthenticationError:
            return False

    wait_for(lambda: works("sk-team-a-2"), 300, interval=2, message="the added key to work")
    wait_for(lambda: not works("sk-team-a-1"), 300, interval=2, message="the removed key to stop working")
    assert closed_router()["metadata"]["uid"] == router_uid

    # team-b's budget is 8 generated tokens a minute: 16 spend it; the next call waits for the refill (429,
    # Retry-After from the bucket) while team-a is served.
    assert completion("sk-team-b-1", tokens=16).usage.completion_tokens == 16
    with pytest.raises(openai.RateLimitError) as limited:
        completion("sk-team-b-1")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert completion("sk-team-a-2").usage.completion_tokens == 4

    # Past the router: a server refuses a call without the router's credential, and takes it with it.
    (server,) = closed_servers()
    token = base64.b64decode(cluster.get_json("secret", f"{NAME}-upstream-token", "-n", ns)["data"]["token"])
    with grpc.insecure_channel(f"{server['status']['podIP']}:50051") as direct:
        stub = pb_grpc.GenerationServiceStub(direct)
        with pytest.raises(grpc.RpcError) as bypass:
            generate(stub, "around the front door")
        assert bypass.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as with_a_key:
            stub.Generate(pb.GenerateRequest(text="a caller's key", stopping=pb.StoppingCriteria(
                max_new_tokens=2)), metadata=[("authorization", "Bearer sk-team-a-2")], timeout=300)
        assert with_a_key.value.code() == grpc.StatusCode.UNAUTHENTICATED  # callers' keys open no server
        assert stub.Generate(pb.GenerateRequest(text="the router's credential", stopping=pb.StoppingCriteria(
            max_new_tokens=2, ignore_eos=True)), metadata=[("authorization", f"Bearer {token.decode()}")],
            timeout=300).usage.generated_tokens == 2
