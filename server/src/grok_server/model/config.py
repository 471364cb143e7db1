"""The Grok-1 configuration class (model_type "grok-1").

It reads hpcai-tech/grok-1's `config.json` unchanged: that file has no `rope_theta` and no `head_dim`, so both
are derived here (RoPE base 10000, head dim = hidden / heads). The defaults are the original Grok-1 model.

Extra knobs, all defaulting to the original xAI semantics, cover what other ports did differently:
- `router_logit_softcapping`: cap router logits at `c * tanh(x / c)` before the softmax (0 = off; vLLM's old
  port and SGLang used 30).
- `router_renormalize`: renormalise the top-k gate weights to sum to one (vLLM's old port did).
- `hidden_act`: "gelu_tanh" (JAX's default GELU, the original) or "gelu" (exact erf GELU).
- `tie_word_embeddings`: false loads a separate `lm_head.weight`.

The class lives at module level: vLLM pickles the config to its worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

GROK1_MODEL_TYPE = "grok-1"
SUPPORTED_ACTIVATIONS = ("gelu_tanh", "gelu")


class Grok1Config(PretrainedConfig):
    model_type: ClassVar[str] = GROK1_MODEL_TYPE
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    default_theta: ClassVar[float] = 10000.0

    vocab_size: int = 131072
    hidden_size: int = 6144
    intermediate_size: int = 32768
    num_hidden_layers: int = 64
    num_attention_heads: int = 48
    num_key_value_heads: int = 8
    head_dim: int | None = None
    attn_output_multiplier: float = 0.08838834764831845
    max_attn_value: float = 30.0
    max_position_embeddings: int = 8192
    embedding_multiplier_scale: float = 78.38367176906169
    output_multiplier_scale: float = 0.5773502691896257
    rms_norm_eps: float = 1e-5
    num_experts: int = 8
    num_experts_per_tok: int = 2
    router_logit_softcapping: float = 0.0
    router_renormalize: bool = False
    hidden_act: str = "gelu_tanh"
    rope_parameters: dict[str, Any] | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {SUPPORTED_ACTIVATIONS}, got {self.hidden_act!r}")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and {self.num_experts}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}"
            )
        super().__post_init__(**kwargs)
        # The original model has no rope_theta in its config: RoPE base 10000 unless a config says otherwise.
        if not self.rope_parameters:
            self.rope_parameters = {"rope_type": "default", "rope_theta": self.default_theta}
        self.rope_parameters.setdefault("rope_type", "default")
        self.rope_parameters.setdefault("rope_theta", self.default_theta)


# Keys whose defaults in another config class (a Mixtral-typed port) would change Grok-1's outputs silently.
NOT_BORROWED = ("rope_parameters", "rope_theta", "max_position_embeddings", "tie_word_embeddings")


def as_grok1_config(config: PretrainedConfig) -> Grok1Config:
    """A Grok1Config for any config a Grok-1 checkpoint may come with.

    Some Mixtral-style ports ship `model_type: "mixtral"` (so transformers builds a MixtralConfig) with
    Grok-1's extra keys; missing Grok-1 keys take Grok-1's values, the attention multiplier 1/sqrt(head_dim).
    """
    if isinstance(config, Grok1Config):
        return config
    values = config.to_dict()
    # A config class fills what the file left out with its own defaults, which are not Grok-1's for these
    # (Mixtral: RoPE base 1e6, 128k positions, untied embeddings). Equal to the class default: left out.
    class_defaults = type(config)().to_dict()
    for key in NOT_BORROWED:
        if key in values and values[key] == class_defaults.get(key):
            del values[key]
    if "num_experts" not in values and "num_local_experts" in values:
        values["num_experts"] = values["num_local_experts"]
    if values.get("hidden_act") not in SUPPORTED_ACTIVATIONS:
        logger.warning(
            "Grok-1 experts use GELU; ignoring hidden_act=%r from a %s",
            values.get("hidden_act"),
            type(config).__name__,
        )
        values.pop("hidden_act", None)
    if "attn_output_multiplier" not in values:
        head_dim = values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
        values["attn_output_multiplier"] = head_dim**-0.5
    fields = {field.name for field in dataclasses.fields(Grok1Config)}
    return Grok1Config(**{key: value for key, value in values.items() if key in fields})
