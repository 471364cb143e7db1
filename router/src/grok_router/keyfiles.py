"""Reading the keys folder and the upstream token file, and noticing when they change (the I/O half of
tenants.py): a poll of the entries' names, inodes, sizes and mtimes (links followed, so the kubelet's swap of
a Secret's `..data` link counts) every `interval` seconds; a change is read in full and handed on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from grok_router.tenants import MAX_KEY_BYTES, KeySet, parse_keys

log = logging.getLogger("grok_router.keys")

Signature = tuple[tuple[str, int, int, int], ...]


def file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows links: a changed target changes the signature
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def folder_signature(folder: Path) -> Signature:
    entries = []
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return ()
    for name in names:
        if name.startswith(".") and name != "..data":
            continue
        found = file_state(folder / name)
        if found is not None:
            entries.append((name, *found))
    return tuple(entries)


def read_keys(folder: Path) -> KeySet:
    """The folder's keys; a file that is not a regular file, or that cannot be read, is skipped and said."""
    files: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        log.warning("cannot list the API keys folder %s: %s", folder, err.strerror or err)
        return KeySet()
    for name in names:
        if name.startswith("."):
            continue
        path = folder / name
        try:
            if not path.is_file():
                continue
            with path.open("rb") as f:
                # A little over the limit is enough to know a key is too long.
                files[name] = f.read(MAX_KEY_BYTES * 4 + 64)
        except OSError as err:
            unreadable[name] = f"cannot be read ({err.strerror or type(err).__name__})"
    keys = parse_keys(files)
    return KeySet(keys.keys, {**keys.skipped, **unreadable})


def read_token(path: Path) -> str | None:
    """The first token line of a token file (the server's --auth-token-file format: one per line,
    #-comments), or None when the file is missing, empty or not printable ASCII."""
    try:
        text = path.read_bytes()
    except OSError as err:
        log.warning("cannot read the upstream token file %s: %s", path, err.strerror or err)
        return None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if not all(0x21 <= b <= 0x7E for b in line):
            log.warning("the upstream token in %s is not printable ASCII: not used", path)
            return None
        return line.decode("ascii")
    log.warning("the upstream token file %s holds no token", path)
    return None


class Watched:
    """A keys folder or a token file, re-read when its signature changes."""

    def __init__(self, path: Path, folder: bool, on_change: Callable[[object], None]) -> None:
        self.path, self.folder, self.on_change = path, folder, on_change
        self.signature: object = None

    def _signature(self) -> object:
        if self.folder:
            return folder_signature(self.path)
        return (file_state(self.path), file_state(self.path.parent / "..data"))

    def poll(self) -> tuple[bool, object]:
        """(True, what the path holds now) when it changed since the last poll (and the first time)."""
        signature = self._signature()
        if signature == self.signature:
            return False, None
        self.signature = signature
        return True, read_keys(self.path) if self.folder else read_token(self.path)

    def check(self) -> bool:
        """Polls, and hands a change on (on the caller's thread)."""
        changed, value = self.poll()
        if changed:
            self.on_change(value)
        return changed


async def poll_forever(watched: list[Watched], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for w in watched:
            try:
                changed, value = await asyncio.to_thread(w.poll)
                if changed:
                    w.on_change(value)
            except Exception:  # a poll must never stop the router: try again next time
                log.exception("re-reading %s failed", w.path)
