"""Folders whose files are listed, each with its size and sha256, in a manifest written last (the compile
cache's entries, the node copies of a model): reading such a manifest, and checking the files against it.
A folder without a whole manifest, or with a file that differs from it, is never used."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 8 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path, name: str) -> tuple[Any, str | None]:
    """(the manifest's JSON, None), or (None, why it cannot be read)."""
    try:
        return json.loads((folder / name).read_text()), None
    except FileNotFoundError:
        return None, "its manifest is missing (a copy that never finished)"
    except (OSError, ValueError) as e:
        return None, f"its manifest is unreadable ({e})"


def files_problem(folder: Path, files: dict[str, Any], checksums: bool = True) -> str | None:
    """None when every file of `files` (relative path -> [size, sha256]) is in `folder` with its size and,
    unless `checksums` is off, its checksum (sizes first, all of them: cheap; then the checksums in parallel
    threads, hashlib releases the GIL); else which file differs and how, or which entry of a damaged
    manifest (valid JSON of the wrong shape) is not [size, sha256]."""
    for rel, value in files.items():
        if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int
                and isinstance(value[1], str)):
            return f"its manifest's entry for {rel} is not [size, sha256]"
    for rel, (size, _) in files.items():
        try:
            actual = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, the manifest says {size} (truncated or overwritten)"
    if not checksums or not files:
        return None
    with ThreadPoolExecutor(max(1, min(8, len(files)))) as pool:
        digests = dict(zip(files, pool.map(lambda rel: file_digest(folder / rel), files), strict=True))
    bad = sorted(rel for rel, (_, digest) in files.items() if digests[rel] != digest)
    return f"{', '.join(bad)} does not match its checksum" if bad else None
