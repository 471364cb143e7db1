"""Start-up events from every process of a replica's engine, to the grok-server that started them.

vLLM times the heavy phases of a start (weights, compile, KV cache) inside its engine-core and worker
processes and only logs them. grok-server names a file in `GROK_STARTUP_EVENTS` before it starts the
engine; the processes inherit it, and the vLLM plugin (which vLLM loads in each of them) calls
`install()`, which records when the process came up and listens to vLLM's own timing log records. Each
event is one JSON line appended with a single write (O_APPEND), so processes never interleave within a
line. grok-server reads the file once
the engine is up (startup.py turns the events into phases).

Without the variable (any other use of vLLM), nothing is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "GROK_STARTUP_EVENTS"
API_PID_ENV = "GROK_STARTUP_API_PID"  # grok-server's own pid: its events are told apart from the engine's

# vLLM 0.32's timing log records, by a stable part of their format string, and how each becomes an event.
# A rename in a later vLLM shows as a missing phase (tests/server/test_startup.py starts a real engine).
_RECORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Loading weights took"), "weights_loaded"),
    (re.compile(r"^Warming up model for the compilation"), "compile_started"),  # the CPU runner
    (re.compile(r"^Model loading took"), "model_loaded"),
    (re.compile(r"torch\.compile.*took .* in total"), "compiled"),
    (re.compile(r"Compiling a graph for compile range"), "compiled_graph"),
    (re.compile(r"Directly load the compiled graph"), "compile_cache_loaded"),
    (re.compile(r"^init engine \(profile, create kv cache, warmup model\) took"), "engine_initialized"),
    (re.compile(r"^Graph capturing finished"), "cuda_graphs_captured"),
)


def _last_number(args: Any) -> float | None:
    values = args if isinstance(args, tuple) else (args,)
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return numbers[-1] if numbers else None


def event_for(message_format: str, args: Any) -> tuple[str, float | None] | None:
    """(event name, seconds vLLM measured) for one of vLLM's timing records, None for any other record."""
    for pattern, name in _RECORDS:
        if pattern.search(message_format):
            return name, _last_number(args)
    return None


def record(event: str, path: str | None = None, **fields: Any) -> None:
    """Appends one event (with this process's id and the wall time) where grok-server asked; else nothing."""
    path = path or os.environ.get(ENV)
    if not path:
        return
    api = os.environ.get(API_PID_ENV) == str(os.getpid())
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), "api": api, **fields}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # timing is a report, never a reason to fail a start


def read(path: str) -> list[dict[str, Any]]:
    """The events written so far (a line cut short by a crash is skipped)."""
    events = []
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return events


def process_started_at() -> float:
    """This process's start (exec) time as a Unix time, from /proc; now where /proc is missing."""
    try:
        fields = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22: starttime, in clock ticks since boot
        uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class _TimingRecords(logging.Handler):
    def __init__(self, path: str, on_event: Callable[..., None] = record) -> None:
        super().__init__(level=logging.INFO)
        self.path, self.on_event = path, on_event

    def emit(self, rec: logging.LogRecord) -> None:
        if not isinstance(rec.msg, str):
            return
        found = event_for(rec.msg, rec.args)
        if found is not None:
            name, seconds = found
            self.on_event(name, path=self.path, seconds=seconds)


def install() -> None:
    """In an engine process that grok-server started: record that it is up, and vLLM's timing records."""
    path = os.environ.get(ENV)
    vllm_log = logging.getLogger("vllm")
    if not path or os.environ.get(API_PID_ENV) == str(os.getpid()):
        return
    if any(isinstance(h, _TimingRecords) for h in vllm_log.handlers):
        return  # vLLM loads plugins more than once in a process
    record("process_started", path=path, started=process_started_at(), title=_process_title())
    vllm_log.addHandler(_TimingRecords(path))


def _process_title() -> str:
    import multiprocessing

    return multiprocessing.current_process().name  # EngineCore, VllmWorker-0, ...
