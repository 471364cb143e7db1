"""An independent Grok-1 forward pass in plain PyTorch (float64), written from the documented semantics of
xai-org/grok-1's model.py; it imports nothing from vLLM or from the plugin.

It reads an hpcai-naming checkpoint directory (config.json + model.safetensors). Each Grok-1 trait can be
switched off through `Traits`, to prove that the plugin's agreement with the reference depends on it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass(frozen=True)
class Traits:
    """Each field True = the original Grok-1 behaviour; False = the trait switched off (or done the other
    common way)."""

    attn_softcap: bool = True  # 30 * tanh(s / 30) on attention scores
    attn_multiplier: bool = True  # scores * attn_output_multiplier (off: no scaling at all)
    embedding_multiplier: bool = True  # input embeddings * embedding_multiplier_scale
    output_multiplier: bool = True  # logits * output_multiplier_scale
    post_norms: bool = True  # post_attn_norm and post_moe_norm on the sub-block outputs
    final_norm: bool = True  # the norm before the output projection
    norm_weight_plain: bool = True  # w * x / rms(x) (off: (1 + w) * x / rms(x), the Gemma way)
    softmax_over_all_experts: bool = True  # gates are raw probabilities (off: softmax over the top-k only)
    weighted_experts: bool = True  # expert outputs weighted by their gates (off: plain sum)
    top_k: bool = True  # config's num_experts_per_tok experts per token (off: only the best one)
    gelu_tanh: bool = True  # JAX's tanh-approximated GELU (off: exact erf GELU)
    rope_neox: bool = True  # rotate-half RoPE over the full head (off: interleaved pairs, GPT-J style)


class Grok1Reference:
    def __init__(self, checkpoint: Path, config_overrides: dict | None = None) -> None:
        checkpoint = Path(checkpoint)
        self.config = json.loads((checkpoint / "config.json").read_text()) | (config_overrides or {})
        self.weights = {
            name: t.to(torch.float64) for name, t in load_file(checkpoint / "model.safetensors").items()
        }
        c = self.config
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c["num_key_value_heads"]
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.num_heads
        self.rope_theta = c.get("rope_theta", 10000.0)
        self.eps = c["rms_norm_eps"]

    def with_config(self, **overrides: object) -> Grok1Reference:
        """The same weights under a changed config (knobs read at call time, e.g. router_renormalize)."""
        changed = copy.copy(self)
        changed.config = self.config | overrides
        return changed

    # --- building blocks ------------------------------------------------------------------------------

    def _w(self, name: str) -> torch.Tensor:
        return self.weights[name]

    def _rms_norm(self, x: torch.Tensor, weight_name: str, traits: Traits) -> torch.Tensor:
        weight = self._w(weight_name)
        if not traits.norm_weight_plain:
            weight = 1.0 + weight
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def _rope(self, x: torch.Tensor, traits: Traits) -> torch.Tensor:
        """x: [T, heads, head_dim], positions 0..T-1."""
        t = x.shape[0]
        inv_freq = 1.0 / self.rope_theta ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        )
        phase = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
        if traits.rope_neox:
            cos = torch.cat([phase.cos(), phase.cos()], -1)[:, None, :]
            sin = torch.cat([phase.sin(), phase.sin()], -1)[:, None, :]
            half = self.head_dim // 2
            rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
            return x * cos + rotated * sin
        even, odd = x[..., 0::2], x[..., 1::2]
        cos, sin = phase.cos()[:, None, :], phase.sin()[:, None, :]
        out = torch.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def _attention(self, x: torch.Tensor, prefix: str, traits: Traits) -> torch.Tensor:
        t = x.shape[0]
        q = (x @ self._w(f"{prefix}.q_proj.weight").T).view(t, self.num_heads, self.head_dim)
        k = (x @ self._w(f"{prefix}.k_proj.weight").T).view(t, self.num_kv_heads, self.head_dim)
        v = (x @ self._w(f"{prefix}.v_proj.weight").T).view(t, self.num_kv_heads, self.head_dim)
        q, k = self._rope(q, traits), self._rope(k, traits)
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=1)  # query head h reads KV head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k)
        if traits.attn_multiplier:
            scores = scores * self.config["attn_output_multiplier"]
        cap = self.config["max_attn_value"]
        if traits.attn_softcap and cap:
            scores = cap * torch.tanh(scores / cap)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("hts,shd->thd", probs, v).reshape(t, self.num_heads * self.head_dim)
        return out @ self._w(f"{prefix}.o_proj.weight").T

    def _gelu(self, x: torch.Tensor, traits: Traits) -> torch.Tensor:
        tanh_form = traits.gelu_tanh and self.config.get("hidden_act", "gelu_tanh") == "gelu_tanh"
        if tanh_form:
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def _moe(self, x: torch.Tensor, prefix: str, traits: Traits) -> torch.Tensor:
        c = self.config
        logits = x @ self._w(f"{prefix}.gate.weight").T  # [T, E]
        router_cap = c.get("router_logit_softcapping") or 0.0
        if router_cap:
            logits = router_cap * torch.tanh(logits / router_cap)
        k = c["num_experts_per_tok"] if traits.top_k else 1
        probs = torch.softmax(logits, dim=-1)
        gates, experts = torch.topk(probs, k, dim=-1)
        if c.get("router_renormalize") or not traits.softmax_over_all_experts:
            gates = gates / gates.sum(-1, keepdim=True)
        if not traits.weighted_experts:
            gates = torch.ones_like(gates)
        out = torch.zeros_like(x)
        for token in range(x.shape[0]):
            for slot in range(k):
                e = f"{prefix}.experts.{int(experts[token, slot])}"
                h = x[token]
                inner = self._gelu(self._w(f"{e}.linear.weight") @ h, traits) * (
                    self._w(f"{e}.linear_v.weight") @ h
                )
                out[token] += gates[token, slot] * (self._w(f"{e}.linear_1.weight") @ inner)
        return out

    # --- the model ------------------------------------------------------------------------------------

    def logits(self, tokens: list[int], traits: Traits = Traits()) -> torch.Tensor:
        c = self.config
        h = self._w("model.embed_tokens.weight")[torch.tensor(tokens)]
        if traits.embedding_multiplier:
            h = h * c["embedding_multiplier_scale"]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}"
            attn = self._attention(self._rms_norm(h, f"{p}.pre_attn_norm.scale", traits), f"{p}.attn", traits)
            h = h + (self._rms_norm(attn, f"{p}.post_attn_norm.scale", traits) if traits.post_norms else attn)
            moe = self._moe(self._rms_norm(h, f"{p}.pre_moe_norm.scale", traits), f"{p}.moe_block", traits)
            h = h + (self._rms_norm(moe, f"{p}.post_moe_norm.scale", traits) if traits.post_norms else moe)
        if traits.final_norm:
            h = self._rms_norm(h, "model.norm.scale", traits)
        head = (
            self._w("model.embed_tokens.weight")
            if c.get("tie_word_embeddings", True)
            else self._w("lm_head.weight")
        )
        logits = h @ head.T
        if traits.output_multiplier:
            logits = logits * c["output_multiplier_scale"]
        return logits

    def logprobs(self, tokens: list[int], traits: Traits = Traits()) -> torch.Tensor:
        """[len(tokens), vocab]: row t is the distribution of the token after tokens[: t + 1]."""
        return torch.log_softmax(self.logits(tokens, traits), dim=-1)

    def greedy(self, prompt: list[int], max_tokens: int, traits: Traits = Traits()) -> list[int]:
        tokens = list(prompt)
        for _ in range(max_tokens):
            tokens.append(int(self.logits(tokens, traits)[-1].argmax()))
        return tokens[len(prompt) :]
