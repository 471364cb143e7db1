"""A gRPC deadline or a client cancel aborts the engine request: nothing keeps generating for nobody."""

from __future__ import annotations

import time

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import ServerProcess


def long_request(info: pb.ModelInfo) -> pb.GenerateRequest:
    """As many tokens as the context allows: seconds of work on the CPU, far past the deadlines used."""
    return pb.GenerateRequest(
        text="Hello", stopping=pb.StoppingCriteria(max_new_tokens=info.max_model_len - 16, ignore_eos=True)
    )


def wait_engine_idle(server: ServerProcess, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if m["grok_requests_running"] == 0 and m["grok_requests_in_flight"] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not idle after {timeout} s: {m}")
        time.sleep(0.05)


def running_during_probe(stub: pb_grpc.GenerationServiceStub, server: ServerProcess) -> float:
    """The engine's running count sampled while a fresh probe request streams.

    The engine reports its batch size on every step, so this is 1 when only the probe runs and more if an
    earlier request were still being generated somewhere in the engine.
    """
    probe = stub.GenerateStream(
        pb.GenerateRequest(text="probe", stopping=pb.StoppingCriteria(max_new_tokens=400, ignore_eos=True)),
        timeout=120,
    )
    seen = []
    for i, _ in enumerate(probe):
        if i in (3, 6, 9):
            seen.append(server.metric("grok_requests_running"))
        if i == 9:
            probe.cancel()
            break
    return max(seen)


def count(server: ServerProcess, method: str, code: str) -> float:
    return server.metric(f'grok_requests_total{{code="{code}",method="{method}"}}')


def test_stream_deadline_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    before = count(grok_server_proc, "GenerateStream", "DEADLINE_EXCEEDED")
    received = 0
    with pytest.raises(grpc.RpcError) as e:
        for _ in stub.GenerateStream(long_request(model_info), timeout=0.5):
            received += 1
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert received > 0  # it was generating when the deadline hit
    wait_engine_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc) == 1
    wait_engine_idle(grok_server_proc)
    assert count(grok_server_proc, "GenerateStream", "DEADLINE_EXCEEDED") == before + 1


def test_unary_deadline_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    before = count(grok_server_proc, "Generate", "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(long_request(model_info), timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_engine_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc) == 1
    wait_engine_idle(grok_server_proc)
    assert count(grok_server_proc, "Generate", "DEADLINE_EXCEEDED") == before + 1


def test_client_cancel_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    before = count(grok_server_proc, "GenerateStream", "CANCELLED")
    call = stub.GenerateStream(long_request(model_info), timeout=120)
    for i, _ in enumerate(call):
        if i == 3:
            break
    call.cancel()
    assert call.code() == grpc.StatusCode.CANCELLED
    wait_engine_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc) == 1
    wait_engine_idle(grok_server_proc)
    # The probe was cancelled too: two more.
    assert count(grok_server_proc, "GenerateStream", "CANCELLED") == before + 2


def test_future_cancel_of_unary_call(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    before = count(grok_server_proc, "Generate", "CANCELLED")
    future = stub.Generate.future(long_request(model_info), timeout=120)
    deadline = time.monotonic() + 10
    while grok_server_proc.metric("grok_requests_running") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert grok_server_proc.metric("grok_requests_running") == 1
    assert future.cancel()
    wait_engine_idle(grok_server_proc)
    deadline = time.monotonic() + 5
    while count(grok_server_proc, "Generate", "CANCELLED") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(grok_server_proc, "Generate", "CANCELLED") == before + 1
