"""Liveness of a replica spread over several nodes: every node learns, in bounded time, that another one died.

vLLM's multiprocessing backend (0.32) watches only the rank processes on its own node. Across nodes:
- a worker node whose leader dies hangs forever (its ranks wait on the leader's message queue, which never
  says that its writer is gone);
- a leader whose worker node dies notices only on its next forward pass (gloo: "Connection closed by
  peer"); an idle leader, or one whose peer vanished without closing its connections (a node lost, a
  network partition), waits until gloo's 30-minute timeout.

So every worker node heartbeats through the replica's own rendezvous store, the torch.distributed TCPStore
that the leader's rank 0 serves at --master-addr:--master-port for as long as the replica's process group
lives: it increments the key `grok-serve/heartbeat/node-<rank>` every few seconds. The leader reads the
counters; a node whose counter stands still for --peer-timeout-seconds counts as dead, and so does the
engine (grok-server then exits 1 through its engine-death path). A worker whose increment fails (the store's
connection closed: the leader's rank 0 is gone) or does not complete within the timeout (the leader's host
is unreachable) stops its ranks and exits non-zero.

The store calls run on a thread of their own; `lost()` is checked from elsewhere, so that a call blocked on
an unresponsive host (a TCPStore client call has no timeout of its own) still counts as silence.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

KEY_PREFIX = "grok-serve/heartbeat/node-"


def heartbeat_key(node_rank: int) -> str:
    return f"{KEY_PREFIX}{node_rank}"


def heartbeat_interval(timeout: float) -> float:
    """Several beats per timeout, at most 5 s apart."""
    return max(0.1, min(5.0, timeout / 6))


def _connect_store(host: str, port: int, timeout: float) -> Any:
    """A client of the replica's TCPStore that never counts as one of its ranks (wait_for_workers=False)."""
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=False, wait_for_workers=False,
                    timeout=timedelta(seconds=timeout))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()  # torch's errors go on with a C++ stack
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def port_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _Liveness:
    def __init__(self, host: str, port: int, timeout: float,
                 connect: Callable[[str, int, float], Any] = _connect_store) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.interval = heartbeat_interval(timeout)
        self._connect = connect
        self._error: str | None = None
        self._last_ok: float | None = None  # monotonic time of the last store call that completed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ends the watch (this node is shutting down on purpose): lost() says None from now on."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        raise NotImplementedError

    def _store_silent(self, now: float) -> str | None:
        if self._stop.is_set():
            return None
        if self._error is not None:
            return self._error
        if self._last_ok is not None and now - self._last_ok > self.timeout:
            return (f"the replica's store at {self.host}:{self.port} has not answered for "
                    f"{now - self._last_ok:.0f} s (limit {self.timeout:g} s)")
        return None


class LeaderWatch(_Liveness):
    """On a worker node: heartbeats to the leader's store, and tells when the leader is gone.

    Before the leader's port first opens (the leader may start after this node) it waits up to `wait`
    seconds; after that the leader must keep answering."""

    def __init__(self, host: str, port: int, node_rank: int, timeout: float, wait: float,
                 connect: Callable[[str, int, float], Any] = _connect_store) -> None:
        super().__init__(host, port, timeout, connect)
        self.node_rank = node_rank
        self.wait = wait
        self._started = time.monotonic()
        self.joined = threading.Event()

    def lost(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        if self._stop.is_set():
            return None
        if self._last_ok is None and self._error is None:
            if now - self._started > self.wait:
                return (f"the leader's store at {self.host}:{self.port} did not open within "
                        f"{self.wait:g} s (--leader-wait-seconds)")
            return None
        return self._store_silent(now)

    def _run(self) -> None:
        deadline = self._started + self.wait
        while not self._stop.is_set() and not port_open(self.host, self.port, timeout=min(5.0, self.timeout)):
            if time.monotonic() > deadline:
                return  # lost() says so
            self._stop.wait(1.0)
        key = heartbeat_key(self.node_rank)
        try:
            store = self._connect(self.host, self.port, self.timeout)
            while not self._stop.is_set():
                store.add(key, 1)
                if self._last_ok is None:
                    log.info("heartbeating to the leader's store at %s:%d every %.1f s", self.host, self.port,
                             self.interval)
                    self.joined.set()
                self._last_ok = time.monotonic()
                self._stop.wait(self.interval)
        except Exception as e:  # any failure of the store: the leader is gone
            self._error = f"lost the leader's store at {self.host}:{self.port}: {_first_line(e)}"


class PeerWatch(_Liveness):
    """On the leader: reads every worker node's heartbeat counter; tells when one stands still too long."""

    def __init__(self, host: str, port: int, nnodes: int, timeout: float,
                 connect: Callable[[str, int, float], Any] = _connect_store) -> None:
        super().__init__(host, port, timeout, connect)
        now = time.monotonic()
        self._seen: dict[int, int] = {rank: 0 for rank in range(1, nnodes)}  # counters start at 1
        # A node gets one timeout from the start of the watch to be heard from.
        self._changed: dict[int, float] = {rank: now for rank in range(1, nnodes)}
        self._lock = threading.Lock()

    def lost(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        if (silent := self._store_silent(now)) is not None:
            return silent
        with self._lock:
            for rank, changed in sorted(self._changed.items()):
                if now - changed > self.timeout:
                    heard = ("never heard from" if self._seen[rank] == 0
                             else f"not heard from for {now - changed:.0f} s")
                    return f"node {rank} of the replica {heard} (limit {self.timeout:g} s)"
        return None

    def _run(self) -> None:
        try:
            store = self._connect(self.host, self.port, self.timeout)
            self._last_ok = time.monotonic()
            while not self._stop.is_set():
                for rank in list(self._changed):
                    value = int(store.add(heartbeat_key(rank), 0))  # reads without waiting for the key
                    with self._lock:
                        if self._seen[rank] != value:
                            self._seen[rank] = value
                            self._changed[rank] = time.monotonic()
                self._last_ok = time.monotonic()
                self._stop.wait(self.interval)
        except Exception as e:  # the store lives in our own rank 0: engine dead
            self._error = f"lost the replica's store at {self.host}:{self.port}: {_first_line(e)}"
