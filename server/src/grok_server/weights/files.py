"""File-system steps the node copy is made of: advisory locks between the processes of a node, and making a
rename or a new file durable (the folder's own entry fsynced)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


def lock_file(path: Path, kind: int, wait: bool = True) -> IO[bytes] | None:
    """An flock of `kind` on `path` (made if missing), held until the handle is closed; None when `wait` is
    off and another process holds a conflicting one. Any other failure closes the file and raises."""
    handle = path.open("a+b")
    try:
        fcntl.flock(handle, kind | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
