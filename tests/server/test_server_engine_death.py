"""When the engine process dies, in-flight requests get UNAVAILABLE and the server exits non-zero."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import EngineHold, running_server, stream_outcome


def test_engine_death_fails_in_flight_requests_and_exits_nonzero(
    grok_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with (
        running_server(grok_model, tmp_path_factory.mktemp("grok-server-death")) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.GenerationServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        engine_pids = server.engine_core_pids()
        assert len(engine_pids) == 1, engine_pids

        call = stub.GenerateStream(
            pb.GenerateRequest(
                text="doomed",
                stopping=pb.StoppingCriteria(max_new_tokens=info.max_model_len - 16, ignore_eos=True),
            ),
            timeout=120,
        )
        first = threading.Event()

        with ThreadPoolExecutor(1) as pool, EngineHold(server) as engine:
            outcome = pool.submit(stream_outcome, call, first)
            assert first.wait(60)
            # Held, the request is surely still running when the engine dies (SIGKILL ends a stopped process).
            engine.hold()
            os.kill(engine_pids[0], signal.SIGKILL)
            code, details = outcome.result(timeout=60)  # never a hang
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details == "the engine died while serving the request; retry on another replica"

        # Nothing is served any more: while the process still runs a new call gets UNAVAILABLE from the
        # server; once it is shutting down gRPC itself refuses the call (UNAVAILABLE or CANCELLED).
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(pb.GenerateRequest(text="after"), timeout=10)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        if e.value.code() == grpc.StatusCode.UNAVAILABLE and "engine" in (e.value.details() or ""):
            assert e.value.details() == (
                "the engine has failed and the server is restarting; retry on another replica"
            )
        assert server.wait_exit(timeout=60) == 1
        assert "the engine died" in server.log()
