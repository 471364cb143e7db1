"""Run `grok-server` as a child process on this machine: the one way the tests, the demo and the benchmarks
start it, read its metrics and stop it. Development tooling (no product code imports it), so it lives here
and ships in no image."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.error import URLError
from urllib.request import urlopen

from grok_rpc.exposition import samples as parse_metrics

T = TypeVar("T")


def wait(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2,
         transient: tuple[type[BaseException], ...] = ()) -> T:
    """Polls `predicate` until it returns something truthy, and returns that. It is asked at least once and
    once more at the deadline; an exception of a `transient` type counts as "not yet" (a busy API server's
    failed kubectl call, a refused connection). TimeoutError names `what` and the last error or value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value, error = predicate(), None
        except transient as e:
            value, error = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    last = f"last error: {error!r}" if error is not None else f"last: {value!r}"
    raise TimeoutError(f"timed out waiting for {what} ({last})") from error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    """The HTTP status of a GET (an error status too); raises when nothing answers."""
    try:
        with urlopen(url, timeout=5) as r:
            return int(r.status)
    except URLError as e:
        code = getattr(e, "code", None)
        if code is None:
            raise
        return int(code)


@dataclass
class LocalServer:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path
    workdir: Path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def metrics_text(self) -> str:
        with urlopen(f"{self.http}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def http_status(self, path: str) -> int:
        return http_status(f"{self.http}{path}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Until `/readyz` answers 200 (the model is loaded and warm). Plain HTTP, so that the caller needs no
        synchronous gRPC (which disturbs grpc.aio channels used later in the same process)."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grok-server exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            return self.http_status("/readyz") == 200

        wait(ready, timeout, f"grok-server to be ready (log {self.log_path})", interval=0.25,
             transient=(OSError,))

    def engine_core_pids(self) -> list[int]:
        """The vLLM engine-core process(es) under this server (process title 'VLLM::EngineCore')."""
        from grok_server.server.placement import descendants, process_title

        return [pid for pid in descendants(self.proc.pid) if "EngineCore" in process_title(pid)]

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL to its whole process group, engine processes included."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


def engine_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment for a local engine process (grok-server, or a peer server a benchmark runs): its
    temporary files and vLLM's caches in `workdir`, no Hub downloads, unbuffered output; then `extra`."""
    return {
        **os.environ,
        "TMPDIR": str(workdir),
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def launch_server(model: Path, workdir: Path, *flags: str, nice: int = 0,
                  env: dict[str, str] | None = None) -> LocalServer:
    """Starts grok-server on loopback with free ports, without waiting for it to load; its log, sockets and
    compile caches stay in `workdir`. `nice` lowers its CPU priority (the engine processes inherit it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    cmd = [
        *(["nice", "-n", str(nice)] if nice else []),  # nice execs: the pid stays the server's
        sys.executable, "-m", "grok_server.server.main",
        "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
        *flags,
    ]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=engine_env(workdir, env),
            cwd=workdir,
            # Its own process group, so that stop() reaches the engine processes, but the caller's session:
            # with the kernel's autogroup scheduling a session is a scheduling group, and a server in another
            # session than its clients starves them on a small machine (tokens sat unread for 300+ ms).
            process_group=0,
        )
    return LocalServer(proc, port, metrics_port, log_path, workdir)
