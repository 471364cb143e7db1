"""The quantization a GrokDeployment asks for, by the names vLLM 0.32 takes, and the GPUs that run fp8.

The published Grok-1 checkpoints are bf16; vLLM quantizes them while loading ("online"). vLLM 0.32 names
each scheme (`--quantization`, `vllm/config/quantization.py`); `fp8` on bf16 weights is deprecated there
(a warning, then mapped to `fp8_per_tensor`), so grok-serve takes the explicit names and translates the
old one. Every scheme below stores weights in one byte; its scales are noise beside them.
"""

from __future__ import annotations

NONE = "none"
# Name -> what it does (the CRD's description and the refusal's list).
FP8_SCHEMES: dict[str, str] = {
    "fp8_per_tensor": "one scale per weight tensor (vLLM's mapping of the old `fp8`)",
    "fp8_per_channel": "one scale per output channel, activations scaled per token",
    "fp8_per_block": "one scale per 128x128 block",
}
DEPRECATED: dict[str, str] = {"fp8": "fp8_per_tensor"}
NAMES = (NONE, *FP8_SCHEMES)

# fp8 tensor cores arrived with compute capability 8.9 (Ada: L4, L40S; then Hopper 9.0: H100, H200;
# Blackwell 10.0: B200). Ampere (A100, 8.0) has none: NVIDIA's H100 and L40S datasheets list FP8 Tensor Core
# throughput, the A100 datasheet lists none, and Transformer Engine requires compute capability 8.9 for FP8.
# Per product, with figures and links: docs/resource.md ("fp8").
FP8_MIN_CAPABILITY = (8, 9)


def canonical(name: str) -> str:
    """The current name for `name` (the deprecated `fp8` -> `fp8_per_tensor`). Raises ValueError for one
    vLLM would not take."""
    name = DEPRECATED.get(name, name)
    if name not in NAMES:
        raise ValueError(f"unknown quantization {name!r}; known: {', '.join(NAMES)}")
    return name


def is_fp8(name: str) -> bool:
    return canonical(name) in FP8_SCHEMES


def bytes_per_weight(name: str) -> int | None:
    """Bytes per quantized weight; None when the weights keep the serving dtype."""
    return 1 if is_fp8(name) else None


def runs_fp8(capability: tuple[int, int]) -> bool:
    """Whether an NVIDIA GPU of this compute capability has fp8 tensor cores."""
    return capability >= FP8_MIN_CAPABILITY
