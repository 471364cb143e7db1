"""The server's phases and what health checks and new requests see in each.

LOADING -> SERVING -> DRAINING -> STOPPED, or FAILED from any phase when the engine dies. Only SERVING
reports SERVING to `grpc.health.v1` and readiness; every other phase turns new requests away with
UNAVAILABLE, which clients and load balancers treat as "try another replica".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio


class Phase(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_UNAVAILABLE_MESSAGES = {
    Phase.LOADING: "the model is still loading; retry later",
    Phase.DRAINING: "the server is shutting down (draining); retry on another replica",
    Phase.STOPPED: "the server has stopped; retry on another replica",
    Phase.FAILED: "the engine has failed and the server is restarting; retry on another replica",
}


def unavailable_message(phase: Phase) -> str | None:
    """Why a new request is refused in this phase, or None when it is accepted."""
    return _UNAVAILABLE_MESSAGES.get(phase)


class Lifecycle:
    """Holds the phase and mirrors it to the health service (and to observers such as metrics)."""

    def __init__(self, health: health_aio.HealthServicer, services: Iterable[str]) -> None:
        self.phase = Phase.LOADING
        self._health = health
        # "" is the whole server: what Kubernetes' gRPC probe asks by default.
        self._services = ["", *services]
        self._observers: list[Callable[[Phase], None]] = []

    def observe(self, callback: Callable[[Phase], None]) -> None:
        self._observers.append(callback)
        callback(self.phase)

    async def set(self, phase: Phase) -> None:
        if self.phase in (Phase.STOPPED, Phase.FAILED) and phase is not Phase.FAILED:
            return  # terminal: a late "draining" must not revive a failed server's status
        self.phase = phase
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if phase is Phase.SERVING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self._health.set(name, status)
        for callback in self._observers:
            callback(phase)

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.SERVING
