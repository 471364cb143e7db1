"""Sending a call to a replica, and to another one when the first refused it before any output.

Retried: UNAVAILABLE (the replica is loading, draining, gone) and RESOURCE_EXHAUSTED (its admission limit),
when no response message has reached the caller yet, up to `max_attempts` and inside the caller's deadline.
Never retried once output began: the caller would see a generation twice. The caller's cancellation and
deadline reach the replica (the attempt is cancelled; its timeout is what is left of the deadline).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grok.serving.v1 import generation_pb2 as pb

from grok_router import picker
from grok_router.metrics import RouterMetrics
from grok_router.replicas import Replica, ReplicaSet

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Request headers that belong to this hop, not to the replica's call.
_HOP_HEADERS = frozenset(
    {"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "user-agent", "te", "content-type", "host"}
)


@dataclass
class RouteError(Exception):
    """A call's final failure, passed to the caller as is (code, details, trailers such as retry-after-ms)."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...] = ()

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


def forwardable(metadata: Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata to pass on (authorization and custom keys; not this hop's transport headers)."""
    return tuple((k, v) for k, v in metadata or () if not k.startswith(":") and k not in _HOP_HEADERS)


def _trailers(err: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (k, v)
        for k, v in err.trailing_metadata() or ()
        if not k.startswith("grpc-status") and k not in ("grpc-message",)
    )


def request_key(request: pb.GenerateRequest, prefix_blocks: int) -> bytes | None:
    if request.WhichOneof("prompt") == "token_ids":
        return picker.prefix_key(request.token_ids.ids, None, prefix_blocks)
    return picker.prefix_key(None, request.text, prefix_blocks)


class Forwarder:
    """`hold_timeout`: how long a call waits for a replica while none is Ready (scaled to zero, or all
    restarting), 0 for not at all; `max_held`: how many calls may wait so, beyond which they are refused at
    once (RESOURCE_EXHAUSTED)."""

    def __init__(self, replicas: ReplicaSet, metrics: RouterMetrics, max_attempts: int,
                 hold_timeout: float = 0.0, max_held: int = 0) -> None:
        self.replicas = replicas
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.hold_timeout = hold_timeout
        self.max_held = max_held

    async def _hold(self, deadline: float | None, tenant: str | None = None) -> None:
        """Waits for a Ready replica, within the hold timeout and the caller's deadline."""
        if self.replicas.closing:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, "the router is shutting down: retry")
        if self.hold_timeout <= 0:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, "no Ready replica to serve the request")
        if len(self.replicas.held) >= self.max_held:
            raise RouteError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"no Ready replica, and {self.max_held} requests already wait for one: "
                             "retry later",
                             (("retry-after-ms", "10000"),))
        limit = self.hold_timeout
        if deadline is not None:
            limit = min(limit, max(0.0, deadline - time.monotonic()))
        self.metrics.held.inc()
        if not await self.replicas.hold(seconds=limit, tenant=tenant):
            if deadline is not None and deadline <= time.monotonic() + 0.001:
                raise RouteError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 "deadline exceeded while waiting for a replica to become Ready")
            raise RouteError(grpc.StatusCode.UNAVAILABLE,
                             f"no replica became Ready within the hold timeout ({self.hold_timeout:g} s)")

    async def _choose(self, key: bytes | None, tried: set[str], last: RouteError | None,
                      deadline: float | None, tenant: str | None = None) -> Replica:
        chosen = self.replicas.pick(key, tried)
        while chosen is None:
            if last is not None:  # every replica tried: its failure is the answer
                raise last
            await self._hold(deadline, tenant)
            chosen = self.replicas.pick(key, tried)
        replica, reason = chosen
        self.metrics.decisions.labels(reason).inc()
        return replica

    @staticmethod
    def _timeout(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise RouteError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a replica answered")
        return left

    def _failed(self, err: grpc.aio.AioRpcError, started: bool, attempt: int,
                deadline: float | None) -> RouteError:
        """The failed attempt as the call's error: raised when the call ends with it (output began, not a
        retryable code, no attempt or time left), else returned as the last error before a retry."""
        code = err.code()
        last = RouteError(code, err.details() or "", _trailers(err))
        if (started or code not in RETRYABLE or attempt + 1 >= self.max_attempts
                or (deadline is not None and deadline <= time.monotonic())):
            raise last from None
        self.metrics.retries.labels(code.name).inc()
        return last

    async def _begin(self, key: bytes | None, tried: set[str], last: RouteError | None,
                     deadline: float | None, attempt: int, arrived: float,
                     tenant: str | None) -> tuple[Replica, float | None]:
        """The replica for the next attempt (one not tried yet) and the attempt's timeout; the replica counts
        the call until `_finish`."""
        replica = await self._choose(key, tried, last, deadline, tenant)
        tried.add(replica.name)
        timeout = self._timeout(deadline)
        if attempt == 0:
            self.metrics.overhead.observe(time.monotonic() - arrived)
        replica.acquire()
        return replica, timeout

    def _finish(self, replica: Replica, outcome: str) -> None:
        replica.release()
        self.metrics.upstream.labels(replica.name, outcome).inc()

    async def unary(
        self,
        method: str,
        request: Any,
        key: bytes | None,
        deadline: float | None,
        metadata: tuple[tuple[str, Any], ...],
        tenant: str | None = None,
    ) -> Any:
        last: RouteError | None = None
        tried: set[str] = set()
        arrived = time.monotonic()
        for attempt in range(self.max_attempts):
            replica, timeout = await self._begin(key, tried, last, deadline, attempt, arrived, tenant)
            outcome = "CANCELLED"  # unless the attempt ends otherwise: the caller went away
            try:
                answer = await getattr(replica.stub, method)(request, timeout=timeout, metadata=metadata)
                outcome = "OK"
                return answer
            except grpc.aio.AioRpcError as err:
                outcome = err.code().name
                last = self._failed(err, False, attempt, deadline)
            finally:
                self._finish(replica, outcome)
        assert last is not None
        raise last

    async def stream(
        self,
        request: pb.GenerateRequest,
        key: bytes | None,
        deadline: float | None,
        metadata: tuple[tuple[str, Any], ...],
        tenant: str | None = None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The replica's stream, message by message (close it with aclosing: closing cancels the attempt)."""
        last: RouteError | None = None
        tried: set[str] = set()
        arrived = time.monotonic()
        for attempt in range(self.max_attempts):
            replica, timeout = await self._begin(key, tried, last, deadline, attempt, arrived, tenant)
            call = replica.stub.GenerateStream(request, timeout=timeout, metadata=metadata)
            started = False
            outcome = "CANCELLED"
            try:
                async for message in call:
                    started = True
                    yield message
                outcome = "OK"
                return
            except grpc.aio.AioRpcError as err:
                outcome = err.code().name
                last = self._failed(err, started, attempt, deadline)
            finally:
                self._finish(replica, outcome)
                call.cancel()  # a no-op once finished; else the caller's cancel or close reaches the replica
        assert last is not None
        raise last
