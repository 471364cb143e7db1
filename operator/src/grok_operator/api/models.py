"""Model shapes the planner sizes: known profiles, or a custom shape from the resource's spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grok_operator.api.spec import ModelSpec


@dataclass(frozen=True)
class ModelShape:
    """The numbers that decide memory: weights (parameter count) and KV cache (layers, KV heads)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int = 1
    experts_per_token: int = 1
    expert_ffn: int = 0
    max_context: int = 8192

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden  # tied input/output embedding (Grok-1)

    @property
    def parameters(self) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        experts = self.experts * 3 * self.hidden * self.expert_ffn  # gated: linear, linear_v, linear_1
        router = self.hidden * self.experts if self.experts > 1 else 0
        norms = 4 * self.hidden
        return self.layers * (attention + experts + router + norms) + self.embedding_parameters + self.hidden

    def kv_bytes_per_token(self, kv_dtype_bytes: int, tensor_parallel: int) -> float:
        """KV-cache bytes of one token on one GPU (KV heads split across ranks, replicated past one each)."""
        kv_heads_per_rank = max(1, self.kv_heads // tensor_parallel)
        return self.layers * 2 * kv_heads_per_rank * self.head_dim * kv_dtype_bytes

    def valid_tensor_parallel(self, tp: int) -> bool:
        """vLLM splits query heads evenly and KV heads evenly (or replicates them when tp > kv_heads)."""
        if tp < 1 or self.heads % tp:
            return False
        return self.kv_heads % tp == 0 or tp % self.kv_heads == 0


GROK_1 = ModelShape(
    layers=64,
    hidden=6144,
    heads=48,
    kv_heads=8,
    head_dim=128,
    vocab=131072,
    experts=8,
    experts_per_token=2,
    expert_ffn=32768,
    max_context=8192,
)
# The shapes `grok-make-tiny-model` writes (for the CPU demo and tests; grok_server.checkpoints.tiny).
GROK_1_TINY = ModelShape(
    layers=2,
    hidden=128,
    heads=4,
    kv_heads=2,
    head_dim=32,
    vocab=1024,
    experts=8,
    experts_per_token=2,
    expert_ffn=256,
    max_context=2048,
)
GROK_1_SMALL = ModelShape(
    layers=6,
    hidden=512,
    heads=8,
    kv_heads=2,
    head_dim=64,
    vocab=4096,
    experts=8,
    experts_per_token=2,
    expert_ffn=1024,
    max_context=8192,
)

PROFILES: dict[str, ModelShape] = {"grok-1": GROK_1, "grok-1-tiny": GROK_1_TINY, "grok-1-small": GROK_1_SMALL}

_SHAPE_FIELDS = {
    "layers": "layers",
    "hiddenSize": "hidden",
    "heads": "heads",
    "kvHeads": "kv_heads",
    "headDim": "head_dim",
    "vocabSize": "vocab",
    "experts": "experts",
    "expertsPerToken": "experts_per_token",
    "expertIntermediateSize": "expert_ffn",
    "maxContext": "max_context",
}


def model_shape(model_spec: dict[str, Any]) -> ModelShape:
    """The shape named by `spec.model.profile`, or given field by field in `spec.model.shape`."""
    profile = model_spec.get("profile") or ModelSpec.profile
    if profile == "custom":
        shape = model_spec.get("shape") or {}
        missing = [k for k in ("layers", "hiddenSize", "heads", "kvHeads", "vocabSize") if k not in shape]
        if missing:
            raise ValueError(
                f"spec.model.shape is missing {', '.join(missing)} (required with profile: custom)"
            )
        kwargs = {_SHAPE_FIELDS[k]: int(v) for k, v in shape.items() if k in _SHAPE_FIELDS}
        if kwargs["heads"] < 1 or kwargs["kv_heads"] < 1 or kwargs["heads"] % kwargs["kv_heads"]:
            raise ValueError(
                f"spec.model.shape: heads ({kwargs['heads']}) must be a positive multiple of kvHeads "
                f"({kwargs['kv_heads']})"
            )
        kwargs.setdefault("head_dim", kwargs["hidden"] // kwargs["heads"])
        if kwargs["head_dim"] < 1:
            raise ValueError(
                f"spec.model.shape: hiddenSize ({kwargs['hidden']}) is smaller than heads "
                f"({kwargs['heads']}); give headDim"
            )
        return ModelShape(**kwargs)
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown model profile {profile!r}; known: {', '.join(PROFILES)}, custom") from None
