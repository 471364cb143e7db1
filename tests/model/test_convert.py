"""grok-convert on tiny ckpt-0 checkpoints written by the generator: exact, streaming, resumable, strict."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from grok_server.checkpoints import convert as convert_module
from grok_server.checkpoints.convert import STATE_FILE, ConversionError, convert, main
from grok_server.checkpoints.naming import hpcai_to_mixtral
from grok_server.checkpoints.tiny import make_tiny_checkpoint
from grok_server.checkpoints.xai import QuantizedWeight8bit, XaiFormatError, dumps_shard, load_shard

TINY_HEAD_DIM = 32


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_xai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("xai") / "tiny", fmt="xai")


@pytest.fixture
def xai_copy(tiny_xai: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(tiny_xai, tmp_path / "damaged"))


def _load_all(directory: Path) -> dict[str, np.ndarray]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(directory / shard))
    assert set(tensors) == set(index["weight_map"])
    return tensors


def test_float32_conversion_equals_the_directly_written_checkpoint(
    tiny_xai: Path, tiny_grok_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "converted"
    report = convert(
        tiny_xai, out, dtype="float32", head_dim=TINY_HEAD_DIM, tokenizer_dir=tiny_xai, log=_quiet
    )
    assert report.tensors == 68 and len(report.shards_written) == 3 and not report.shards_skipped
    converted, direct = _load_all(out), load_file(tiny_grok_checkpoint / "model.safetensors")
    assert set(converted) == set(direct)
    for name, values in direct.items():
        np.testing.assert_array_equal(converted[name], values, err_msg=name)
    config = json.loads((out / "config.json").read_text())
    expected = json.loads((tiny_grok_checkpoint / "config.json").read_text())
    for key in (
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_experts",
        "vocab_size",
        "attn_output_multiplier",
        "embedding_multiplier_scale",
        "output_multiplier_scale",
        "architectures",
    ):
        assert config[key] == pytest.approx(expected[key]), key
    assert (out / "tokenizer.json").read_bytes() == (tiny_grok_checkpoint / "tokenizer.json").read_bytes()


def test_bfloat16_mixtral_conversion(tiny_xai: Path, tiny_grok_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert main([str(tiny_xai), str(out), "--head-dim", str(TINY_HEAD_DIM), "--naming", "mixtral"]) == 0
    direct = load_file(tiny_grok_checkpoint / "model.safetensors")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {hpcai_to_mixtral(name) for name in direct}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Grok1ForCausalLM"]
    name = "model.layers.1.moe_block.experts.5.linear_1.weight"
    with safe_open(str(out / index["weight_map"][hpcai_to_mixtral(name)]), framework="pt") as f:
        converted = f.get_tensor(hpcai_to_mixtral(name))
    assert str(converted.dtype) == "torch.bfloat16"
    np.testing.assert_allclose(converted.float().numpy(), direct[name], rtol=2**-8, atol=0)


def test_interrupted_conversion_resumes_without_redoing_finished_shards(
    tiny_xai: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    written: list[str] = []

    def interrupt_after_first(shard: str) -> None:
        written.append(shard)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(
            tiny_xai,
            out,
            dtype="float32",
            head_dim=TINY_HEAD_DIM,
            log=_quiet,
            on_shard_done=interrupt_after_first,
        )
    first = out / written[0]
    first_mtime = first.stat().st_mtime_ns
    assert not (out / "model.safetensors.index.json").exists()  # not finished: no index yet
    # A shard being written when the process died leaves a .partial file behind; it is discarded.
    (out / "model-00002-of-00003.safetensors.partial").write_bytes(b"half a shard")

    report = convert(tiny_xai, out, dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    assert report.shards_skipped == written
    assert len(report.shards_written) == 2
    assert first.stat().st_mtime_ns == first_mtime
    assert not list(out.glob("*.partial"))
    reference = tmp_path / "one-go"
    convert(tiny_xai, reference, dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    for shard in sorted(p.name for p in reference.glob("model-*.safetensors")):
        assert (out / shard).read_bytes() == (reference / shard).read_bytes()


def test_a_damaged_finished_shard_is_rewritten(tiny_xai: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert(tiny_xai, out, dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    shard = out / "model-00002-of-00003.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    report = convert(tiny_xai, out, dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    assert report.shards_written == [shard.name]
    assert shard.read_bytes() == good


def test_refuses_an_output_directory_of_another_conversion(tiny_xai: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert(tiny_xai, out, dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    with pytest.raises(ConversionError, match="different input or options"):
        convert(tiny_xai, out, dtype="bfloat16", head_dim=TINY_HEAD_DIM, log=_quiet)
    report = convert(tiny_xai, out, dtype="bfloat16", head_dim=TINY_HEAD_DIM, overwrite=True, log=_quiet)
    assert len(report.shards_written) == 3
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        convert(tiny_xai, tmp_path / "busy", head_dim=TINY_HEAD_DIM, log=_quiet)


def _shard(ckpt: Path, index: int) -> Path:
    return ckpt / "ckpt-0" / f"tensor{index:05d}_000"


def _truncate(ckpt: Path) -> None:
    path = _shard(ckpt, 16)
    path.write_bytes(path.read_bytes()[:-100])


def _remove_one(ckpt: Path) -> None:
    _shard(ckpt, 7).unlink()


def _remove_last(ckpt: Path) -> None:
    _shard(ckpt, 25).unlink()


def _add_stray_file(ckpt: Path) -> None:
    (ckpt / "ckpt-0" / "notes.txt").write_text("hi")


def _add_second_host(ckpt: Path) -> None:
    shutil.copyfile(_shard(ckpt, 0), ckpt / "ckpt-0" / "tensor00000_001")


def _swap_query_and_key(ckpt: Path) -> None:
    # Layer 1's key (index 17) and query (index 19): same kind, different shapes.
    key, query = _shard(ckpt, 17).read_bytes(), _shard(ckpt, 19).read_bytes()
    _shard(ckpt, 17).write_bytes(query)
    _shard(ckpt, 19).write_bytes(key)


def _dequantize_one(ckpt: Path) -> None:
    value = load_shard(_shard(ckpt, 14))
    assert isinstance(value, QuantizedWeight8bit)
    _shard(ckpt, 14).write_bytes(dumps_shard(value.dequantize()))


def _poison_with_nan(ckpt: Path) -> None:
    value = load_shard(_shard(ckpt, 1))
    assert isinstance(value, np.ndarray)
    value = value.copy()
    value[3] = np.nan
    _shard(ckpt, 1).write_bytes(dumps_shard(value))


class _RunsTrue:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("true",))


def _malicious(ckpt: Path) -> None:
    _shard(ckpt, 9).write_bytes(pickle.dumps(_RunsTrue(), protocol=4))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, r"tensor00016_000.*truncated"),
        (_remove_one, r"1 shard\(s\) missing, e\.g\. tensor00007_000"),
        (_remove_last, r"25 tensor files cannot be a Grok-1 ckpt-0"),
        (_add_stray_file, r"notes\.txt: unexpected entry"),
        (_add_second_host, r"several hosts"),
        (_swap_query_and_key, r"tensor00017_000 .*multi_head_attention/key.*shape"),
        (_dequantize_one, r"tensor00014_000 .*expected a QuantizedWeight8bit"),
        (_poison_with_nan, r"tensor00001_000 .*non-finite"),
        (_malicious, r"tensor00009_000: pickle refers to (posix|os)\.system"),
    ],
)
def test_refuses_malformed_input_with_a_clear_message(
    xai_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    message: str,
) -> None:
    damage(xai_copy)
    with pytest.raises((ConversionError, XaiFormatError), match=message):
        convert(xai_copy, tmp_path / "out", head_dim=TINY_HEAD_DIM, log=_quiet)
    # The command line says the same and exits 2, without a traceback.
    assert main([str(xai_copy), str(tmp_path / "cli-out"), "--head-dim", str(TINY_HEAD_DIM)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grok-convert: error: ") and "Traceback" not in err


def test_wrong_head_dim_and_missing_input_are_explained(tiny_xai: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="head_dim 48"):
        convert(tiny_xai, tmp_path / "a", head_dim=48, log=_quiet)
    with pytest.raises(ConversionError, match="no ckpt-0 shards"):
        convert(tmp_path, tmp_path / "b", log=_quiet)


def test_streams_one_input_shard_at_a_time(
    tiny_xai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No more than one loaded ckpt-0 shard is alive at any time while converting."""
    import weakref

    loaded: list[weakref.ref[np.ndarray]] = []
    most = 0
    real_load = convert_module.load_shard

    def tracking_load(path: Path) -> object:
        nonlocal most
        value = real_load(path)
        holder = value.weight if isinstance(value, QuantizedWeight8bit) else value
        loaded.append(weakref.ref(holder))
        most = max(most, sum(ref() is not None for ref in loaded))
        return value

    monkeypatch.setattr(convert_module, "load_shard", tracking_load)
    convert(tiny_xai, tmp_path / "out", dtype="float32", head_dim=TINY_HEAD_DIM, log=_quiet)
    assert most <= 2
    assert (tmp_path / "out" / STATE_FILE).exists()
