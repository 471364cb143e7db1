"""A gRPC message to grok-server that does not parse (a string field that is not UTF-8) is refused with
INVALID_ARGUMENT saying why, never UNKNOWN/INTERNAL: the server's own gRPC stack (Server._build_grpc, the
registration grok-server runs) over a loopback socket, refused before any engine is needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb

from grok_server.server import startup_events

SERVICE = "/grok.serving.v1.GenerationService"


def _not_utf8(message: type, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return bytes([(number << 3) | 2, 2, 0xFF, 0xFE])  # length-delimited, 2 bytes, not UTF-8


CASES = {
    "Generate": (_not_utf8(pb.GenerateRequest, "text"), "grok.serving.v1.GenerateRequest"),
    "GenerateStream": (_not_utf8(pb.GenerateRequest, "request_id"), "grok.serving.v1.GenerateRequest"),
    "Tokenize": (_not_utf8(pb.TokenizeRequest, "text"), "grok.serving.v1.TokenizeRequest"),
    # A field that says 5 bytes follow, and 2 do: truncated.
    "GetModelInfo": (b"\x0a\x05ab", "grok.serving.v1.GetModelInfoRequest"),
}


def test_a_request_that_does_not_parse_is_invalid_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grok_server.server.config import parse_args
    from grok_server.server.lifecycle import Phase
    from grok_server.server.main import Server

    # StartupRun exports these for the engine processes: restored after the test.
    monkeypatch.setenv(startup_events.ENV, "")
    monkeypatch.setenv(startup_events.API_PID_ENV, "")
    cfg = parse_args(["--model", str(tmp_path / "no-model"), "--host", "127.0.0.1", "--port", "1",
                      "--metrics-host", "127.0.0.1"])
    cfg.port = 0  # any free port (the parser wants 1..65535)

    async def run() -> dict[str, tuple[grpc.StatusCode, str]]:
        server = Server(cfg)
        grpc_server = server._build_grpc()
        await grpc_server.start()
        await server.lifecycle.set(Phase.LOADING)  # no engine: a refusal here comes before the engine
        answers = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                for method, (data, _) in CASES.items():
                    make = channel.unary_stream if method == "GenerateStream" else channel.unary_unary
                    call = make(f"{SERVICE}/{method}", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
                    try:
                        answer = call(data, timeout=60)
                        if method == "GenerateStream":
                            async for _ in answer:
                                pass
                        else:
                            await answer
                        answers[method] = (grpc.StatusCode.OK, "")
                    except grpc.aio.AioRpcError as err:
                        answers[method] = (err.code(), err.details() or "")
            answers["counted"] = (grpc.StatusCode.OK, str(server.metrics.requests.labels(
                "Generate", "INVALID_ARGUMENT")._value.get()))
        finally:
            await grpc_server.stop(None)
            server.startup.close()
        return answers

    answers = asyncio.run(run())
    for method, (_, kind) in CASES.items():
        code, details = answers[method]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert f"the request is not a valid {kind}" in details, details
    assert answers["counted"][1] == "1.0"  # counted like any other refusal
