"""Metrics move as requests run; 40 concurrent streams all complete with the right token counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import EngineHold, ServerProcess, wait_idle, wait_metric

CONTRACT = (
    "grok_requests_waiting",
    "grok_requests_running",
    "grok_requests_in_flight",
    "grok_max_concurrent_requests",
    "grok_kv_cache_usage_ratio",
    "grok_server_ready",
    "grok_prompt_tokens_total",
    "grok_generation_tokens_total",
    "grok_time_to_first_token_seconds_bucket",
    "grok_time_to_first_token_seconds_count",
    "grok_inter_token_latency_seconds_bucket",
    "grok_inter_token_latency_seconds_sum",
    "grok_request_duration_seconds_count",
    "grok_requests_total",
    "grok_build_info",
)


def test_metric_names_are_the_documented_contract(
    stub: pb_grpc.GenerationServiceStub, grok_server_proc: ServerProcess
) -> None:
    # grok_requests_total has a series per method and status only once a call has ended with it.
    stub.Tokenize(pb.TokenizeRequest(text="hello"), timeout=30)
    names = {sample.split("{")[0] for sample in grok_server_proc.metrics()}
    for name in CONTRACT:
        assert name in names, f"{name} missing from /metrics"
    assert all(n.startswith("grok_") for n in names), sorted(n for n in names if not n.startswith("grok_"))
    assert grok_server_proc.metric("grok_max_concurrent_requests") == 64


def test_counters_and_histograms_move_with_a_request(
    stub: pb_grpc.GenerationServiceStub, grok_server_proc: ServerProcess
) -> None:
    before = grok_server_proc.metrics()
    resp = stub.Generate(
        pb.GenerateRequest(
            text="Hello there", stopping=pb.StoppingCriteria(max_new_tokens=10, ignore_eos=True)
        ),
        timeout=60,
    )
    after = grok_server_proc.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("grok_generation_tokens_total") == 10
    assert delta("grok_prompt_tokens_total") == resp.usage.prompt_tokens
    assert delta("grok_time_to_first_token_seconds_count") == 1
    assert delta("grok_inter_token_latency_seconds_count") == 9
    assert delta("grok_request_duration_seconds_count") == 1
    assert delta('grok_requests_total{code="OK",method="Generate"}') == 1
    assert delta("grok_time_to_first_token_seconds_sum") > 0
    assert after["grok_requests_in_flight"] == 0
    assert after["grok_requests_running"] == 0

    # A refused call is an outcome, not a latency: under overload, instant refusals would drag the
    # duration quantiles toward zero just when the server is saturated.
    with pytest.raises(grpc.RpcError) as refused:
        stub.Generate(pb.GenerateRequest(text=""), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The server sends a refusal before it counts it: wait for the count, the last thing it does for a call.
    invalid = 'grok_requests_total{code="INVALID_ARGUMENT",method="Generate"}'
    wait_metric(grok_server_proc, invalid, after.get(invalid, 0.0) + 1)
    later = grok_server_proc.metrics()
    assert later["grok_request_duration_seconds_count"] == after["grok_request_duration_seconds_count"]


def test_gauges_rise_under_load_and_fall_back(
    stub: pb_grpc.GenerationServiceStub, grok_server_proc: ServerProcess
) -> None:
    server, n = grok_server_proc, 6
    wait_idle(server)
    cancelled = 'grok_requests_total{code="CANCELLED",method="GenerateStream"}'
    before = server.metric(cancelled)
    req = pb.GenerateRequest(text="Load", stopping=pb.StoppingCriteria(max_new_tokens=300, ignore_eos=True))
    with EngineHold(server) as engine:
        # All admitted while the engine is held, so that they start together and none is near its end when
        # the last one has its first token.
        engine.hold()
        calls = [stub.GenerateStream(req, timeout=300) for _ in range(n)]
        wait_metric(server, "grok_requests_in_flight", n)
        engine.release()
        for call in calls:  # two messages each: the engine's figures of a step with all of them are recorded
            next(call)
            next(call)
        engine.hold()  # none can finish: the gauges stay those of a step with all of them
        loaded = server.metrics()
        for call in calls:
            call.cancel()
        engine.release()
    assert loaded["grok_requests_in_flight"] == n
    assert loaded["grok_requests_running"] == n
    assert 0 < loaded["grok_kv_cache_usage_ratio"] <= 1
    assert all(call.code() == grpc.StatusCode.CANCELLED for call in calls)
    wait_metric(server, cancelled, before + n)  # counted CANCELLED (not OK): they were all still running
    idle = wait_idle(server)
    assert idle["grok_requests_waiting"] == 0
    assert idle["grok_kv_cache_usage_ratio"] == 0


def test_forty_concurrent_streams_complete(grok_server_proc: ServerProcess) -> None:
    n = 40

    biggest_message = 0

    async def one(stub: pb_grpc.GenerationServiceStub, i: int) -> tuple[int, int, int, int]:
        nonlocal biggest_message
        want = 20 + i % 13
        req = pb.GenerateRequest(
            text=f"Stream number {i}",
            request_id=f"stream-{i}",
            sampling=pb.SamplingParams(temperature=0.8, seed=i),
            stopping=pb.StoppingCriteria(max_new_tokens=want, ignore_eos=True),
        )
        tokens = 0
        last = pb.GenerateResponse()
        async for part in stub.GenerateStream(req, timeout=300):
            tokens += len(part.token_ids)
            biggest_message = max(biggest_message, len(part.token_ids))
            assert part.request_id == f"stream-{i}"
            last = part
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        return want, tokens, last.usage.generated_tokens, i

    async def main(engine: EngineHold) -> list[tuple[int, int, int, int]]:
        async with grpc.aio.insecure_channel(grok_server_proc.target) as ch:
            stub = pb_grpc.GenerationServiceStub(ch)
            # All admitted while the engine is held: they are surely in flight together, whatever the speed
            # of the machine, and those admitted with 8 or more in flight stream several tokens a message.
            engine.hold()
            streams = [asyncio.create_task(one(stub, i)) for i in range(n)]
            await asyncio.to_thread(wait_metric, grok_server_proc, "grok_requests_in_flight", n)
            engine.release()
            return await asyncio.gather(*streams)

    wait_idle(grok_server_proc)
    before = grok_server_proc.metric("grok_generation_tokens_total")
    with EngineHold(grok_server_proc) as engine:
        results = asyncio.run(main(engine))
    assert len(results) == n
    for want, got, usage, i in results:
        assert got == usage == want, f"stream {i}: wanted {want}, got {got} (usage {usage})"
    assert grok_server_proc.metric("grok_generation_tokens_total") - before == sum(r[0] for r in results)
    # --stream-interval auto: with dozens of streams in flight, messages carry several tokens each.
    assert biggest_message > 1


def test_concurrent_seeded_requests_are_reproducible(grok_server_proc: ServerProcess) -> None:
    # The same seed gives the same tokens whatever else shares the batch.
    req = pb.GenerateRequest(
        text="Seeded",
        sampling=pb.SamplingParams(temperature=1.0, seed=42),
        stopping=pb.StoppingCriteria(max_new_tokens=16, ignore_eos=True),
    )
    wait_idle(grok_server_proc)
    with grpc.insecure_channel(grok_server_proc.target) as ch, EngineHold(grok_server_proc) as engine:
        stub = pb_grpc.GenerationServiceStub(ch)
        # Admitted while the engine is held, the eight surely share its batches.
        engine.hold()
        futures = [stub.Generate.future(req, timeout=300) for _ in range(8)]
        wait_metric(grok_server_proc, "grok_requests_in_flight", 8)
        engine.release()
        results = [list(f.result(timeout=300).token_ids) for f in futures]
    assert len(results) == 8 and len(results[0]) == 16
    assert all(r == results[0] for r in results)


def test_server_and_engine_core_stay_off_the_workers_cpus(grok_server_proc: ServerProcess) -> None:
    """vLLM binds the process that runs the model (its CPU worker, or at one rank the engine core that the
    model runs in) to some cores; the server moves everything else to the others, so that under load they
    never preempt the model's compute (--cpu-affinity auto: the shared test server has it)."""
    import os

    from grok_server.server.placement import compute_processes, descendants, is_engine_worker

    root = grok_server_proc.proc.pid
    allowed = os.sched_getaffinity(0)
    tree = [root, *descendants(root)]
    workers = sorted(compute_processes(tree))
    assert len(allowed) >= 2, "this check needs a machine with two or more CPUs"
    assert len(workers) == 1, f"expected one process running the model in {tree}"
    assert not any(is_engine_worker(p) for p in tree), "at one rank the model runs in the engine core"
    worker_cpus = os.sched_getaffinity(workers[0])
    assert worker_cpus < allowed, f"vLLM bound the worker to {worker_cpus} of {allowed}"
    for pid in tree:
        if pid in workers:
            continue
        for task in Path(f"/proc/{pid}/task").iterdir():
            tid = int(task.name)
            cpus = os.sched_getaffinity(tid)
            assert cpus == allowed - worker_cpus, f"thread {tid} of process {pid} may run on {cpus}"
    assert "CPU placement: this server and" in grok_server_proc.log()
