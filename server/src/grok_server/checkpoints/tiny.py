"""Deterministic, randomly initialised Grok-1-shaped checkpoints for tests, demos and benchmarks.

    make_tiny_checkpoint(out_dir: pathlib.Path, size: str = "tiny", naming: str = "hpcai", seed: int = 0,
                         fmt: str = "hf", **config_overrides) -> pathlib.Path

writes a checkpoint directory under `out_dir` (returned) that vLLM loads with this package's plugin:
`config.json` (model_type "grok-1"), a locally trained tokenizer (pad 0, bos 1, eos 2) and the weights.

- size: "tiny" (~1.8M parameters: hidden 128, 2 layers, 4 query / 2 KV heads of dim 32, 8 experts of width
  256, vocab 1024) or "small" (~82M: hidden 512, 6 layers, 8 / 2 heads of dim 64, experts 1024, vocab 4096).
- naming: "hpcai" (`Grok1ModelForCausalLM`, `.scale` norms) or "mixtral" (`Grok1ForCausalLM`, `w1/w2/w3`).
- fmt: "hf" (model.safetensors), "bin" (pytorch_model.bin) or "xai" (xAI's original `ckpt-0/` int8 pickles,
  the input of `grok-convert`; config and tokenizer are written beside it for convenience). Convert it with
  `grok-convert DIR OUT --head-dim 32 --tokenizer DIR` (`--head-dim 64` for "small").
- config_overrides: extra config.json keys (e.g. router_renormalize=True, tie_word_embeddings=False).

The same seed and size give the same weights in every naming and format: linear weights are generated as
int8 values times a bfloat16 per-output-channel scale (exactly what ckpt-0 stores) and all other tensors are
bfloat16-representable, so a converted ckpt-0 equals the direct checkpoint bit for bit in float32.
Weights are stored in float32. The scales are chosen so that every Grok-1 trait matters numerically
(attention scores reach the soft-cap's curved region, routing is far from uniform, norms are not identity).

Command line: `grok-make-tiny-model OUT_DIR [--size tiny|small] [--naming hpcai|mixtral] [--format hf|bin|xai]
[--seed N] [--set key=json_value ...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from grok_server.checkpoints.naming import (
    ARCHITECTURE_BY_NAMING,
    NAMINGS,
    Grok1Shape,
    TensorSpec,
    hpcai_config,
    hpcai_tensor_specs,
    rename,
)
from grok_server.checkpoints.xai import HpcaiTensor, write_xai_checkpoint

FORMATS = ("hf", "bin", "xai")

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
    ),
    "small": dict(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=8192,
    ),
}

# Standard deviation of each linear weight relative to 1/sqrt(fan_in). q and k are large so attention scores
# (std ~ GAIN_Q * GAIN_K) reach the soft-cap's curved region; the router so routing is far from uniform.
# The expert down-projection is tiny: post_moe_norm is scale-invariant, so whether the top-k gates are
# renormalised only shows through the norm's eps, i.e. when the MoE output's rms is near sqrt(eps).
_GAINS = {"q_proj": 3.0, "k_proj": 3.0, "v_proj": 1.0, "o_proj": 1.0, "gate": 2.0, "linear_1": 0.003}
_EXPERT_GAIN = 1.5
# Embedding rows have norm ~_EMBEDDING_RMS, so with the sqrt(hidden) multiplier the residual stream starts at
# rms ~_EMBEDDING_RMS: small enough that the layers, not the current token, decide the next token.
_EMBEDDING_RMS = 0.5
_FINAL_NORM_RANGE = (3.0, 6.0)


def grok1_config(size: str, naming: str, **overrides: Any) -> dict[str, Any]:
    """config.json content in the shape of hpcai-tech/grok-1's (no rope_theta, no head_dim)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    if naming not in ARCHITECTURE_BY_NAMING:
        raise ValueError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    dims = SIZES[size]
    shape = Grok1Shape(
        vocab_size=dims["vocab_size"],
        hidden_size=dims["hidden_size"],
        intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["num_hidden_layers"],
        num_attention_heads=dims["num_attention_heads"],
        num_key_value_heads=dims["num_key_value_heads"],
        head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        num_experts=dims["num_experts"],
    )
    extra = {"output_router_logits": False, "router_aux_loss_coef": 0.001, "use_cache": True}
    return hpcai_config(
        shape,
        naming,
        "float32",
        max_position_embeddings=dims["max_position_embeddings"],
        num_experts_per_tok=dims["num_experts_per_tok"],
        overrides=extra | overrides,
    )


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per tensor: the values do not depend on the order tensors are generated in.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def quantize_int8(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one bfloat16 scale per slice along `axis` (the output channel)."""
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    amax = np.max(np.abs(weight), axis=reduce_axes, keepdims=True)
    # Round the scale up to a bfloat16 so no value rounds beyond 127.
    scales = round_to_bfloat16(np.maximum(amax, 1e-8) / 127.0 * (1 + 2.0**-7))
    quantized = np.clip(np.rint(weight / scales), -127, 127).astype(np.int8)
    return quantized, scales.astype(np.float32)


def _generate(spec: TensorSpec, seed: int) -> HpcaiTensor:
    rng = _rng(seed, spec.name)
    if spec.kind == "embedding":
        scale = _EMBEDDING_RMS / math.sqrt(spec.shape[1])
        return HpcaiTensor(round_to_bfloat16(rng.standard_normal(spec.shape, dtype=np.float32) * scale))
    if spec.kind == "norm":
        # Away from 1 (and from a "1 + w" parameterisation) so the norm weights are visible. The final norm
        # is larger, which spreads the logits the way a trained model's are (peaked, not near-uniform).
        low, high = _FINAL_NORM_RANGE if spec.name == "model.norm.scale" else (0.5, 1.5)
        return HpcaiTensor(round_to_bfloat16(rng.uniform(low, high, spec.shape).astype(np.float32)))
    fan_in = spec.shape[1]
    module = spec.name.split(".")[-2]
    gain = _GAINS.get(module, _EXPERT_GAIN)
    weight = rng.standard_normal(spec.shape, dtype=np.float32) * (gain / math.sqrt(fan_in))
    if spec.kind == "router":
        return HpcaiTensor(round_to_bfloat16(weight))
    quantized, scales = quantize_int8(weight, axis=0)
    return HpcaiTensor(quantized.astype(np.float32) * scales, quantized, scales)


def generate_weights(shape: Grok1Shape, seed: int) -> Iterator[tuple[str, HpcaiTensor]]:
    """Every tensor (hpcai naming, PyTorch layout, float32 values) of a tied checkpoint."""
    for spec in hpcai_tensor_specs(shape):
        yield spec.name, _generate(spec, seed)


def lm_head_weight(shape: Grok1Shape, seed: int) -> np.ndarray:
    """A separate output projection, for configs with tie_word_embeddings false."""
    spec = TensorSpec("lm_head.weight", (shape.vocab_size, shape.hidden_size), "embedding")
    return _generate(spec, seed).values


def make_tiny_checkpoint(
    out_dir: Path,
    size: str = "tiny",
    naming: str = "hpcai",
    seed: int = 0,
    fmt: str = "hf",
    **config_overrides: Any,
) -> Path:
    """Write a checkpoint into `out_dir` (created if needed) and return `out_dir`."""
    import torch  # heavy: only the writers need it

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    out_dir = Path(out_dir)
    config = grok1_config(size, naming, **config_overrides)
    shape = Grok1Shape.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)

    if fmt == "xai":
        write_xai_checkpoint(out_dir / "ckpt-0", shape, generate_weights(shape, seed))
    else:
        tensors = {
            rename(name, naming): torch.from_numpy(t.values) for name, t in generate_weights(shape, seed)
        }
        if not config["tie_word_embeddings"]:
            tensors["lm_head.weight"] = torch.from_numpy(lm_head_weight(shape, seed))
        if fmt == "hf":
            from safetensors.torch import save_file

            save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(tensors, out_dir / "pytorch_model.bin")

    from grok_server.checkpoints.tokenizer import train_tokenizer

    train_tokenizer(out_dir, shape.vocab_size, seed=seed, model_max_length=config["max_position_embeddings"])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out_dir


def parameter_count(size: str) -> int:
    shape = Grok1Shape.from_config(grok1_config(size, "hpcai"))
    return sum(math.prod(spec.shape) for spec in hpcai_tensor_specs(shape))


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grok-make-tiny-model",
        description="Write a deterministic, randomly initialised Grok-1-shaped checkpoint.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--naming", choices=NAMINGS, default="hpcai")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="extra config.json key (value parsed as JSON), e.g. --set router_renormalize=true",
    )
    args = parser.parse_args(argv)
    path = make_tiny_checkpoint(
        args.out_dir, args.size, args.naming, args.seed, args.fmt, **dict(args.overrides)
    )
    print(
        f"wrote a {args.size} Grok-1 checkpoint ({parameter_count(args.size):,} parameters, "
        f"{args.naming} naming, "
        f"{args.fmt} format) to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
