"""grok-server refuses, before any work, a start whose attention backend would drop Grok-1's logit soft-cap
(asked for by --engine-arg or VLLM_ATTENTION_BACKEND), and passes vLLM 0.32's current quantization names.

This machine's vLLM runs its CPU platform, whose only backend applies the cap, so the GPU is an input here:
the checks main.py runs (config.start_checks) are given a device, and the server is run with
current_device() answering a Blackwell or Hopper GPU."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from grok_common.attention import AttentionBackendRefused, Device, refusal
from grok_server.server import startup_events
from grok_server.server.config import parse_args, parse_worker_args, start_checks

HOPPER, BLACKWELL, AMPERE, CPU = Device("cuda", (9, 0)), Device("cuda", (10, 0)), Device("cuda", (8, 0)), \
    Device("cpu")


def _cfg(*args: str):
    return parse_args(["--model", "/m", *args])


@pytest.mark.parametrize(("args", "backend"), [
    (["--engine-arg", "attention_backend=FLASHINFER"], "FLASHINFER"),
    (["--engine-arg", 'attention_config={"backend": "FLASHINFER"}'], "FLASHINFER"),
    (["--engine-arg", 'attention_config={"backend_per_kind": {"full_attention": "FLEX_ATTENTION"}}'],
     "FLEX_ATTENTION"),
])
@pytest.mark.parametrize("device", [HOPPER, BLACKWELL])
def test_engine_args_forcing_a_backend_that_drops_the_cap_are_refused(args: list[str], backend: str,
                                                                      device: Device) -> None:
    with pytest.raises(AttentionBackendRefused) as refused:
        start_checks(_cfg(*args), device, {})
    message = str(refused.value)
    assert message == refusal(backend, device)  # the operator's words at admission
    assert backend in message and device.family in message and "max_attn_value" in message
    assert "Backends that apply it here: FLASH_ATTN, TRITON_ATTN" in message


@pytest.mark.parametrize("device", [HOPPER, BLACKWELL])
def test_vllm_attention_backend_naming_a_backend_that_drops_the_cap_is_refused(device: Device) -> None:
    """vLLM 0.32 ignores the variable; whoever set it expects FlashInfer: refused, not silently replaced."""
    with pytest.raises(AttentionBackendRefused) as refused:
        start_checks(_cfg(), device, {"VLLM_ATTENTION_BACKEND": "FLASHINFER"})
    assert str(refused.value) == "VLLM_ATTENTION_BACKEND=FLASHINFER: " + refusal("FLASHINFER", device)


@pytest.mark.parametrize(("environ", "device"), [
    ({"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"}, BLACKWELL),
    ({"VLLM_ATTENTION_BACKEND": "FLASHINFER"}, AMPERE),  # only FlashInfer's native kernels there
    ({"VLLM_ATTENTION_BACKEND": "FLASHINFER"}, CPU),     # vLLM's CPU platform runs CPU_ATTN whatever is asked
])
def test_any_other_vllm_attention_backend_is_said_to_be_ignored(environ: dict[str, str],
                                                                device: Device) -> None:
    (warning,) = start_checks(_cfg(), device, environ)
    value = environ["VLLM_ATTENTION_BACKEND"]
    assert warning.startswith(f"VLLM_ATTENTION_BACKEND={value} is ignored: vLLM 0.32 no longer reads it")
    assert f"--engine-arg attention_backend={value}" in warning


def test_nothing_asked_nothing_refused_nor_said() -> None:
    for device in (HOPPER, BLACKWELL, CPU):
        assert start_checks(_cfg(), device, {"VLLM_ATTENTION_BACKEND": ""}) == []
        assert start_checks(_cfg("--engine-arg", "attention_backend=TRITON_ATTN"), device, {}) == []


def test_vllm_032_really_ignores_vllm_attention_backend() -> None:
    """What the refusal and warning rest on: this vLLM knows no such variable (a newer one that reads it
    again needs the check to say so)."""
    import vllm.envs

    assert "VLLM_ATTENTION_BACKEND" not in vllm.envs.environment_variables


@pytest.mark.parametrize(("args", "quantization", "engine_quantization", "said"), [
    (["--quantization", "fp8"], "fp8_per_tensor", None, "--quantization fp8 is deprecated"),
    (["--engine-arg", "quantization=fp8"], None, "fp8_per_tensor",
     "--engine-arg quantization fp8 is deprecated"),
    (["--quantization", "fp8_per_block"], "fp8_per_block", None, None),
    (["--quantization", "awq"], "awq", None, None),  # a pre-quantized checkpoint's scheme: vLLM's to judge
])
def test_quantization_reaches_vllm_by_its_current_name(args: list[str], quantization: str | None,
                                                       engine_quantization: str | None,
                                                       said: str | None) -> None:
    worker = ["--model", "/m", "--tp", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1"]
    for cfg in (_cfg(*args), parse_worker_args([*worker, *args])):
        assert cfg.quantization == quantization
        assert cfg.engine_args.get("quantization") == engine_quantization
        if said is None:
            assert cfg.notices == []
        else:
            assert cfg.notices == [f"{said} in vLLM 0.32 for bf16 weights: passing its current name, "
                                   "fp8_per_tensor"]


def test_engine_arguments_carry_the_current_quantization_name() -> None:
    from grok_server.server.engine import engine_args

    assert engine_args(_cfg("--quantization", "fp8")).quantization == "fp8_per_tensor"
    assert engine_args(_cfg("--engine-arg", "quantization=fp8")).quantization == "fp8_per_tensor"


class _NoWorkRun:
    """StartupRun's work, recorded: a refused start must do none of it."""

    def __init__(self) -> None:
        from grok_server.server.startup import StartupClock

        self.clock = StartupClock(startup_events.process_started_at())
        self.work: list[str] = []

    def prepare_weights(self) -> None:
        self.work.append("weights")

    def prepare_compile_cache(self) -> None:
        self.work.append("compile cache")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("args", "environ", "backend"), [
    (["--engine-arg", "attention_backend=FLASHINFER"], {}, "FLASHINFER"),
    ([], {"VLLM_ATTENTION_BACKEND": "FLASHINFER"}, "FLASHINFER"),
])
def test_grok_server_refuses_to_start_before_any_work(args: list[str], environ: dict[str, str], backend: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Server.run on a (stand-in) B200: FAILED, exit status 1, the refusal logged, no weights read, no compile
    cache touched, no engine built."""
    from grok_server.model import device as device_module
    from grok_server.server import engine as eng
    from grok_server.server.lifecycle import Phase
    from grok_server.server.main import EXIT_ENGINE_FAILED, Server

    monkeypatch.setenv(startup_events.ENV, "")
    monkeypatch.setenv(startup_events.API_PID_ENV, "")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(device_module, "current_device", lambda: BLACKWELL)
    built: list[object] = []
    monkeypatch.setattr(eng, "create_engine", lambda *a: built.append(a))
    cfg = parse_args(["--model", str(tmp_path / "no-model"), "--host", "127.0.0.1", "--port", "1",
                      "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args])
    cfg.port = 0  # any free port (the parser wants 1..65535)
    run = _NoWorkRun()
    server = Server(cfg, run)  # type: ignore[arg-type]
    phases: list[Phase] = []
    server.lifecycle.observe(phases.append)
    with caplog.at_level(logging.INFO, logger="grok_server"):
        code = asyncio.run(server.run())
    assert code == EXIT_ENGINE_FAILED
    assert Phase.FAILED in phases and Phase.SERVING not in phases
    assert run.work == [] and built == []
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing to start: ")]
    prefix = "VLLM_ATTENTION_BACKEND=FLASHINFER: " if environ else ""
    assert refused == ["refusing to start: " + prefix + refusal(backend, BLACKWELL)]
