"""The config class, the vLLM plugin and the checkpoint-name mapping, without starting an engine."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers import AutoConfig, MixtralConfig

from grok_server.checkpoints.naming import Grok1Shape, hpcai_tensor_specs, hpcai_to_mixtral
from grok_server.model import GROK1_ARCHITECTURES
from grok_server.model.config import Grok1Config, as_grok1_config
from grok_server.plugin import register

HPCAI_CONFIG = Path(__file__).parent / "data" / "hpcai_grok1_config.json"
# Keys transformers keeps under another name or drops by design.
_RENAMED_OR_DROPPED = {"torch_dtype", "transformers_version", "auto_map", "model_type"}


@pytest.fixture(scope="module")
def registered() -> None:
    register()
    register()  # idempotent: vLLM calls it in every process, possibly more than once


def test_entry_point_is_declared() -> None:
    (plugin,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "grok1"]
    assert plugin.value == "grok_server.plugin:register"
    assert plugin.load() is register


def test_the_published_hpcai_config_loads_unchanged(registered: None, tmp_path: Path) -> None:
    from vllm.transformers_utils.config import get_config

    shutil.copyfile(HPCAI_CONFIG, tmp_path / "config.json")
    original = json.loads(HPCAI_CONFIG.read_text())
    for config in (AutoConfig.from_pretrained(tmp_path), get_config(str(tmp_path), trust_remote_code=False)):
        assert isinstance(config, Grok1Config)
        for key, value in original.items():
            if key not in _RENAMED_OR_DROPPED:
                assert getattr(config, key) == value, key
        assert str(config.dtype) == "torch.bfloat16"
        # Derived, as the file has neither.
        assert config.head_dim == 128
        assert config.rope_parameters["rope_theta"] == 10000.0
        # Defaults are the original model's.
        assert config.hidden_act == "gelu_tanh"
        assert config.router_logit_softcapping == 0.0
        assert config.router_renormalize is False


def test_plugin_registers_both_architectures(registered: None) -> None:
    from vllm import ModelRegistry

    from grok_server.model.grok1 import Grok1ForCausalLM

    for arch in GROK1_ARCHITECTURES:
        assert arch in ModelRegistry.get_supported_archs()
        assert ModelRegistry._try_load_model_cls(arch) is Grok1ForCausalLM


def test_both_namings_map_onto_the_same_parameters() -> None:
    from grok_server.model.grok1 import GROK1_WEIGHTS_MAPPER

    shape = Grok1Shape(1024, 128, 256, 2, 4, 2, 32, 8)
    mapped_hpcai, mapped_mixtral = set(), set()
    for spec in hpcai_tensor_specs(shape):
        mapped_hpcai.add(GROK1_WEIGHTS_MAPPER._map_name_with_shard(spec.name))
        mapped_mixtral.add(GROK1_WEIGHTS_MAPPER._map_name_with_shard(hpcai_to_mixtral(spec.name)))
    assert mapped_hpcai == mapped_mixtral
    assert ("model.layers.1.attn.qkv_proj.weight", "k") in mapped_hpcai
    assert ("model.layers.0.moe_block.experts.7.w3.weight", None) in mapped_hpcai  # linear_v = up
    assert ("model.layers.0.moe_block.experts.7.w2.weight", None) in mapped_hpcai  # linear_1 = down
    assert ("model.layers.0.moe_block.experts.7.w1.weight", None) in mapped_hpcai  # linear = gate
    assert ("model.layers.1.post_moe_norm.weight", None) in mapped_hpcai
    assert ("model.norm.weight", None) in mapped_hpcai
    # fp8 checkpoints' scales follow their weights.
    assert GROK1_WEIGHTS_MAPPER.map_name("model.layers.0.moe_block.experts.3.linear_v.weight_scale") == (
        "model.layers.0.moe_block.experts.3.w3.weight_scale"
    )


def test_a_mixtral_typed_grok_config_is_accepted() -> None:
    config = MixtralConfig(
        vocab_size=131072,
        hidden_size=6144,
        intermediate_size=32768,
        num_hidden_layers=64,
        num_attention_heads=48,
        num_key_value_heads=8,
        head_dim=128,
        num_local_experts=8,
        rope_theta=10000.0,
        embedding_multiplier_scale=78.38367176906169,
        output_multiplier_scale=0.5773502691896257,
    )
    grok = as_grok1_config(config)
    assert grok.num_experts == 8
    assert grok.hidden_act == "gelu_tanh"  # Mixtral's silu is not Grok-1's
    assert grok.attn_output_multiplier == pytest.approx(128**-0.5)
    assert grok.embedding_multiplier_scale == pytest.approx(78.38367176906169)
    assert grok.rope_parameters["rope_theta"] == 10000.0


def test_a_mixtral_typed_config_does_not_lend_grok_mixtrals_defaults() -> None:
    # Keys the port left out come back from MixtralConfig with Mixtral's values (RoPE base 1e6, 128k
    # positions, untied embeddings): each would silently change Grok-1's outputs. Grok-1's values apply.
    config = MixtralConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8)
    grok = as_grok1_config(config)
    assert grok.rope_parameters["rope_theta"] == 10000.0
    assert grok.max_position_embeddings == 8192
    assert grok.tie_word_embeddings is True
    assert (grok.hidden_size, grok.num_key_value_heads) == (64, 2)  # what the port gives stays


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_act": "silu"}, "hidden_act"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"num_key_value_heads": 5}, "multiple of num_key_value_heads"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ],
)
def test_config_rejects_impossible_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Grok1Config(**overrides)


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 16), st.just(8)), elements=st.floats(-30, 30, width=32)
    ),
    renormalize=st.booleans(),
)
def test_cpu_routing_takes_the_top2_of_a_softmax_over_all_experts(
    logits: np.ndarray, renormalize: bool
) -> None:
    from grok_server.model.grok1 import softmax_topk_routing

    x = torch.from_numpy(logits)
    weights, ids = softmax_topk_routing(x, x, 2, renormalize)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    probs = torch.softmax(x.double(), dim=-1)
    chosen = probs.gather(-1, ids.long())
    assert (chosen.min(-1).values >= probs.topk(2, dim=-1).values[:, 1] - 1e-7).all()
    expected = chosen / chosen.sum(-1, keepdim=True) if renormalize else chosen
    torch.testing.assert_close(weights.double(), expected, atol=1e-6, rtol=1e-5)
