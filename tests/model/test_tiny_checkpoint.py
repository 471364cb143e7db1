"""grok-make-tiny-model: deterministic, Grok-1-shaped, the same weights in every naming and format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer

from grok_server.checkpoints.naming import hpcai_to_mixtral
from grok_server.checkpoints.tiny import (
    SIZES,
    grok1_config,
    main,
    make_tiny_checkpoint,
    parameter_count,
    round_to_bfloat16,
)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_grok_checkpoint: Path, tmp_path: Path) -> None:
    again = make_tiny_checkpoint(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_grok_checkpoint / name).read_bytes(), name
    other = load_file(make_tiny_checkpoint(tmp_path / "other", seed=1) / "model.safetensors")
    ours = load_file(tiny_grok_checkpoint / "model.safetensors")
    assert not np.array_equal(
        other["model.layers.0.attn.q_proj.weight"], ours["model.layers.0.attn.q_proj.weight"]
    )


def test_mixtral_naming_and_bin_format_hold_the_same_weights(
    tiny_grok_checkpoint: Path, tmp_path: Path
) -> None:
    path = make_tiny_checkpoint(tmp_path / "mixtral", naming="mixtral", fmt="bin")
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    direct = load_file(tiny_grok_checkpoint / "model.safetensors")
    assert set(state) == {hpcai_to_mixtral(name) for name in direct}
    for name, values in direct.items():
        np.testing.assert_array_equal(state[hpcai_to_mixtral(name)].numpy(), values)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["Grok1ForCausalLM"]


def test_sizes_are_grok1_shaped() -> None:
    assert 1.5e6 <= parameter_count("tiny") <= 2.5e6
    assert 50e6 <= parameter_count("small") <= 100e6
    for size in SIZES:
        config = grok1_config(size, "hpcai")
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        assert head_dim >= 32 and head_dim in (32, 64, 80, 96, 112, 128)  # CPU attention's head sizes
        assert config["num_experts"] == 8 and config["num_experts_per_tok"] == 2
        assert config["num_attention_heads"] % config["num_key_value_heads"] == 0
        # Grok-1's multipliers, in the relation they have to its shapes.
        assert config["embedding_multiplier_scale"] == pytest.approx(config["hidden_size"] ** 0.5)
        assert config["attn_output_multiplier"] == pytest.approx(head_dim**-0.5)
        assert "rope_theta" not in config and "head_dim" not in config  # like hpcai-tech's config.json


def test_config_has_the_hpcai_layout(tiny_grok_checkpoint: Path) -> None:
    config = json.loads((tiny_grok_checkpoint / "config.json").read_text())
    published = json.loads((Path(__file__).parent / "data" / "hpcai_grok1_config.json").read_text())
    assert set(published) - set(config) == {"auto_map", "transformers_version"}
    assert config["model_type"] == "grok-1" and config["architectures"] == ["Grok1ModelForCausalLM"]


def test_weights_are_int8_times_bfloat16_scales(tiny_grok_checkpoint: Path) -> None:
    weight = load_file(tiny_grok_checkpoint / "model.safetensors")[
        "model.layers.1.moe_block.experts.2.linear.weight"
    ]
    # Per output channel (row): every value is k * scale with |k| <= 127 and scale a bfloat16.
    for row in weight[:8]:
        amax = float(np.abs(row).max())
        candidates = (np.float32(amax / k) for k in range(127, 63, -1))
        bf16_scales = [s for s in candidates if round_to_bfloat16(np.array([s]))[0] == s]
        assert any(np.array_equal(row / s, np.rint(row / s)) for s in bf16_scales)


def test_tokenizer_is_local_and_grok_like(tiny_grok_checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_grok_checkpoint)
    assert len(tokenizer) == grok1_config("tiny", "hpcai")["vocab_size"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "Hello, world! The quick brown fox jumps over the lazy dog 42 times."
    ids = tokenizer.encode(text)
    assert len(ids) < 0.75 * len(text)  # trained merges, not bytes
    assert tokenizer.decode(ids) == text


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert (
        main(
            [
                str(out),
                "--naming",
                "mixtral",
                "--set",
                "router_renormalize=true",
                "--set",
                "max_attn_value=20",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["router_renormalize"] is True and config["max_attn_value"] == 20
    assert "1,805,440 parameters" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(out), "--size", "huge"])
