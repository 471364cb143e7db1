"""Tensor names and shapes of Grok-1 checkpoints in the three layouts this project reads or writes.

- hpcai: hpcai-tech/grok-1 (architecture `Grok1ModelForCausalLM`), the canonical layout here.
- mixtral: Mixtral-style ports (architecture `Grok1ForCausalLM`).
- xai: the original JAX `ckpt-0` leaves (haiku module path + parameter), one pickled shard per leaf; expert
  weights are stacked `[experts, in, out]` and dense weights are stored `[in, out]`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Naming = Literal["hpcai", "mixtral"]
NAMINGS: tuple[Naming, ...] = ("hpcai", "mixtral")
ARCHITECTURE_BY_NAMING: dict[str, str] = {"hpcai": "Grok1ModelForCausalLM", "mixtral": "Grok1ForCausalLM"}

# What a tensor is decides how it is initialised, quantised and stored.
TensorKind = Literal["embedding", "norm", "router", "linear"]

NORMS = ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")
EXPERT_LINEARS = ("linear", "linear_v", "linear_1")  # gate (w1), up (w3), down (w2)


@dataclass(frozen=True)
class TensorSpec:
    name: str  # hpcai naming
    shape: tuple[int, ...]  # PyTorch layout: [out, in] for linear weights
    kind: TensorKind


@dataclass(frozen=True)
class Grok1Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int

    @classmethod
    def from_config(cls, config: Any) -> Grok1Shape:
        get = (
            config.get
            if isinstance(config, dict)
            else lambda key, default=None: getattr(config, key, default)
        )
        heads = get("num_attention_heads")
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"),
            num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=get("num_key_value_heads"),
            head_dim=get("head_dim") or get("hidden_size") // heads,
            num_experts=get("num_experts"),
        )


def hpcai_config(
    shape: Grok1Shape,
    naming: str,
    dtype: str,
    max_position_embeddings: int = 8192,
    num_experts_per_tok: int = 2,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """config.json content in the layout of hpcai-tech/grok-1's (no rope_theta; head_dim only where it is not
    hidden / heads). Grok-1's multipliers follow from its shapes (sqrt(6144), 1/sqrt(128), 1/sqrt(3));
    `overrides` come last."""
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURE_BY_NAMING[naming]],
        "model_type": "grok-1",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "num_experts": shape.num_experts,
        "num_experts_per_tok": num_experts_per_tok,
        "attn_output_multiplier": shape.head_dim**-0.5,
        "embedding_multiplier_scale": math.sqrt(shape.hidden_size),
        "output_multiplier_scale": 3**-0.5,
        "max_attn_value": 30.0,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "torch_dtype": dtype,
    }
    if shape.head_dim * shape.num_attention_heads != shape.hidden_size:
        config["head_dim"] = shape.head_dim
    config.update(overrides or {})
    return config


def hpcai_tensor_specs(shape: Grok1Shape) -> list[TensorSpec]:
    """Every tensor of a tied Grok-1 checkpoint, in hpcai naming and a stable order."""
    d, f, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", (shape.vocab_size, d), "embedding")]
    for layer in range(shape.num_hidden_layers):
        p = f"model.layers.{layer}"
        specs += [
            TensorSpec(f"{p}.attn.q_proj.weight", (shape.num_attention_heads * hd, d), "linear"),
            TensorSpec(f"{p}.attn.k_proj.weight", (shape.num_key_value_heads * hd, d), "linear"),
            TensorSpec(f"{p}.attn.v_proj.weight", (shape.num_key_value_heads * hd, d), "linear"),
            TensorSpec(f"{p}.attn.o_proj.weight", (d, shape.num_attention_heads * hd), "linear"),
            TensorSpec(f"{p}.moe_block.gate.weight", (shape.num_experts, d), "router"),
        ]
        for expert in range(shape.num_experts):
            e = f"{p}.moe_block.experts.{expert}"
            specs += [
                TensorSpec(f"{e}.linear.weight", (f, d), "linear"),
                TensorSpec(f"{e}.linear_v.weight", (f, d), "linear"),
                TensorSpec(f"{e}.linear_1.weight", (d, f), "linear"),
            ]
        specs += [TensorSpec(f"{p}.{norm}.scale", (d,), "norm") for norm in NORMS]
    specs.append(TensorSpec("model.norm.scale", (d,), "norm"))
    return specs


_MIXTRAL_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.attn\."), ".self_attn."),
    (re.compile(r"\.moe_block\."), ".block_sparse_moe."),
    (re.compile(r"\.experts\.(\d+)\.linear\."), r".experts.\1.w1."),
    (re.compile(r"\.experts\.(\d+)\.linear_v\."), r".experts.\1.w3."),
    (re.compile(r"\.experts\.(\d+)\.linear_1\."), r".experts.\1.w2."),
    (re.compile(r"norm\.scale$"), "norm.weight"),
)


def hpcai_to_mixtral(name: str) -> str:
    for pattern, replacement in _MIXTRAL_RULES:
        name = pattern.sub(replacement, name)
    return name


def rename(name: str, naming: str) -> str:
    """An hpcai name in the requested naming."""
    if naming == "hpcai":
        return name
    if naming == "mixtral":
        return hpcai_to_mixtral(name)
    raise ValueError(f"unknown naming {naming!r}; expected one of {NAMINGS}")


# --- xAI ckpt-0 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class XaiLeaf:
    """One pickled shard of ckpt-0: a haiku parameter and where its values go in hpcai naming."""

    path: str  # e.g. "transformer/decoder_layer_3/moe/linear_v"
    param: str  # "w", "scale" or "embeddings"
    shape: tuple[int, ...]  # JAX layout
    quantized: bool  # stored as QuantizedWeight8bit (int8 weight with scales)
    layer: int | None  # decoder layer, None for the embedding and final norm

    @property
    def key(self) -> str:
        return f"{self.path}:{self.param}"


_XAI_ATTENTION = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "linear": "o_proj"}
_XAI_NORMS = {"rms_norm": NORMS[0], "rms_norm_1": NORMS[1], "rms_norm_2": NORMS[2], "rms_norm_3": NORMS[3]}


def xai_leaves(shape: Grok1Shape) -> list[XaiLeaf]:
    """The leaves of ckpt-0 in file order.

    The shard index is the leaf's position in `jax.tree_util.tree_flatten(params)`, which visits dict keys in
    sorted order: module paths sort as strings (decoder_layer_10 before decoder_layer_2).
    """
    d, f, hd, e = shape.hidden_size, shape.intermediate_size, shape.head_dim, shape.num_experts
    q, kv = shape.num_attention_heads * hd, shape.num_key_value_heads * hd
    leaves = [
        XaiLeaf("language_model/in_out_embed", "embeddings", (shape.vocab_size, d), False, None),
        XaiLeaf("language_model/rms_norm", "scale", (d,), False, None),
    ]
    for layer in range(shape.num_hidden_layers):
        p = f"transformer/decoder_layer_{layer}"
        leaves += [
            XaiLeaf(f"{p}/moe/linear", "w", (e, d, f), True, layer),
            XaiLeaf(f"{p}/moe/linear_1", "w", (e, f, d), True, layer),
            XaiLeaf(f"{p}/moe/linear_v", "w", (e, d, f), True, layer),
            XaiLeaf(f"{p}/multi_head_attention/key", "w", (d, kv), True, layer),
            XaiLeaf(f"{p}/multi_head_attention/linear", "w", (q, d), True, layer),
            XaiLeaf(f"{p}/multi_head_attention/query", "w", (d, q), True, layer),
            XaiLeaf(f"{p}/multi_head_attention/value", "w", (d, kv), True, layer),
            *(XaiLeaf(f"{p}/{norm}", "scale", (d,), False, layer) for norm in _XAI_NORMS),
            XaiLeaf(f"{p}/router", "w", (d, e), False, layer),
        ]
    return sorted(leaves, key=lambda leaf: (leaf.path, leaf.param))


def xai_leaf_targets(leaf: XaiLeaf) -> list[str]:
    """hpcai names filled from one leaf (several for stacked experts, in expert order)."""
    if leaf.path == "language_model/in_out_embed":
        return ["model.embed_tokens.weight"]
    if leaf.path == "language_model/rms_norm":
        return ["model.norm.scale"]
    module = leaf.path.split("/")
    prefix = f"model.layers.{leaf.layer}"
    if module[-2] == "moe":
        return [f"{prefix}.moe_block.experts.{expert}.{module[-1]}.weight" for expert in range(leaf.shape[0])]
    if module[-2] == "multi_head_attention":
        return [f"{prefix}.attn.{_XAI_ATTENTION[module[-1]]}.weight"]
    if module[-1] == "router":
        return [f"{prefix}.moe_block.gate.weight"]
    if module[-1] in _XAI_NORMS:
        return [f"{prefix}.{_XAI_NORMS[module[-1]]}.scale"]
    raise ValueError(f"unexpected ckpt-0 leaf {leaf.path}")


XAI_LEAVES_PER_LAYER = 12
XAI_GLOBAL_LEAVES = 2
# File indices of the leaves that fix the model's dimensions (layer 0 directly follows the two language_model
# leaves, whatever the number of layers).
XAI_SHAPE_PROBES = {"embeddings": 0, "moe_linear": 2, "key": 5, "query": 7}


def xai_num_layers(num_files: int) -> int:
    layers, rest = divmod(num_files - XAI_GLOBAL_LEAVES, XAI_LEAVES_PER_LAYER)
    if rest or layers < 1:
        raise ValueError(
            f"{num_files} tensor files cannot be a Grok-1 ckpt-0 (expected {XAI_GLOBAL_LEAVES} + "
            f"{XAI_LEAVES_PER_LAYER} per layer, e.g. 770 for 64 layers)"
        )
    return layers


def infer_shape_from_xai(
    probe_shapes: dict[str, tuple[int, ...]], num_layers: int, head_dim: int
) -> Grok1Shape:
    """Model dimensions from the shapes of the `XAI_SHAPE_PROBES` leaves."""
    vocab, d = probe_shapes["embeddings"]
    e, d2, f = probe_shapes["moe_linear"]
    d3, q = probe_shapes["query"]
    d4, kv = probe_shapes["key"]
    if len({d, d2, d3, d4}) != 1 or q % head_dim or kv % head_dim:
        raise ValueError(f"inconsistent ckpt-0 shapes for head_dim {head_dim}: {probe_shapes}")
    return Grok1Shape(vocab, d, f, num_layers, q // head_dim, kv // head_dim, head_dim, e)
