"""Fixtures for the gRPC server tests: real `grok-server` processes on the CPU engine, over real sockets.

`grok_server_proc` is one shared server for every test that leaves it usable; tests that stop a server or
need other flags (admission limit, TLS, drain, engine death) start their own small one (serverlib).
Set GROK_SERVER_TEST_MODEL to run them against another checkpoint than the tiny Grok-1 one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from tests.server.serverlib import ServerProcess, running_server

SHARED_FLAGS = (
    "--max-concurrent-requests",
    "64",
    "--max-request-bytes",
    "65536",
    "--default-max-tokens",
    "16",
    "--max-stop-strings",
    "4",
    "--max-stop-string-length",
    "32",
    "--cpu-affinity",
    "auto",
)


@pytest.fixture(scope="session")
def grok_model(request: pytest.FixtureRequest) -> Path:
    override = os.environ.get("GROK_SERVER_TEST_MODEL")
    if override:
        return Path(override)
    return Path(request.getfixturevalue("tiny_grok_checkpoint"))


@pytest.fixture(scope="session")
def grok_server_proc(grok_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(grok_model, tmp_path_factory.mktemp("grok-server-shared"), *SHARED_FLAGS) as server:
        yield server


@pytest.fixture(scope="session")
def channel(grok_server_proc: ServerProcess) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(grok_server_proc.target)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="session")
def model_info(stub: pb_grpc.GenerationServiceStub) -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


@pytest.fixture(scope="session")
def hf_tokenizer(grok_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(grok_model))
