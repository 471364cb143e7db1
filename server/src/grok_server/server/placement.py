"""Keeping the server's own CPU work off the cores that vLLM's CPU workers compute on.

On the CPU backend vLLM binds each worker's OpenMP threads to some cores and leaves the rest ("reserved") for
everything else, but does not move everything else there: the gRPC frontend, the client-facing event loop and
the engine-core process (which busy-waits on the worker between steps) float over every core, so the kernel
keeps preempting the worker's compute thread to run them. Moving them onto the reserved cores lets the worker
have its cores to itself. Nothing here applies to GPU engines, whose workers are not bound to cores.

Linux only (sched_setaffinity and /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def cpus_besides_workers(allowed: set[int], worker_affinities: Iterable[set[int]]) -> set[int] | None:
    """The CPUs left for everything but the workers, or None when there is nothing to move.

    A worker is a process bound to a strict subset of `allowed`; when none is, or the workers cover every
    allowed CPU (tensor parallel over all cores), there is no core to keep free and nothing changes.
    """
    bound: set[int] = set()
    for cpus in worker_affinities:
        if cpus < allowed:
            bound |= cpus
    rest = allowed - bound
    return rest if bound and rest else None


@dataclass(frozen=True)
class Placement:
    frontend_cpus: set[int]
    worker_cpus: set[int]
    moved_pids: list[int]


def parent_pid(stat: str) -> int:
    """The parent pid from the text of /proc/PID/stat: "pid (comm) state ppid ...", where comm may hold spaces
    and parentheses, so the fields are counted after the last ')'."""
    return int(stat.rpartition(")")[2].split()[1])


def _children_map(proc: Path) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(parent_pid(stat), []).append(int(entry.name))
    return children


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    children = _children_map(proc)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
    except OSError:
        return []


def process_title(pid: int) -> str:
    """A process's command line as `ps` shows it, which is the title vLLM gives its processes
    (VLLM::EngineCore, VLLM::Worker, VLLM::Worker_TP0, ...); "" once it has exited."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def is_engine_worker(pid: int) -> bool:
    return process_title(pid).startswith("VLLM::Worker")


def compute_processes(pids: Iterable[int]) -> set[int]:
    """The processes that run the model: vLLM's workers, or the engine core where the model runs inside it
    (grok-server's --engine-worker in-engine-core: then there is no worker process)."""
    pids = list(pids)
    workers = {pid for pid in pids if is_engine_worker(pid)}
    return workers or {pid for pid in pids if "EngineCore" in process_title(pid)}


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (the affinity of a process is its threads' own, one by one)."""
    for tid in _threads(pid):
        with contextlib.suppress(OSError):  # a thread may end meanwhile
            os.sched_setaffinity(tid, cpus)


def keep_off_worker_cpus(root: int | None = None, allowed: set[int] | None = None) -> Placement | None:
    """Moves every thread of `root` (default: this process) and of its descendants other than vLLM's workers
    onto the CPUs of `allowed` (default: root's) that the workers are not bound to. Threads created later
    inherit their creator's affinity. Idempotent. Returns what it did, or None when there was nothing to
    do."""
    if not hasattr(os, "sched_setaffinity") or not (PROC / "self" / "task").is_dir():
        return None
    root = os.getpid() if root is None else root
    allowed = os.sched_getaffinity(root) if allowed is None else allowed
    others: list[int] = [root]
    worker_cpus: list[set[int]] = []
    tree = descendants(root)
    computing = compute_processes(tree)
    for pid in tree:
        if pid not in computing:
            others.append(pid)
            continue
        with contextlib.suppress(OSError):
            worker_cpus.append(os.sched_getaffinity(pid))
    rest = cpus_besides_workers(allowed, worker_cpus)
    if rest is None:
        return None
    for pid in others:
        pin_threads(pid, rest)
    return Placement(rest, allowed - rest, others)
