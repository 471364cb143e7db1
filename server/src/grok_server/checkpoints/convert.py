"""`grok-convert`: xAI's original Grok-1 `ckpt-0` (int8 pickled shards with scales) to HF safetensors.

    grok-convert INPUT OUTPUT [--dtype bfloat16|float16|float32] [--naming hpcai|mixtral] [--head-dim 128]
                 [--config overrides.json] [--tokenizer DIR] [--overwrite]

INPUT is the directory holding `ckpt-0/` (or `ckpt-0` itself). The output is one safetensors shard for the
embedding and final norm plus one per decoder layer, `model.safetensors.index.json`, `config.json`
(hpcai-tech's layout: Grok-1's multipliers, derived from the checkpoint's shapes) and, with --tokenizer, the
tokenizer files found in that directory.

- Safe: shards are read with a restricted unpickler (see xai.py); nothing else in a pickle is executed.
- Streaming: one input shard at a time (plus one expert's dequantised copy); output tensors are written as
  they are produced, so 318 GB converts with a few GB of memory.
- Resumable: each output shard is written to `*.partial`, verified, renamed, then recorded in
  `.grok-convert-state.json`; a rerun skips recorded shards whose file is intact and refuses an output
  directory that holds a conversion of different input or options (unless --overwrite).
- Verified: the file set (names, count, contiguous indices, one host), every shard's type (quantized or not),
  dtype and shape against the layout implied by the checkpoint's first layer, finite values, and at the end
  the written shards' headers against the plan. A malformed or truncated input stops with a message naming
  the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grok_server.checkpoints.naming import (
    NAMINGS,
    XAI_SHAPE_PROBES,
    Grok1Shape,
    XaiLeaf,
    hpcai_config,
    infer_shape_from_xai,
    rename,
    xai_leaf_targets,
    xai_leaves,
    xai_num_layers,
)
from grok_server.checkpoints.safetensors_stream import PlannedTensor, StreamingSafetensorsWriter
from grok_server.checkpoints.xai import (
    QuantizedWeight8bit,
    XaiFormatError,
    float32_to_bfloat16_bits,
    load_shard,
)

STATE_FILE = ".grok-convert-state.json"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_SHARD_FILE = re.compile(r"tensor(\d{5})_(\d{3})")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


class ConversionError(Exception):
    """The input cannot be converted (malformed, truncated, inconsistent), or the output is not ours."""


# --- reading and checking the input -----------------------------------------------------------------------


def find_ckpt_dir(path: Path) -> Path:
    path = Path(path)
    for candidate in (path / "ckpt-0", path):
        if candidate.is_dir() and any(_SHARD_FILE.fullmatch(p.name) for p in candidate.iterdir()):
            return candidate
    raise ConversionError(
        f"{path}: no ckpt-0 shards (files named tensorNNNNN_000) found here or in {path}/ckpt-0"
    )


def list_shards(ckpt_dir: Path) -> list[Path]:
    """The shard files in index order, after checking the directory holds exactly a single-host ckpt-0."""
    indices: dict[int, Path] = {}
    for path in sorted(ckpt_dir.iterdir()):
        if path.name.startswith("."):
            continue
        match = _SHARD_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            raise ConversionError(f"{path}: unexpected entry in a ckpt-0 directory")
        if match.group(2) != "000":
            raise ConversionError(f"{path}: shards of several hosts are not supported (only tensorNNNNN_000)")
        indices[int(match.group(1))] = path
    count = max(indices) + 1
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        raise ConversionError(f"{ckpt_dir}: {len(missing)} shard(s) missing, e.g. tensor{missing[0]:05d}_000")
    try:
        xai_num_layers(count)
    except ValueError as exc:
        raise ConversionError(f"{ckpt_dir}: {exc}") from None
    return [indices[i] for i in range(count)]


def _shape_of(value: np.ndarray | QuantizedWeight8bit) -> tuple[int, ...]:
    return tuple(value.shape)


def probe_shape(shards: list[Path], head_dim: int) -> Grok1Shape:
    probes = {key: _shape_of(load_shard(shards[index])) for key, index in XAI_SHAPE_PROBES.items()}
    try:
        return infer_shape_from_xai(probes, xai_num_layers(len(shards)), head_dim)
    except (ValueError, KeyError) as exc:
        raise ConversionError(
            f"{shards[0].parent}: cannot infer the model's dimensions: {exc} "
            "(--head-dim must be the checkpoint's attention head size; Grok-1's is 128)"
        ) from None


def check_leaf(path: Path, leaf: XaiLeaf, value: np.ndarray | QuantizedWeight8bit) -> None:
    what = f"{path.name} ({leaf.key})"
    if leaf.quantized != isinstance(value, QuantizedWeight8bit):
        kind = "a QuantizedWeight8bit" if leaf.quantized else "a plain array"
        raise ConversionError(f"{what}: expected {kind}, found {type(value).__name__}")
    if _shape_of(value) != leaf.shape:
        raise ConversionError(f"{what}: shape {_shape_of(value)}, expected {leaf.shape}")
    if isinstance(value, np.ndarray) and value.dtype.kind != "f":
        raise ConversionError(f"{what}: dtype {value.dtype}, expected a float array")


# --- planning the output ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputShard:
    file: str
    leaves: tuple[int, ...]  # input shard indices, in the order their tensors are written
    tensors: tuple[PlannedTensor, ...]


def _torch_layout(leaf: XaiLeaf) -> tuple[int, ...]:
    """Shape of each output tensor of `leaf` (PyTorch [out, in] layout; experts split)."""
    if leaf.path.split("/")[-2] == "moe":
        _, d_in, d_out = leaf.shape
        return (d_out, d_in)
    if len(leaf.shape) == 2 and leaf.param == "w":
        return (leaf.shape[1], leaf.shape[0])
    return leaf.shape


def plan_output(shape: Grok1Shape, dtype: str, naming: str) -> list[OutputShard]:
    leaves = xai_leaves(shape)
    groups: dict[int, list[int]] = {}
    for index, leaf in enumerate(leaves):
        groups.setdefault(-1 if leaf.layer is None else leaf.layer, []).append(index)
    total = len(groups)
    shards = []
    for number, (_, indices) in enumerate(sorted(groups.items()), start=1):
        tensors = tuple(
            PlannedTensor(rename(name, naming), _torch_layout(leaves[i]), DTYPES[dtype])
            for i in indices
            for name in xai_leaf_targets(leaves[i])
        )
        shards.append(OutputShard(f"model-{number:05d}-of-{total:05d}.safetensors", tuple(indices), tensors))
    return shards


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ConversionError("non-finite values")
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(values)
    return values.astype(np.float16 if dtype == "float16" else np.float32)


def leaf_tensors(leaf: XaiLeaf, value: np.ndarray | QuantizedWeight8bit, dtype: str) -> Iterator[np.ndarray]:
    """Output tensors of one leaf, dequantised (expert by expert) and in PyTorch layout."""
    if isinstance(value, QuantizedWeight8bit):
        if leaf.path.split("/")[-2] == "moe":
            scales = np.broadcast_to(value.scales, (value.weight.shape[0], *value.scales.shape[1:]))
            for expert in range(value.weight.shape[0]):
                dense = QuantizedWeight8bit(value.weight[expert], scales[expert]).dequantize()
                yield _encode(np.ascontiguousarray(dense.T), dtype)
            return
        yield _encode(np.ascontiguousarray(value.dequantize().T), dtype)
        return
    values = value.astype(np.float32)
    yield _encode(np.ascontiguousarray(values.T) if leaf.path.endswith("/router") else values, dtype)


# --- resumable state --------------------------------------------------------------------------------------


def _fingerprint(shards: list[Path], plan: list[OutputShard], options: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(options, sort_keys=True).encode())
    for path in shards:
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    for shard in plan:
        digest.update(json.dumps([shard.file, [(t.name, t.shape, t.dtype) for t in shard.tensors]]).encode())
    return digest.hexdigest()


def _write_json_atomically(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _verify_written(path: Path, shard: OutputShard) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = list(f.keys())
        if sorted(names) != sorted(t.name for t in shard.tensors):
            raise ConversionError(f"{path}: written tensor names do not match the plan")
        for tensor in shard.tensors:
            if tuple(f.get_slice(tensor.name).get_shape()) != tensor.shape:
                raise ConversionError(f"{path}: {tensor.name} has the wrong shape")
    expected_size = len(_header_for(shard)) + sum(t.nbytes for t in shard.tensors)
    if path.stat().st_size != expected_size:
        raise ConversionError(f"{path}: {path.stat().st_size} bytes, expected {expected_size}")


def _header_for(shard: OutputShard) -> bytes:
    from grok_server.checkpoints.safetensors_stream import header_bytes

    return header_bytes(list(shard.tensors))


# --- conversion -------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    output: Path
    shards_written: list[str]
    shards_skipped: list[str]
    tensors: int


def convert(
    input_dir: Path,
    output_dir: Path,
    *,
    dtype: str = "bfloat16",
    naming: str = "hpcai",
    head_dim: int = 128,
    config_overrides: dict[str, Any] | None = None,
    tokenizer_dir: Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    on_shard_done: Callable[[str], None] | None = None,
) -> ConversionReport:
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if naming not in NAMINGS:
        raise ConversionError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    ckpt_dir = find_ckpt_dir(Path(input_dir))
    shards = list_shards(ckpt_dir)
    shape = probe_shape(shards, head_dim)
    leaves = xai_leaves(shape)
    plan = plan_output(shape, dtype, naming)
    config = hpcai_config(shape, naming, dtype, overrides=config_overrides)
    fingerprint = _fingerprint(shards, plan, {"dtype": dtype, "naming": naming, "config": config})
    log(
        f"{ckpt_dir}: {len(shards)} shards, {shape.num_hidden_layers} layers, hidden {shape.hidden_size}, "
        f"{shape.num_experts} experts -> {len(plan)} safetensors shards ({dtype}, {naming} naming)"
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / STATE_FILE
    state: dict[str, Any] = {"fingerprint": fingerprint, "done": {}}
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            state = previous
        elif overwrite:
            log(f"{output_dir}: discarding a conversion of different input or options (--overwrite)")
        else:
            raise ConversionError(
                f"{output_dir} holds a conversion of different input or options; use another directory "
                "or --overwrite"
            )
    elif any(p.name != STATE_FILE for p in output_dir.iterdir()) and not overwrite:
        raise ConversionError(
            f"{output_dir} is not empty and holds no grok-convert state; refusing to write there"
        )
    for stale in output_dir.glob("*.partial"):
        stale.unlink()
    _write_json_atomically(state_path, state)

    written, skipped = [], []
    for shard in plan:
        target = output_dir / shard.file
        done_size = state["done"].get(shard.file)
        if done_size is not None and target.exists() and target.stat().st_size == done_size:
            skipped.append(shard.file)
            continue
        partial = output_dir / (shard.file + ".partial")
        with StreamingSafetensorsWriter(partial, list(shard.tensors)) as writer:
            planned = iter(shard.tensors)
            for index in shard.leaves:
                leaf, path = leaves[index], shards[index]
                value = load_shard(path)
                check_leaf(path, leaf, value)
                try:
                    for data in leaf_tensors(leaf, value, dtype):
                        writer.write(next(planned).name, data)
                except ConversionError as exc:
                    raise ConversionError(f"{path.name} ({leaf.key}): {exc}") from None
                del value
        _verify_written(partial, shard)
        partial.replace(target)
        state["done"][shard.file] = target.stat().st_size
        _write_json_atomically(state_path, state)
        written.append(shard.file)
        log(f"wrote {shard.file} ({len(shard.tensors)} tensors)")
        if on_shard_done is not None:
            on_shard_done(shard.file)

    weight_map = {t.name: shard.file for shard in plan for t in shard.tensors}
    expected = {rename(name, naming) for leaf in leaves for name in xai_leaf_targets(leaf)}
    if set(weight_map) != expected or len(weight_map) != sum(len(s.tensors) for s in plan):
        raise ConversionError("internal error: the output plan does not cover every tensor exactly once")
    total_size = sum(t.nbytes for shard in plan for t in shard.tensors)
    _write_json_atomically(
        output_dir / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    )
    _write_json_atomically(output_dir / "config.json", config)
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    _write_json_atomically(output_dir / "generation_config.json", generation)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), output_dir)
    log(
        f"done: {len(weight_map)} tensors in {len(plan)} shards ({len(skipped)} already converted) "
        f"in {output_dir}"
    )
    return ConversionReport(output_dir, written, skipped, len(weight_map))


def copy_tokenizer(source: Path, output_dir: Path) -> None:
    found = [source / name for name in _TOKENIZER_FILES if (source / name).is_file()]
    if not found:
        raise ConversionError(f"{source}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    for path in found:
        shutil.copyfile(path, output_dir / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grok-convert",
        description="Convert xAI's original Grok-1 ckpt-0 (int8 pickled shards) to Hugging Face safetensors.",
    )
    parser.add_argument("input", type=Path, help="directory holding ckpt-0/ (or ckpt-0 itself)")
    parser.add_argument("output", type=Path, help="output directory (created; resumable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument(
        "--naming",
        choices=NAMINGS,
        default="hpcai",
        help="hpcai (Grok1ModelForCausalLM, the default) or mixtral (Grok1ForCausalLM)",
    )
    parser.add_argument("--head-dim", type=int, default=128, help="attention head size (Grok-1: 128)")
    parser.add_argument("--config", type=Path, help="JSON file of config.json keys to override")
    parser.add_argument(
        "--tokenizer", type=Path, help="directory whose tokenizer files are copied to the output"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a different conversion in OUTPUT")
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config.read_text()) if args.config else {}
        convert(
            args.input,
            args.output,
            dtype=args.dtype,
            naming=args.naming,
            head_dim=args.head_dim,
            config_overrides=overrides,
            tokenizer_dir=args.tokenizer,
            overwrite=args.overwrite,
        )
    except (ConversionError, XaiFormatError, OSError, json.JSONDecodeError) as exc:
        print(f"grok-convert: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
