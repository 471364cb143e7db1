"""A node-local copy of the model's files, made once per node and model revision, safe under faults.

Layout under the node folder (`--node-cache-dir`, a hostPath in a cluster):

    <root>/models/<key>/                   a whole copy; its manifest grok-weights.json (every file's size and
                                           sha256, computed from the bytes read from the source) written last
    <root>/tmp/<key>.<random>/             a copy being made (a dead copier's is removed by the next one); its
                                           .reserved file holds the room it was planned with, until the rename
    <root>/locks/node.plan                 flock, exclusive: held while a copier plans its room (evictions and
                                           the reservation), so copies of different models stay under the
                                           bound together
    <root>/locks/<key>.copy                flock, exclusive: held by the one replica copying or checking
    <root>/locks/<key>.use                 flock, shared: held by every replica serving from the copy, for its
                                           whole life; its modification time is the copy's last use
                                           (touched when a replica starts and when it shuts down)

The rules:
- A copy is written under tmp/, checked, then renamed onto models/<key> in one step: a copier killed halfway
  leaves only tmp/, which is never served and is removed by the next copier of that key.
- Every use checks every file against the manifest (sizes and sha256; the read also warms the page cache the
  engine then loads from). A mismatch (a corrupt or truncated local file) discards the copy and copies again.
- Two replicas on one node: the first takes the copy lock and copies; the other waits on the lock, then finds
  the copy whole and reads no byte from the shared source.
- A copy that does not fit (the bound, or the disk's free space, even after evicting what may go): the
  replica serves from the shared cache and says why (the start-up report's weights source is "shared").
- Eviction: least recently used copies go first, and only those whose use lock and copy lock are both free
  (no replica serves from them and none is copying or checking them). A dead copier's partial copy of any
  model is removed by the next planner (its copy lock is free), so its bytes do not take room for ever. A
  copy found bad while replicas still serve from it is left to them (this replica reads the shared cache)
  and copied again by the first start after they stop.
- Lock files stay when their copy is evicted: unlinking a file others may be about to flock would let two
  holders lock two different files of one name; they are empty, two per model revision the node has held.
- The source's files are listed before and after the copy; if they changed meanwhile (a new revision
  written in place), the copy is dropped and the replica serves from the source.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from grok_server.checked_folder import CHUNK, files_problem, read_manifest
from grok_server.weights.files import fsync_dir, lock_file
from grok_server.weights.plan import (
    MANIFEST,
    Entry,
    SourceFile,
    manifest,
    manifest_problem,
    plan_fit,
    source_key,
)

log = logging.getLogger("grok_server")

PLAN_LOCK = "node.plan"
RESERVED = ".reserved"
VERIFY = ("full", "sizes")


@dataclass
class NodeWeights:
    path: str                # what the engine loads
    source: str              # "node" (the node's copy) or "shared" (the source itself)
    shared_bytes: int        # bytes this replica read from the shared source to make its copy
    total_bytes: int         # the model's bytes
    copied: bool = False     # this replica made the copy
    reason: str = ""         # why it serves from the shared source, or what it found on the node
    key: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Held:
    """The use lock of the copy a replica serves from: held until close() (or the process's end)."""

    def __init__(self, handle: IO[bytes] | None) -> None:
        self._handle = handle

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):  # last use is now, not this replica's start (eviction's LRU)
                os.utime(self._handle.fileno())
            self._handle.close()
            self._handle = None


def list_source(source: Path) -> list[SourceFile]:
    """The model's files: not hidden ones nor those in hidden folders (huggingface_hub's .cache/ beside a
    snapshot downloaded with local_dir, grok-fetch's marker), which are bookkeeping, not the model."""
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts) and path.name != MANIFEST:
            st = path.stat()
            files.append(SourceFile(str(rel), st.st_size, st.st_mtime_ns))
    return files


def check_copy(entry: Path, key: str, checksums: bool = True) -> str | None:
    """None when the copy at `entry` is whole: its manifest is this key's and every file has its size and
    (unless `checksums` is off) its checksum."""
    data, unreadable = read_manifest(entry, MANIFEST)
    if unreadable is not None:
        return unreadable
    if (problem := manifest_problem(data, key)) is not None:
        return problem
    return files_problem(entry, data["files"], checksums)


class NodeCache:
    def __init__(self, root: Path, max_bytes: int | None = None,
                 max_read_bytes_per_second: float | None = None, verify: str = "full") -> None:
        """`verify`: at each use, "full" checks every file's size and sha256, "sizes" only the sizes (a
        start that does not read the whole model once more: for large models on trusted disks)."""
        if verify not in VERIFY:
            raise ValueError(f"verify must be one of {', '.join(VERIFY)}, not {verify!r}")
        self.root, self.max_bytes, self.rate = root, max_bytes, max_read_bytes_per_second
        self.checksums = verify == "full"
        self.read_so_far = 0  # bytes the current copy has read from the source
        self.models, self.tmp, self.locks = root / "models", root / "tmp", root / "locks"

    def ensure(self, source: Path) -> tuple[NodeWeights, Held]:
        """The path to load from: the node's copy of `source` (made if missing or bad), or `source` itself
        when no copy can be made (NodeWeights.reason says why). Blocks while another replica copies."""
        listing = list_source(source)
        total = sum(f.size for f in listing)
        key = source_key(str(source), listing)
        shared = NodeWeights(str(source), "shared", 0, total, key=key)
        if not listing:
            shared.reason = f"{source} holds no files to copy"
            return shared, Held(None)
        try:
            for folder in (self.models, self.tmp, self.locks):
                folder.mkdir(parents=True, exist_ok=True)
            return self._ensure(source, listing, key, shared)
        except OSError as e:  # the node folder's own faults (permissions, a disk gone read-only): never fatal
            shared.reason = f"node cache {self.root} is not usable ({e.strerror or e})"
            log.warning("node copy %s: serving from the shared source: %s", key, shared.reason)
            return shared, Held(None)

    def _ensure(self, source: Path, listing: list[SourceFile], key: str, shared: NodeWeights
                ) -> tuple[NodeWeights, Held]:
        total = shared.total_bytes
        entry = self.models / key
        copy_lock = lock_file(self.locks / f"{key}.copy", fcntl.LOCK_EX)  # waits for another copier
        try:
            found = ""
            if entry.exists():
                problem = check_copy(entry, key, self.checksums)
                if problem is None:
                    return self._use(entry, key, total, 0, False, "a whole copy was on the node")
                if not self._discard_unused(key, entry):  # pulling it away could fail a replica loading it
                    shared.reason = (f"the node's copy is bad ({problem}) and replicas on this node still "
                                     "serve from it: it is copied again once they stop")
                    log.warning("node copy %s: serving from the shared source: %s", key, shared.reason)
                    return shared, Held(None)
                found = f"the node's copy was bad and is copied again: {problem}; "
                log.warning("node copy %s: %s", key, found.rstrip("; "))
            self._sweep_tmp(key)
            work = self.tmp / f"{key}.{uuid.uuid4().hex}"
            if (problem := self._make_room(key, total, work)) is not None:
                shared.reason = found + problem
                log.warning("node copy %s: serving from the shared source: %s", key, shared.reason)
                return shared, Held(None)
            try:
                digests, read = self._copy(source, listing, work)
                if list_source(source) != listing:
                    raise ChangedError("the source's files changed during the copy (a new revision?)")
                written = manifest(key, str(source), digests)
                (work / f"{MANIFEST}.tmp").write_text(json.dumps(written, indent=1))
                (work / f"{MANIFEST}.tmp").replace(work / MANIFEST)  # last: a copy without it is never used
                fsync_dir(work)
                work.rename(entry)  # counted as reserved until here, as a copy from here on
                fsync_dir(self.models)
                (entry / RESERVED).unlink()
            except (OSError, ChangedError) as e:
                shutil.rmtree(work, ignore_errors=True)
                shared.shared_bytes = self.read_so_far  # read from the shared source for nothing
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                shared.reason = found + f"the copy to the node failed ({why})"
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    shared.reason = found + "the node disk filled up during the copy"
                return shared, Held(None)
            copied = found + f"copied {len(listing)} file(s) to the node"
            return self._use(entry, key, total, read, True, copied)
        finally:
            assert copy_lock is not None
            copy_lock.close()

    def _make_room(self, key: str, total: int, work: Path) -> str | None:
        """Evicts what the copy needs and reserves its room (`work`, holding its size), under the node's
        planning lock: copies of other models starting at the same moment each plan knowing of the others',
        so together they stay under the bound and in the free space. None, or why it cannot fit."""
        plan_lock = lock_file(self.locks / PLAN_LOCK, fcntl.LOCK_EX)
        try:
            for _ in range(3):  # again when a copy planned for eviction was taken into use meanwhile
                entries, pending = self._entries(key)
                fit = plan_fit(total, entries, self.max_bytes, shutil.disk_usage(self.root).free - pending)
                if fit.problem is not None:
                    return fit.problem
                if all([self._evict(victim) for victim in fit.evict]):
                    break
            else:  # never copy past the bound or the free space on a plan whose evictions did not happen
                return "the copies to evict for room kept being taken into use by other replicas (3 tries)"
            work.mkdir()
            (work / RESERVED).write_text(str(total))
            return None
        finally:
            assert plan_lock is not None
            plan_lock.close()

    def _use(self, entry: Path, key: str, total: int, read: int, copied: bool, reason: str
             ) -> tuple[NodeWeights, Held]:
        """Takes the copy's use lock (under the copy lock, so no eviction slips in between)."""
        use = self.locks / f"{key}.use"
        held = lock_file(use, fcntl.LOCK_SH)
        os.utime(use)  # last use, for eviction
        return NodeWeights(str(entry), "node", read, total, copied, reason, key), Held(held)

    def _copy(self, source: Path, listing: list[SourceFile], work: Path
              ) -> tuple[dict[str, tuple[int, str]], int]:
        digests: dict[str, tuple[int, str]] = {}
        read, started = 0, time.monotonic()
        self.read_so_far = 0
        chunk = CHUNK if self.rate is None else min(CHUNK, max(4096, int(self.rate)))
        for f in listing:
            target = work / f.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with (source / f.rel).open("rb") as src, target.open("wb") as dst:
                while block := src.read(chunk):
                    h.update(block)
                    dst.write(block)
                    read += len(block)
                    self.read_so_far = read
                    if self.rate:  # a read rate limit: the shared volume serves other nodes too
                        ahead = read / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                dst.flush()
                os.fsync(dst.fileno())
            size = target.stat().st_size
            if size != f.size:
                raise ChangedError(f"{f.rel} had {f.size} bytes when listed and {size} when copied")
            digests[f.rel] = (size, h.hexdigest())
        return digests, read

    def _entries(self, copying: str) -> tuple[list[Entry], int]:
        """The node's copies, and the copies of other models under way (their reserved size, never evicted),
        as eviction sees them; with the bytes those still have to write (not yet out of the free space)."""
        entries, pending = [], 0
        for work in self.tmp.iterdir():
            other = work.name.rsplit(".", 1)[0]
            if other == copying or work.name.startswith("discarded-"):
                continue
            with contextlib.suppress(OSError, ValueError):  # one finished or swept meanwhile
                if self._sweep_dead(other, work):
                    continue
                reserved = int((work / RESERVED).read_text())
                written = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
                entries.append(Entry(f"{other} (being copied)", reserved, time.time(), True))
                pending += max(0, reserved - written)
        for entry in self.models.iterdir():
            if entry.name == copying:
                continue
            with contextlib.suppress(OSError):  # one being discarded by another replica meanwhile
                try:
                    size = int(json.loads((entry / MANIFEST).read_text())["total_bytes"])
                except (OSError, ValueError, KeyError, TypeError):
                    size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                use = self.locks / f"{entry.name}.use"
                last = use.stat().st_mtime if use.exists() else entry.stat().st_mtime
                # in use: a replica serves from it, or one is checking it
                busy = self._held(f"{entry.name}.use") or self._held(f"{entry.name}.copy")
                entries.append(Entry(entry.name, size, last, busy))
        return entries, pending

    def _held(self, lock: str) -> bool:
        """Whether a live process holds the lock file `lock` (a dead one's lock is gone with it)."""
        probe = lock_file(self.locks / lock, fcntl.LOCK_EX, wait=False)
        if probe is None:
            return True
        probe.close()
        return False

    def _discard_unused(self, key: str, entry: Path) -> bool:
        """Discards the copy unless a replica serves from it, probing its use lock under the node's planning
        lock (where the planners' own brief probes of that lock happen: never one mistaken for a replica)."""
        plan_lock = lock_file(self.locks / PLAN_LOCK, fcntl.LOCK_EX)
        try:
            return self._discard_if_unserved(key, entry)
        finally:
            assert plan_lock is not None
            plan_lock.close()

    def _sweep_dead(self, key: str, work: Path) -> bool:
        """Removes a partial copy of another model whose copier died (its copy lock is free: taken here, so no
        new copier of it starts meanwhile); False while its copier lives."""
        copy = lock_file(self.locks / f"{key}.copy", fcntl.LOCK_EX, wait=False)
        if copy is None:
            return False
        try:
            shutil.rmtree(work, ignore_errors=True)
            return True
        finally:
            copy.close()

    def _evict(self, key: str) -> bool:
        """Removes a copy no replica uses, holding both its locks so none starts using or copying it meanwhile
        (the plan was made a moment ago: a copy taken into use since is kept)."""
        copy = lock_file(self.locks / f"{key}.copy", fcntl.LOCK_EX, wait=False)
        if copy is None:
            return False
        try:
            evicted = self._discard_if_unserved(key, self.models / key)
        finally:
            copy.close()
        if evicted:
            log.info("node cache: evicted %s (least recently used, not in use)", key)
        return evicted

    def _discard_if_unserved(self, key: str, entry: Path) -> bool:
        """Discards `entry` (the caller holds its copy lock) unless a replica serves from it: only while its
        use lock can be taken, so none starts to meanwhile."""
        use = lock_file(self.locks / f"{key}.use", fcntl.LOCK_EX, wait=False)
        if use is None:
            return False
        try:
            self._discard(entry)
            return True
        finally:
            use.close()

    def _discard(self, entry: Path) -> None:
        """Out of the way in one rename (no reader sees half of it), then deleted."""
        doomed = self.tmp / f"discarded-{uuid.uuid4().hex}"
        with contextlib.suppress(OSError):
            entry.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def _sweep_tmp(self, key: str) -> None:
        """Partial copies of this key (their copier is dead: we hold the key's copy lock), and discarded
        folders left by a process killed while deleting."""
        for folder in self.tmp.iterdir():
            if folder.name.startswith(f"{key}.") or folder.name.startswith("discarded-"):
                shutil.rmtree(folder, ignore_errors=True)


class ChangedError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """grok-node-cache: makes (or checks) the node copy of SOURCE under ROOT and prints the outcome as JSON.
    With --hold, keeps the copy's use lock until stdin closes (what a serving replica does for its life)."""
    p = argparse.ArgumentParser(prog="grok-node-cache", description=main.__doc__)
    p.add_argument("--source", type=Path, required=True, help="the model's folder in the shared cache")
    p.add_argument("--root", type=Path, required=True, help="the node's folder for model copies")
    p.add_argument("--max-bytes", type=int, help="bound on the node folder's model copies, in bytes")
    p.add_argument("--max-read-bytes-per-second", type=float, help="limit on the copy's reads from SOURCE")
    p.add_argument("--verify", choices=VERIFY, default="full", help="what each use checks of a copy")
    p.add_argument("--hold", action="store_true", help="hold the use lock until stdin closes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    weights, held = NodeCache(args.root, args.max_bytes, args.max_read_bytes_per_second,
                              args.verify).ensure(args.source)
    print(json.dumps(weights.to_json()), flush=True)
    if args.hold:
        sys.stdin.read()
    held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
