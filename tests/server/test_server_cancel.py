"""A gRPC deadline or a client cancel aborts the engine request: nothing keeps generating for nobody.

Each call to be cut short is held by the test (the engine core stopped, `EngineHold`) while it surely runs, so
that it is still running when its deadline or cancel comes whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster.local import wait
from tests.server.serverlib import EngineHold, ServerProcess, wait_idle, wait_metric

# Long enough for a call to reach the engine on a loaded machine; then it is held until its deadline.
DEADLINE_SECONDS = 15.0


def long_request(info: pb.ModelInfo, text: str = "Hello") -> pb.GenerateRequest:
    """As many tokens as the context allows."""
    return pb.GenerateRequest(
        text=text, stopping=pb.StoppingCriteria(max_new_tokens=info.max_model_len - 16, ignore_eos=True)
    )


def count(server: ServerProcess, method: str, code: str) -> float:
    return server.metric(f'grok_requests_total{{code="{code}",method="{method}"}}')


def wait_count(server: ServerProcess, method: str, code: str, value: float) -> None:
    """The server frees a request's slot a moment before it counts the outcome: poll the counter."""
    wait_metric(server, f'grok_requests_total{{code="{code}",method="{method}"}}', value)


def wait_generating(server: ServerProcess, tokens_before: float, timeout: float = 60) -> None:
    """Until the engine has generated a token since `tokens_before` (of grok_generation_tokens_total): the
    only request in flight is in the engine's batch. (The running gauge may still show a finished request's
    last step until the engine steps again.)"""
    wait(lambda: server.metric("grok_generation_tokens_total") > tokens_before, timeout, "a token generated",
         interval=0.02)


def running_during_probe(
    stub: pb_grpc.GenerationServiceStub, server: ServerProcess, info: pb.ModelInfo
) -> float:
    """The engine's running count at a step of a fresh probe request, read while the probe surely runs.

    The engine reports its batch size on every step, so this is 1 when only the probe runs and more if an
    earlier request were still being generated somewhere in the engine.
    """
    before = count(server, "GenerateStream", "CANCELLED")
    with EngineHold(server) as engine:
        probe = stub.GenerateStream(long_request(info, "probe"), timeout=300)
        # Two messages: the engine's figures of a step with the probe in its batch have been recorded.
        next(probe)
        next(probe)
        engine.hold()  # the probe cannot finish: the figures stay those of a step it was part of
        running = server.metric("grok_requests_running")
        probe.cancel()
        engine.release()
    # Counted CANCELLED, so it was still running when read (a probe that had finished would count OK).
    wait_count(server, "GenerateStream", "CANCELLED", before + 1)
    return running


# A client of its own, so that the test can stop it: see expire_on_the_server.
DEADLINE_CLIENT = """
import sys

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

target, method, timeout, max_tokens = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
stopping = pb.StoppingCriteria(max_new_tokens=max_tokens, ignore_eos=True)
request = pb.GenerateRequest(text="Hello", stopping=stopping)
with grpc.insecure_channel(target) as channel:
    stub = pb_grpc.GenerationServiceStub(channel)
    try:
        if method == "GenerateStream":
            call = stub.GenerateStream(request, timeout=timeout)
            for _ in call:
                pass
        else:
            stub.Generate(request, timeout=timeout)
        print("OK", flush=True)
    except grpc.RpcError as e:
        print(e.code().name, flush=True)
"""


def expire_on_the_server(server: ServerProcess, method: str, info: pb.ModelInfo) -> str:
    """A call with a deadline, held in the engine until that deadline passes on the server; returns the status
    its client saw.

    The client runs in a process of its own, stopped by the test once the call is in the engine, so that it
    is the server's deadline that ends the call. (A running client cancels at its own deadline, which comes
    before the server's by the time the request took to arrive; the server counts such a call CANCELLED
    unless that was under 50 ms, which a loaded machine does not promise.)
    """
    before = count(server, method, "DEADLINE_EXCEEDED")
    tokens = server.metric("grok_generation_tokens_total")
    args = [server.target, method, str(DEADLINE_SECONDS), str(info.max_model_len - 16)]
    client = subprocess.Popen(
        [sys.executable, "-c", DEADLINE_CLIENT, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        with EngineHold(server) as engine:
            wait_generating(server, tokens)  # the call is in the engine's batch
            engine.hold()  # and cannot finish before its deadline
            os.kill(client.pid, signal.SIGSTOP)  # nor can its client cancel it
            wait_count(server, method, "DEADLINE_EXCEEDED", before + 1)
            os.kill(client.pid, signal.SIGCONT)
            engine.release()
        out, _ = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
            client.wait(10)
    return out.strip()


def test_stream_deadline_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    wait_idle(grok_server_proc)
    assert expire_on_the_server(grok_server_proc, "GenerateStream", model_info) == "DEADLINE_EXCEEDED"
    wait_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc, model_info) == 1


def test_unary_deadline_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    wait_idle(grok_server_proc)
    assert expire_on_the_server(grok_server_proc, "Generate", model_info) == "DEADLINE_EXCEEDED"
    wait_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc, model_info) == 1


def test_client_cancel_aborts_engine_request(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    wait_idle(grok_server_proc)
    before = count(grok_server_proc, "GenerateStream", "CANCELLED")
    with EngineHold(grok_server_proc) as engine:
        call = stub.GenerateStream(long_request(model_info), timeout=300)
        next(call)  # it is generating
        engine.hold()  # and still is when cancelled
        call.cancel()
        engine.release()
    assert call.code() == grpc.StatusCode.CANCELLED
    wait_count(grok_server_proc, "GenerateStream", "CANCELLED", before + 1)
    wait_idle(grok_server_proc)
    assert running_during_probe(stub, grok_server_proc, model_info) == 1  # the probe is cancelled too
    wait_idle(grok_server_proc)
    wait_count(grok_server_proc, "GenerateStream", "CANCELLED", before + 2)


def test_future_cancel_of_unary_call(
    stub: pb_grpc.GenerationServiceStub, model_info: pb.ModelInfo, grok_server_proc: ServerProcess
) -> None:
    wait_idle(grok_server_proc)
    before = count(grok_server_proc, "Generate", "CANCELLED")
    with EngineHold(grok_server_proc) as engine:
        tokens = grok_server_proc.metric("grok_generation_tokens_total")
        future = stub.Generate.future(long_request(model_info), timeout=300)
        wait_generating(grok_server_proc, tokens)
        engine.hold()  # and still runs when cancelled
        assert future.cancel()
        engine.release()
    wait_idle(grok_server_proc)
    wait_count(grok_server_proc, "Generate", "CANCELLED", before + 1)
