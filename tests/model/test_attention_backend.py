"""Grok-1 never runs on an attention backend that drops its logit soft-cap: the decision (pure, one test per
row of the table in grok_common/attention.py) and, on the CPU, an engine whose cap is in effect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from grok_common.attention import (
    AttentionBackendRefused,
    Device,
    check_built_backend,
    choose_backend,
    engine_backend_args,
    requested_backend,
)
from tests.model.grok_engines import run_engine

AMPERE, ADA, HOPPER, BLACKWELL, RTX = (Device("cuda", c) for c in ((8, 0), (8, 9), (9, 0), (10, 0), (12, 0)))
CPU, ROCM = Device("cpu"), Device("rocm")


@pytest.mark.parametrize(("device", "kv_cache_dtype", "chosen"), [
    (AMPERE, "auto", "FLASH_ATTN"),
    (ADA, "auto", "FLASH_ATTN"),
    (HOPPER, "auto", "FLASH_ATTN"),       # FA3; vLLM's own pick too, but it falls back to FlashInfer silently
    (BLACKWELL, "auto", "TRITON_ATTN"),   # vLLM would pick FlashInfer (TRTLLM-gen: uncapped)
    (RTX, "auto", "TRITON_ATTN"),
    (ADA, "fp8", "TRITON_ATTN"),          # FA2 reads no fp8 KV cache
    (HOPPER, "fp8", "FLASH_ATTN"),        # FA3 does
    (HOPPER, "fp8_e5m2", "TRITON_ATTN"),  # no FA does
    (ROCM, "auto", "TRITON_ATTN"),
    (CPU, "auto", None),                  # vLLM's CPU platform has one backend, CPU_ATTN, which applies it
])
def test_with_no_backend_asked_one_that_applies_the_cap_is_named(device: Device, kv_cache_dtype: str,
                                                                 chosen: str | None) -> None:
    assert choose_backend(device, None, kv_cache_dtype) == chosen
    assert choose_backend(device, "auto", kv_cache_dtype) == chosen


@pytest.mark.parametrize("device", [AMPERE, ADA, HOPPER, BLACKWELL, RTX])
@pytest.mark.parametrize("backend", ["FLASH_ATTN", "TRITON_ATTN", "flash_attn"])
def test_backends_that_apply_the_cap_are_accepted(device: Device, backend: str) -> None:
    assert choose_backend(device, backend) == backend.upper()


@pytest.mark.parametrize(("device", "trtllm_off", "accepted"), [
    (AMPERE, False, True),     # native FlashInfer kernels only
    (ADA, False, True),
    (HOPPER, False, False),    # XQA decode: uncapped
    (BLACKWELL, False, False),  # TRTLLM-gen prefill and decode: uncapped
    (RTX, False, False),       # XQA decode
    (HOPPER, True, True),      # use_trtllm_attention false: native kernels everywhere
    (BLACKWELL, True, True),
])
def test_flashinfer_only_where_its_native_kernels_run(device: Device, trtllm_off: bool,
                                                      accepted: bool) -> None:
    if accepted:
        assert choose_backend(device, "FLASHINFER", trtllm_disabled=trtllm_off) == "FLASHINFER"
    else:
        with pytest.raises(AttentionBackendRefused) as refused:
            choose_backend(device, "FLASHINFER", trtllm_disabled=trtllm_off)
        message = str(refused.value)
        assert message.startswith("attention backend FLASHINFER cannot serve Grok-1 on ")
        assert "take no soft-cap" in message and "max_attn_value" in message
        assert "FLASH_ATTN, TRITON_ATTN" in message and '"use_trtllm_attention": false' in message


@pytest.mark.parametrize(("backend", "why"), [
    ("FLEX_ATTENTION", "does not support a logit soft-cap"),
    ("TURBOQUANT", "never applies it"),
    ("ULTRAQUANT", "hard-coded to 0"),
    ("B12X", "does not support"),
    ("HPC_ATTN", "does not support"),
    ("TRITON_FLASHINFER", "drops the soft-cap"),
    ("FLASH_ATTN_MLA", "MLA"),
    ("SOMETHING_NEW", "not known to apply"),
])
@pytest.mark.parametrize("device", [AMPERE, HOPPER, BLACKWELL, ROCM])
def test_backends_that_drop_or_refuse_the_cap_are_refused(device: Device, backend: str, why: str) -> None:
    with pytest.raises(AttentionBackendRefused, match=why) as refused:
        choose_backend(device, backend)
    assert backend in str(refused.value) and device.family in str(refused.value)
    with pytest.raises(AttentionBackendRefused):
        check_built_backend(backend, device, trtllm_disabled=False)


def test_the_cpu_ignores_what_is_asked() -> None:
    assert choose_backend(CPU, "FLASHINFER") is None
    check_built_backend("CPU_ATTN", CPU, trtllm_disabled=False)


def test_what_the_engine_arguments_ask_for() -> None:
    assert requested_backend({}) == (None, False)
    assert requested_backend({"attention_backend": "FLASHINFER"}) == ("FLASHINFER", False)
    assert requested_backend({"attention_config": {"backend": "TRITON_ATTN"}}) == ("TRITON_ATTN", False)
    # vLLM lets backend_per_kind override backend: so does the check.
    assert requested_backend({"attention_config": {"backend": "FLASH_ATTN", "backend_per_kind": {
        "full_attention": "FLASHINFER"}}}) == ("FLASHINFER", False)
    native = {"attention_config": {"backend": "FLASHINFER", "use_trtllm_attention": False}}
    assert requested_backend(native) == ("FLASHINFER", True)


def test_grok_server_names_the_backend_only_when_none_is_asked() -> None:
    assert engine_backend_args({}, HOPPER) == {"attention_backend": "FLASH_ATTN"}
    assert engine_backend_args({}, BLACKWELL) == {"attention_backend": "TRITON_ATTN"}
    assert engine_backend_args({"attention_backend": "TRITON_ATTN"}, HOPPER) == {}
    assert engine_backend_args({}, CPU) == {}
    with pytest.raises(AttentionBackendRefused, match="FLASHINFER"):
        engine_backend_args({"attention_config": {"backend": "FLASHINFER"}}, BLACKWELL)


def _with_cap(checkpoint: Path, folder: Path, cap: float) -> Path:
    """The same weights, another max_attn_value."""
    folder.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((checkpoint / "config.json").read_text())
    config["max_attn_value"] = cap
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_cap_is_in_effect_on_the_cpu_engine(tiny_grok_checkpoint: Path, tmp_path: Path) -> None:
    """An engine given a lowered cap (5 instead of 30, where it bites: the tiny model's attention logits
    pass 5) matches the reference at that cap and not at 30; one given a raised cap (1e4, where it no longer
    bites: the reference moves by 7e-6) matches the uncapped reference and not the one at 30: the attention
    the engine runs (CPU_ATTN, which the model logs) applies the cap it is given, no more and no less. At 30,
    tests/model/test_model_vs_reference.py shows the engine matching the reference with the cap and not
    without it."""
    from tests.model.grok_reference import Grok1Reference, Traits

    prompt = [5, 17, 300, 42, 999, 12, 77, 8, 512, 3, 64, 128, 256, 700, 701, 702]

    def served(cap: float, name: str) -> tuple[np.ndarray, list[int]]:
        # Short folder names: vLLM's ZeroMQ socket files live in the engine's folder (107 characters at most).
        engine_dir = tmp_path / name
        engine = run_engine(engine_dir, _with_cap(tiny_grok_checkpoint, tmp_path / f"m{name}", cap),
                            prompts=[prompt], max_tokens=4)
        assert f"Grok-1 attention backend CPU_ATTN, which applies the logit soft-cap ({cap})" in (
            engine_dir / "engine.log").read_text()
        return (np.concatenate([engine["prompt0"], engine["generated0"]]),
                prompt + [int(t) for t in engine["tokens0"][:-1]])

    def diff(run: tuple[np.ndarray, list[int]], cap: float | None) -> float:
        rows, tokens = run
        reference = Grok1Reference(tiny_grok_checkpoint).with_config(max_attn_value=cap or 30.0)
        logprobs = reference.logprobs(tokens, Traits(attn_softcap=cap is not None))
        return float(np.abs(rows - logprobs.numpy()).max())

    lowered = served(5.0, "lo")
    assert diff(lowered, 5.0) < 1e-4
    assert diff(lowered, 30.0) > 1e-2
    raised = served(1e4, "hi")
    # Looser than at 5: the kernel's tanh loses ~1e-7 absolute at small arguments (float32), which the cap
    # multiplies back (1e4 x 1e-7 = 1e-3 on a score); the reference's own bite at 1e4 is 7e-6. Grok-1's cap
    # (30) moves these log-probs by ~2, so the bound still tells capped from uncapped by three orders.
    assert diff(raised, None) < 5e-3
    assert diff(raised, 30.0) > 0.5
