"""grok-client (the command) and GrokClient (the Python API) against the shared server."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb

from grok_server.client import GrokClient, GrokError
from tests.server.serverlib import EngineHold, ServerProcess, wait_metric


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grok_server.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_generate_prints_text_and_summary(grok_server_proc: ServerProcess) -> None:
    proc = cli(
        "generate",
        "--target",
        grok_server_proc.target,
        "Hello",
        "--max-tokens",
        "5",
        "--ignore-eos",
        "--temperature",
        "0",
        "--request-id",
        "cli-1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "[cli-1] finish=length prompt_tokens=" in proc.stderr
    assert "generated_tokens=5" in proc.stderr
    with GrokClient(grok_server_proc.target) as client:
        expected = client.generate("Hello", max_tokens=5, ignore_eos=True, temperature=0.0).text
    assert proc.stdout == expected + "\n"


def test_cli_stream_json(grok_server_proc: ServerProcess) -> None:
    proc = cli(
        "generate",
        "--target",
        grok_server_proc.target,
        "Hello",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--stream",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sum(len(m.get("token_ids", [])) for m in messages) == 6
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH"


def test_cli_tokenize_info_health(grok_server_proc: ServerProcess, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tok = cli("tokenize", "--target", grok_server_proc.target, "Hello world")
    assert tok.returncode == 0
    assert tok.stdout.split() == [str(i) for i in hf_tokenizer.encode("Hello world")]
    info = cli("info", "--target", grok_server_proc.target)
    assert json.loads(info.stdout)["max_concurrent_requests"] == 64
    health = cli("health", "--target", grok_server_proc.target)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_cli_reports_invalid_argument(grok_server_proc: ServerProcess) -> None:
    proc = cli("generate", "--target", grok_server_proc.target, "Hello", "--top-p", "1.5")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"grok-client: {grok_server_proc.target}: INVALID_ARGUMENT: sampling.top_p must be in (0, 1], got 1.5"
    )


def test_python_client_api(grok_server_proc: ServerProcess) -> None:
    with GrokClient(grok_server_proc.target, timeout=60) as client:
        assert client.health() == "SERVING"
        info = client.model_info()
        result = client.generate("Hi", max_tokens=4, ignore_eos=True, logprobs=1, seed=3, temperature=0.7)
        assert result.usage.generated_tokens == 4 and len(result.logprobs) == 4
        chunks = list(client.generate_stream([1, 2, 3], max_tokens=7, ignore_eos=True))
        assert sum(len(c.token_ids) for c in chunks) == 7
        assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert list(client.tokenize("Hi", add_special_tokens=False).token_ids)
        with pytest.raises(GrokError) as e:
            client.generate([info.vocab_size])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "is outside the vocabulary" in str(e.value)


def test_python_client_stream_break_cancels(grok_server_proc: ServerProcess) -> None:
    key = 'grok_requests_total{code="CANCELLED",method="GenerateStream"}'
    before = grok_server_proc.metric(key)
    with GrokClient(grok_server_proc.target) as client, EngineHold(grok_server_proc) as engine:
        stream = client.generate_stream("Hello", max_tokens=1000, ignore_eos=True)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        engine.hold()  # the request cannot finish: closing the iterator is what ends it
        stream.close()
        engine.release()
    wait_metric(grok_server_proc, "grok_requests_in_flight", 0)
    wait_metric(grok_server_proc, key, before + 1)  # counted CANCELLED, not OK
