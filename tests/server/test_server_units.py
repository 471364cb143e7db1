"""The server's pure parts, without an engine: validation, admission, auth, flags, the client's helpers."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from grok.serving.v1 import generation_pb2 as pb

from grok_server.client import build_request
from grok_server.server.admission import Admission, auto_stream_interval, retry_hint_ms
from grok_server.server.config import parse_args
from grok_server.server.lifecycle import Phase, unavailable_message
from grok_server.server.security import check_authorization, load_tokens
from grok_server.server.validation import Limits, ValidationError, resolve_max_tokens, validate_request
from tests.server.serverlib import free_port, parse_metrics

LIMITS = Limits(
    max_model_len=100,
    vocab_size=50,
    default_max_tokens=16,
    max_stop_strings=2,
    max_stop_string_length=5,
    max_logprobs=5,
    max_request_bytes=1000,
)


def test_valid_request_maps_to_engine_parameters() -> None:
    req = build_request(
        "hi",
        max_tokens=10,
        min_tokens=2,
        stop=["x"],
        stop_token_ids=[3],
        ignore_eos=True,
        logprobs=2,
        prompt_logprobs=True,
        temperature=0.5,
        top_p=0.75,
        top_k=5,
        min_p=0.125,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.25,
        seed=7,
    )
    v = validate_request(req, LIMITS)
    assert v.prompt.text == "hi" and v.max_new_tokens == 10
    # Values exact in float32, the wire type.
    assert v.sampling == {
        "temperature": 0.5,
        "top_p": 0.75,
        "top_k": 5,
        "min_p": 0.125,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.25,
        "seed": 7,
        "min_tokens": 2,
        "stop": ["x"],
        "include_stop_str_in_output": False,
        "stop_token_ids": [3],
        "ignore_eos": True,
        "logprobs": 2,
        "prompt_logprobs": 2,
    }
    assert v.want_logprobs and v.want_prompt_logprobs


def test_token_ids_only_skips_detokenizing_unless_stop_strings_need_it() -> None:
    v = validate_request(build_request([1, 2], token_ids_only=True), LIMITS)
    assert v.token_ids_only and v.sampling["detokenize"] is False
    v = validate_request(build_request([1, 2], token_ids_only=True, stop=["x"]), LIMITS)
    assert v.token_ids_only and "detokenize" not in v.sampling
    assert "detokenize" not in validate_request(build_request([1, 2]), LIMITS).sampling


def test_unset_fields_keep_engine_defaults() -> None:
    v = validate_request(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2])), LIMITS)
    assert v.sampling == {} and v.max_new_tokens is None and v.prompt.token_ids == [1, 2]


def test_temperature_zero_is_greedy_not_unset() -> None:
    v = validate_request(build_request("hi", temperature=0.0), LIMITS)
    assert v.sampling["temperature"] == 0.0


@pytest.mark.parametrize(
    ("prompt_len", "requested", "min_tokens", "expected"),
    [
        (10, None, 0, 16),  # the default
        (90, None, 0, 10),  # the default, cut to the room left
        (10, 90, 0, 90),  # exactly fills the context
        (10, None, 40, 40),  # min_new_tokens raises the default
    ],
)
def test_resolve_max_tokens(prompt_len: int, requested: int | None, min_tokens: int, expected: int) -> None:
    assert resolve_max_tokens(prompt_len, requested, LIMITS, min_tokens) == expected


@pytest.mark.parametrize(
    ("prompt_len", "requested", "min_tokens", "message"),
    [
        (100, None, 0, "prompt has 100 tokens; the context is 100 tokens, so at most 99 prompt tokens"),
        (
            10,
            91,
            0,
            "prompt (10 tokens) plus stopping.max_new_tokens (91) is 101 tokens, more than the context",
        ),
        (
            95,
            None,
            8,
            "stopping.min_new_tokens = 8 does not fit in the context: the prompt has 95 tokens, leaving 5",
        ),
    ],
)
def test_resolve_max_tokens_rejects(
    prompt_len: int, requested: int | None, min_tokens: int, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        resolve_max_tokens(prompt_len, requested, LIMITS, min_tokens)


def test_logprobs_top_n_without_generated_is_rejected() -> None:
    req = pb.GenerateRequest(text="x", logprobs=pb.LogprobsOptions(top_n=2))
    with pytest.raises(ValidationError, match=r"logprobs\.top_n needs logprobs\.generated"):
        validate_request(req, LIMITS)


def test_admission_counts_and_hints() -> None:
    a = Admission(2, default_retry_after_ms=700)
    assert a.try_acquire() and a.try_acquire()
    assert not a.try_acquire()
    assert a.retry_after_ms() == 700  # no history yet
    a.release(4.0)
    a.release(2.0)
    assert a.in_flight == 0
    assert a.retry_after_ms() == 2000  # median 4.0 s over 2 slots
    with pytest.raises(ValueError, match="must be >= 1"):
        Admission(0)


def test_recent_peak_remembers_a_wave_for_a_while() -> None:
    """Requests of a burst finish together and come back one by one: the first of the next wave must not
    see an idle server (in flight: 1) when 32 were running a moment ago."""
    clock = [100.0]
    a = Admission(64, clock=lambda: clock[0])
    for _ in range(32):
        assert a.try_acquire()
    for _ in range(32):
        a.release()
    clock[0] += 0.5
    assert a.try_acquire()
    assert a.in_flight == 1
    assert a.recent_peak() == 32
    clock[0] += 1.0  # the peak's window has rolled over once: still remembered
    assert a.recent_peak() == 32
    clock[0] += 2.5  # and forgotten after two windows without it
    assert a.recent_peak() == 1
    a.release()
    clock[0] += 5.0
    assert a.recent_peak() == 0


@pytest.mark.parametrize(("durations", "expected"), [([0.0001], 50), ([1e6], 30_000), ([1.0, 3.0, 2.0], 250)])
def test_retry_hint_is_clamped(durations: list[float], expected: int) -> None:
    assert retry_hint_ms(durations, 8, 500) == expected


@pytest.mark.parametrize(
    ("in_flight", "interval"), [(0, 1), (7, 1), (8, 4), (16, 8), (31, 15), (32, 16), (1000, 16)]
)
def test_auto_stream_interval(in_flight: int, interval: int) -> None:
    assert auto_stream_interval(in_flight) == interval


@pytest.mark.parametrize(
    ("metadata", "result"),
    [
        ((("authorization", "Bearer good"),), None),
        ((("authorization", "bearer  other "),), None),
        ((("x-other", "1"), ("authorization", "Bearer good")), None),
        ((), "missing authorization metadata: send 'authorization: Bearer <token>'"),
        ((("authorization", "Bearer bad"),), "invalid bearer token"),
        ((("authorization", "Bearer goo"),), "invalid bearer token"),
        ((("authorization", "Bearer "),), "authorization metadata must be 'Bearer <token>'"),
        ((("authorization", "good"),), "authorization metadata must be 'Bearer <token>'"),
    ],
)
def test_check_authorization(metadata: tuple[tuple[str, str], ...], result: str | None) -> None:
    assert check_authorization(metadata, ["good", "other"]) == result


def test_load_tokens(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# comment\n a \n\nb\n")
    assert load_tokens(f) == ["a", "b"]
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no token found"):
        load_tokens(f)


def test_parse_args_defaults_and_engine_args() -> None:
    cfg = parse_args(
        [
            "--model",
            "/m",
            "--engine-arg",
            "max_num_batched_tokens=2048",
            "--engine-arg",
            "kv-cache-dtype=fp8",
            "--tp",
            "8",
        ]
    )
    assert cfg.port == 50051 and cfg.metrics_port == 9090 and cfg.tensor_parallel_size == 8
    assert cfg.engine_args == {"max_num_batched_tokens": 2048, "kv_cache_dtype": "fp8"}
    assert cfg.max_concurrent_requests == 256 and cfg.warmup and cfg.stream_interval == 0  # auto
    assert parse_args(["--model", "m", "--stream-interval", "3"]).stream_interval == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m", "--tls-cert", "c"], "--tls-cert and --tls-key go together"),
        (["--model", "m", "--tls-client-ca", "ca"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--model", "m", "--max-concurrent-requests", "0"], "must be >= 1, got 0"),
        (["--model", "m", "--engine-arg", "novalue"], "expected KEY=VALUE"),
        # Values that parse but would fail minutes later, after the model loaded (ModelInfo's uint32 fields,
        # the C int behind the transport's message cap).
        (["--model", "m", "--max-stop-strings", "-1"], "must be from 0 to"),
        (["--model", "m", "--max-request-bytes", "600000000"], "must be from 1 to"),
        (["--model", "m", "--drain-grace-seconds", "-5"], "must be >= 0"),
        (["--model", "m", "--port", "70000"], "must be from 1 to 65535"),
    ],
)
def test_parse_args_rejects(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unavailable_messages() -> None:
    assert unavailable_message(Phase.SERVING) is None
    assert unavailable_message(Phase.LOADING) == "the model is still loading; retry later"
    assert "draining" in (unavailable_message(Phase.DRAINING) or "")


def test_build_request_rejects_unknown_sampling_option() -> None:
    with pytest.raises(TypeError, match=r"unknown sampling parameter\(s\): temprature"):
        build_request("x", temprature=0.5)


def test_parse_metrics_keeps_labels() -> None:
    text = '# HELP x\nx_total{a="1",b="2"} 3.0\ny 4.5e-05\n'
    assert parse_metrics(text) == {'x_total{a="1",b="2"}': 3.0, "y": 4.5e-05}


def test_client_imports_without_vllm() -> None:
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['torch'] = None\n"
        "import grok_server, grok_server.client, grok_server.client.cli\n"
        "import grok_server.server.validation, grok_server.server.config\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_reports_connection_errors() -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grok_server.client.cli",
            "generate",
            "--target",
            f"127.0.0.1:{port}",
            "--timeout",
            "3",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"grok-client: 127.0.0.1:{port}: UNAVAILABLE: ")
    assert "[the server is unreachable, loading, draining, or restarting]" in proc.stderr


def test_repeated_histogram_counts_a_value_n_times() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from grok_server.server.metrics import RepeatedHistogram

    registry = CollectorRegistry()
    h = RepeatedHistogram("x_seconds", "x", (0.01, 0.1, 1.0), registry)
    h.observe(0.01, 3)  # on a bound: counts in that bucket (le is inclusive)
    h.observe(0.05)
    h.observe(5.0, 2)
    got = parse_metrics(generate_latest(registry).decode())
    assert got == {
        'x_seconds_bucket{le="0.01"}': 3.0,
        'x_seconds_bucket{le="0.1"}': 4.0,
        'x_seconds_bucket{le="1.0"}': 4.0,
        'x_seconds_bucket{le="+Inf"}': 6.0,
        "x_seconds_count": 6.0,
        "x_seconds_sum": pytest.approx(0.03 + 0.05 + 10.0),
    }


@pytest.mark.parametrize(
    ("allowed", "workers", "rest"),
    [
        ({0, 1}, [{0}], {1}),  # one worker bound to core 0: the rest goes to core 1
        ({0, 1, 2, 3}, [{0, 1}, {2}], {3}),
        ({0, 1}, [{0}, {1}], None),  # tensor parallel over every core: nothing left to move to
        ({0, 1}, [{0, 1}], None),  # a worker not bound to a subset (a GPU worker): nothing to do
        ({0, 1}, [], None),
    ],
)
def test_cpus_besides_workers(allowed: set[int], workers: list[set[int]], rest: set[int] | None) -> None:
    from grok_server.server.placement import cpus_besides_workers

    assert cpus_besides_workers(allowed, workers) == rest


def test_parent_pid_survives_odd_process_names(tmp_path: Path) -> None:
    from grok_server.server.placement import descendants, parent_pid

    assert parent_pid("42 (VLLM::Worker) S 7 42 42 0 -1") == 7
    assert parent_pid("43 (a) b (c)) R 42 43 0") == 42
    tree = [(1, 0, "init"), (7, 1, "grok server"), (42, 7, "x) S 99"), (43, 42, "w"), (50, 1, "z")]
    for pid, ppid, name in tree:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S {ppid} 0 0\n")
    (tmp_path / "self").mkdir()
    assert sorted(descendants(7, tmp_path)) == [42, 43]


def test_a_request_the_engine_failed_ends_with_internal_not_ok() -> None:
    # vLLM finishes a request with finish_reason "error" when its engine core failed on it (a preprocessing
    # or KV-transfer failure). A real CPU engine cannot be made to do that on demand: a stand-in engine here.
    import asyncio

    import grpc
    from vllm.outputs import CompletionOutput, RequestOutput

    from grok_server.server.metrics import ServerMetrics
    from grok_server.server.servicer import GenerationServicer, RpcFailure, _Job
    from grok_server.server.validation import Prompt, ValidatedRequest

    class FailingEngine:
        async def generate(self, prompt, params, request_id):
            failed = CompletionOutput(index=0, text="", token_ids=[], cumulative_logprob=None, logprobs=None,
                                      finish_reason="error")
            yield RequestOutput(request_id, None, [1, 2], None, [failed], finished=True)

    servicer = GenerationServicer(
        lifecycle=None, admission=Admission(4), metrics=ServerMetrics(max_concurrent=4, build_info={}),
        on_engine_dead=lambda: None,
    )
    job = _Job("e-1", "r-1", [1, 2], ValidatedRequest(Prompt(token_ids=[1, 2])), None, 0, 0.0)

    async def run() -> None:
        async for _ in servicer._run_engine(FailingEngine(), job):
            pass

    with pytest.raises(RpcFailure) as failure:
        asyncio.run(run())
    assert failure.value.code == grpc.StatusCode.INTERNAL
    assert "the engine failed on this request" in failure.value.message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--token-ids", "1,x"], "--token-ids: the prompt must be comma-separated integers"),
        (["generate", "--max-tokens", "99999999999", "hi"], "bad request: Value out of range"),
    ],
)
def test_cli_bad_input_is_a_usage_error_not_a_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from grok_server.client import cli

    with pytest.raises(SystemExit) as e:
        cli.main([argv[0], "--target", f"127.0.0.1:{free_port()}", *argv[1:]])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_health_uses_the_timeout_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from grok_server.client import cli
    from grok_server.client.api import GrokClient

    asked: list[float | None] = []

    def health(self: GrokClient, service: str = "", *, timeout: float | None = 5.0) -> str:
        asked.append(timeout)
        return "SERVING"

    monkeypatch.setattr(GrokClient, "health", health)
    with pytest.raises(SystemExit) as e:
        cli.main(["health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "30"])
    assert e.value.code == 0 and asked == [30.0]


def test_no_engine_request_starts_after_the_drain_aborted_the_rest() -> None:
    # A request still tokenizing (in a thread, for long prompts) when the grace period ends must not start in
    # the engine afterwards: it ends UNAVAILABLE like the ones abort_all cut, not CANCELLED at exit.
    import asyncio

    import grpc

    from grok_server.server.metrics import ServerMetrics
    from grok_server.server.servicer import GenerationServicer, RpcFailure

    started: list[str] = []

    class Engine:
        def get_num_unfinished_requests(self) -> int:
            return 0

        async def abort(self, ids: list[str]) -> None:
            pass

        async def generate(self, prompt, params, request_id):
            started.append(request_id)
            yield None

    # SERVING: the request passed the phase check before the drain began (a new one is refused there).
    serving = types.SimpleNamespace(phase=Phase.SERVING)
    servicer = GenerationServicer(
        lifecycle=serving, admission=Admission(4), metrics=ServerMetrics(max_concurrent=4, build_info={}),
        on_engine_dead=lambda: None,
    )
    servicer.attach(Engine(), Limits(max_model_len=64, vocab_size=100), pb.ModelInfo())
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]))

    async def run() -> None:
        await servicer.abort_all()
        async for _ in servicer._generate(request):
            pass

    with pytest.raises(RpcFailure) as failure:
        asyncio.run(run())
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE and "shut down" in failure.value.message
    assert started == [] and servicer.idle.is_set()
