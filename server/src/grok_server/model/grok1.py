"""Inference-only Grok-1 (xAI) for vLLM, on vLLM's tensor-parallel layers and fused MoE kernels.

Semantics follow xai-org/grok-1's model.py (see the config module for the knobs other ports used):
- embeddings are scaled by `embedding_multiplier_scale`, logits by `output_multiplier_scale`, and the output
  projection is tied to the input embedding;
- four RMSNorms per layer (weight applied as `w * x / rms(x)`, computed in fp32 by vLLM's RMSNorm):
  `h += post_attn_norm(attn(pre_attn_norm(h)))`, `h += post_moe_norm(moe(pre_moe_norm(h)))`;
- attention scores are multiplied by `attn_output_multiplier`, then soft-capped at `max_attn_value`;
- the router is an fp32 `x @ W` followed by a softmax over all experts; the top-k probabilities are the gate
  weights as they are (no renormalisation, no router cap by default);
- experts compute `linear_1(gelu_tanh(linear(x)) * linear_v(x))` (vLLM's w1, w3 and w2).

One implementation serves both checkpoint namings (hpcai-tech's `attn` / `moe_block` / `.scale` and the
Mixtral-style `self_attn` / `block_sparse_moe` / `w1..w3` / `.weight`): `GROK1_WEIGHTS_MAPPER` renames either
onto this module tree.

One difference from the JAX code, by design: it hides keys whose token id is the pad id (0) from attention,
for its padded batches; vLLM never pads inside a sequence, so a prompt that itself contains token 0 is
attended to in full here.
"""

# No `from __future__ import annotations`: support_torch_compile reads the forward() annotations at runtime.
import re
from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig, get_current_vllm_config
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, GateLinear
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    WeightsMapper,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.platforms import current_platform
from vllm.sequence import IntermediateTensors

from grok_common.attention import check_built_backend
from grok_server.model.config import Grok1Config, as_grok1_config
from grok_server.model.device import current_device

# Under vLLM's logger, which vLLM configures in its engine processes (a logger of our own would be silent).
logger = init_logger("vllm.plugins.grok1")

# Checkpoint names -> this module tree. Both namings can be mapped by one mapper: their names are disjoint.
GROK1_WEIGHTS_MAPPER = WeightsMapper(
    orig_to_new_regex={
        # Mixtral-style ports.
        re.compile(r"\.self_attn\."): ".attn.",
        re.compile(r"\.block_sparse_moe\."): ".moe_block.",
        # hpcai-tech / xAI expert names: linear = gate (w1), linear_v = up (w3), linear_1 = down (w2).
        re.compile(r"\.experts\.(\d+)\.linear\."): r".experts.\1.w1.",
        re.compile(r"\.experts\.(\d+)\.linear_v\."): r".experts.\1.w3.",
        re.compile(r"\.experts\.(\d+)\.linear_1\."): r".experts.\1.w2.",
        # hpcai-tech names RMSNorm weights `scale` (as haiku did).
        re.compile(r"norm\.scale$"): "norm.weight",
    },
    orig_to_new_stacked={
        ".q_proj": (".qkv_proj", "q"),
        ".k_proj": (".qkv_proj", "k"),
        ".v_proj": (".qkv_proj", "v"),
    },
)


def softmax_topk_routing(
    hidden_states: torch.Tensor, gating_output: torch.Tensor, topk: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the softmax over all experts: the same math as vLLM's CPU router, which computes
    non-renormalised gates through a logsumexp that costs several times more than the rest of routing."""
    weights, ids = torch.topk(torch.softmax(gating_output.float(), dim=-1), topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


class Grok1MoE(nn.Module):
    """Softmax router over all experts (fp32), top-k raw probabilities as gate weights, GELU-gated experts.

    Experts are sharded over tensor-parallel ranks by vLLM's fused MoE layer, which also all-reduces the
    output.
    """

    def __init__(
        self,
        config: Grok1Config,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.router_logit_softcapping = float(config.router_logit_softcapping or 0.0)
        # The original computes routing in fp32 whatever the activation dtype.
        self.gate = GateLinear(
            config.hidden_size,
            config.num_experts,
            out_dtype=torch.float32,
            force_fp32_compute=True,
            prefix=f"{prefix}.gate",
        )
        self.experts = FusedMoEFactory(
            num_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            renormalize=bool(config.router_renormalize),
            scoring_func="softmax",
            # GPUs keep vLLM's fused top-k softmax kernel.
            custom_routing_function=softmax_topk_routing if current_platform.is_cpu() else None,
            activation=config.hidden_act,
            quant_config=quant_config,
            router_logits_dtype=torch.float32,
            prefix=f"{prefix}.experts",
            ckpt_names=("w1", "w2", "w3"),
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        orig_shape = hidden_states.shape
        hidden_states = hidden_states.view(-1, self.hidden_size)
        router_logits, _ = self.gate(hidden_states)
        if self.router_logit_softcapping > 0:
            cap = self.router_logit_softcapping
            router_logits = cap * torch.tanh(router_logits / cap)
        return self.experts(hidden_states, router_logits).view(orig_shape)


class Grok1Attention(nn.Module):
    def __init__(
        self,
        config: Grok1Config,
        cache_config: CacheConfig | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = config.num_key_value_heads
        if self.total_num_heads % tp_size:
            raise ValueError(
                f"tensor parallel size {tp_size} does not divide the {self.total_num_heads} query heads"
            )
        if self.total_num_kv_heads % tp_size and tp_size % self.total_num_kv_heads:
            raise ValueError(
                f"tensor parallel size {tp_size} and the {self.total_num_kv_heads} KV heads do not divide "
                "one another"
            )
        self.num_heads = self.total_num_heads // tp_size
        # With more ranks than KV heads, each KV head is replicated.
        self.num_kv_heads = max(1, self.total_num_kv_heads // tp_size)
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            self.total_num_heads,
            self.total_num_kv_heads,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim,
            config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=config.max_position_embeddings,
            rope_parameters=config.rope_parameters,
            is_neox_style=True,
        )
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            scale=config.attn_output_multiplier,
            num_kv_heads=self.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            logits_soft_cap=config.max_attn_value or None,
            prefix=f"{prefix}.attn",
        )
        if config.max_attn_value:
            # Whatever chose it (grok-server, engine arguments, vLLM's own fallback): never run uncapped.
            trtllm_off = get_current_vllm_config().attention_config.use_trtllm_attention is False
            backend = self.attn.attn_backend.get_name()
            check_built_backend(backend, current_device(), trtllm_off)
            logger.info_once("Grok-1 attention backend %s, which applies the logit soft-cap (%s)", backend,
                             config.max_attn_value)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        attn_output = self.attn(q, k, v)
        output, _ = self.o_proj(attn_output)
        return output


class Grok1DecoderLayer(nn.Module):
    def __init__(
        self,
        config: Grok1Config,
        cache_config: CacheConfig | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.attn = Grok1Attention(config, cache_config, quant_config, prefix=f"{prefix}.attn")
        self.moe_block = Grok1MoE(config, quant_config, prefix=f"{prefix}.moe_block")
        eps = config.rms_norm_eps
        self.pre_attn_norm = RMSNorm(config.hidden_size, eps=eps)
        self.post_attn_norm = RMSNorm(config.hidden_size, eps=eps)
        self.pre_moe_norm = RMSNorm(config.hidden_size, eps=eps)
        self.post_moe_norm = RMSNorm(config.hidden_size, eps=eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add of each sub-block is fused into the next pre-norm.
        if residual is None:
            residual = hidden_states
            hidden_states = self.pre_attn_norm(hidden_states)
        else:
            hidden_states, residual = self.pre_attn_norm(hidden_states, residual)
        hidden_states = self.attn(positions, hidden_states)
        hidden_states = self.post_attn_norm(hidden_states)

        hidden_states, residual = self.pre_moe_norm(hidden_states, residual)
        hidden_states = self.moe_block(hidden_states)
        hidden_states = self.post_moe_norm(hidden_states)
        return hidden_states, residual


@support_torch_compile
class Grok1Model(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = as_grok1_config(vllm_config.model_config.hf_config)
        cache_config = vllm_config.cache_config
        quant_config = vllm_config.quant_config
        self.config = config
        self.embedding_multiplier_scale = float(config.embedding_multiplier_scale)

        pp_group = get_pp_group()
        if pp_group.is_first_rank or (config.tie_word_embeddings and pp_group.is_last_rank):
            self.embed_tokens = VocabParallelEmbedding(
                config.vocab_size,
                config.hidden_size,
                prefix=f"{prefix}.embed_tokens",
            )
        else:
            self.embed_tokens = PPMissingLayer()

        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: Grok1DecoderLayer(config, cache_config, quant_config, prefix=prefix),
            prefix=f"{prefix}.layers",
        )
        if pp_group.is_last_rank:
            self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        else:
            self.norm = PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids) * self.embedding_multiplier_scale

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            if inputs_embeds is not None:
                hidden_states = inputs_embeds
            else:
                assert input_ids is not None
                hidden_states = self.embed_input_ids(input_ids)
            residual = None
        else:
            assert intermediate_tensors is not None
            hidden_states = intermediate_tensors["hidden_states"]
            residual = intermediate_tensors["residual"]
        for layer in islice(self.layers, self.start_layer, self.end_layer):
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Grok1ForCausalLM(nn.Module, SupportsPP):
    """Registered for both `Grok1ModelForCausalLM` (hpcai-tech) and `Grok1ForCausalLM` (Mixtral-style)."""

    hf_to_vllm_mapper = GROK1_WEIGHTS_MAPPER
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = as_grok1_config(vllm_config.model_config.hf_config)
        quant_config = vllm_config.quant_config
        self.config = config
        self.quant_config = quant_config
        self.model = Grok1Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))

        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(
                config.vocab_size,
                config.hidden_size,
                quant_config=quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
            self.logits_processor = LogitsProcessor(config.vocab_size, scale=config.output_multiplier_scale)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # With tied embeddings lm_head.weight aliases model.embed_tokens.weight: the loader fills it once and
        # skips a checkpoint's own lm_head.weight copy.
        loader = AutoWeightsLoader(self)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
