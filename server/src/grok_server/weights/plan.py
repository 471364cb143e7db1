"""The node copy's decisions (pure): the key of a source, whether a copy fits, and what to evict.

node_copy.py does the I/O around these; nothing here touches a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

MANIFEST = "grok-weights.json"
FORMAT = 1


@dataclass(frozen=True)
class SourceFile:
    rel: str
    size: int
    mtime_ns: int


def source_key(model: str, files: list[SourceFile]) -> str:
    """A node copy's folder name: the model folder's last name (for people) and a hash of every file's
    relative path, size and modification time. A new revision fetched into the shared cache (new files, new
    sizes, or the same names written again) gets a new key, so a node copy is never a mix of two."""
    listing = json.dumps([[f.rel, f.size, f.mtime_ns] for f in sorted(files, key=lambda f: f.rel)])
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rstrip("/").rsplit("/", 1)[-1]).strip("-.")[:40] or "model"
    return f"{name}-{hashlib.sha256(f'{FORMAT}:{listing}'.encode()).hexdigest()[:16]}"


def manifest(key: str, source: str, digests: dict[str, tuple[int, str]]) -> dict[str, Any]:
    return {"format": FORMAT, "key": key, "source": source,
            "total_bytes": sum(size for size, _ in digests.values()),
            "files": {rel: [size, digest] for rel, (size, digest) in sorted(digests.items())}}


def manifest_problem(data: Any, key: str) -> str | None:
    """None when `data` is a manifest of this key; else why it cannot be used."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "its manifest is of another format"
    if data.get("key") != key:
        return f"its manifest is for {data.get('key')!r}, not {key!r}"
    if not isinstance(data.get("files"), dict) or not data["files"]:
        return "its manifest lists no files"
    return None  # each entry's shape: checked_folder.files_problem


@dataclass(frozen=True)
class Entry:
    """A model folder on the node, as eviction sees it."""

    key: str
    size: int
    last_used: float  # seconds since the epoch
    in_use: bool      # a serving replica holds its use lock (or a copier its copy lock)


@dataclass(frozen=True)
class Fit:
    evict: tuple[str, ...]  # keys to remove, least recently used first
    problem: str | None     # None: the copy fits once those are gone


def plan_fit(need: int, entries: list[Entry], bound: int | None, free: int) -> Fit:
    """What to evict so that a copy of `need` bytes fits: under the node folder's size bound (when set; the
    sum of the model folders' sizes) and in the disk's free space. Least recently used first; never an entry
    in use. When it cannot fit, nothing is evicted and `problem` says why."""
    gb = 1e9
    if bound is not None and need > bound:
        return Fit((), f"the model ({need / gb:.3f} GB) is larger than the node cache's bound "
                       f"({bound / gb:.3f} GB)")
    used = sum(e.size for e in entries)
    evict: list[str] = []
    for e in sorted((e for e in entries if not e.in_use), key=lambda e: (e.last_used, e.key)):
        if (bound is None or used + need <= bound) and free >= need:
            break
        evict.append(e.key)
        used -= e.size
        free += e.size
    over_bound = bound is not None and used + need > bound
    if over_bound or free < need:
        busy = sorted(e.key for e in entries if e.in_use)
        why = (f"the node cache's bound ({bound / gb:.3f} GB)" if over_bound  # type: ignore[operator]
               else f"the node disk's free space ({free / gb:.3f} GB after evicting all it may)")
        return Fit((), f"the model ({need / gb:.3f} GB) does not fit {why}"
                       + (f"; in use and kept: {', '.join(busy)}" if busy else ""))
    return Fit(tuple(evict), None)
