"""The router's hold while no replica is Ready, on its own event loop (no server needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest

from grok_router.forward import Forwarder, RouteError
from grok_router.metrics import RouterMetrics
from grok_router.replicas import Endpoint, ReplicaSet


def forwarder(hold: float, max_held: int) -> Forwarder:
    replicas = ReplicaSet(balance=0.5, prefix_blocks=8)
    return Forwarder(replicas, RouterMetrics(replicas), max_attempts=3, hold_timeout=hold, max_held=max_held)


async def until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until `condition` holds (each step is the loop's own turn, not a timer)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_held_calls_go_out_oldest_first_when_a_replica_turns_ready() -> None:
    async def scenario() -> list[int]:
        f = forwarder(hold=600, max_held=10)
        order: list[int] = []

        async def call(i: int) -> None:
            replica = await f._choose(None, set(), None, None)
            order.append(i)
            assert replica.name == "pod-a"

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(call(i)))
            await asyncio.sleep(0)  # arrive in this order
        await until(lambda: len(f.replicas.held) == 5)
        assert f.replicas.oldest_held_seconds() > 0
        f.replicas.update({"pod-a": Endpoint("pod-a", "127.0.0.1:1")}, 1)
        await asyncio.gather(*tasks)
        assert not f.replicas.held
        await f.replicas.close()
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_beyond_the_bound_refused_at_once_and_the_deadline_wins_over_the_hold() -> None:
    async def scenario() -> None:
        f = forwarder(hold=600, max_held=2)
        waiting = [asyncio.create_task(f._choose(None, set(), None, None)) for _ in range(2)]
        await until(lambda: len(f.replicas.held) == 2)
        with pytest.raises(RouteError) as refused:
            await f._choose(None, set(), None, None)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after-ms", "10000") in refused.value.trailers
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert not f.replicas.held  # a cancelled caller leaves the queue
        with pytest.raises(RouteError) as late:
            await f._choose(None, set(), None, time.monotonic() + 0.05)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(scenario())


def test_the_hold_timeout_and_a_stopping_router_end_held_calls_retryably() -> None:
    async def scenario() -> None:
        f = forwarder(hold=0.05, max_held=2)
        with pytest.raises(RouteError) as expired:
            await f._choose(None, set(), None, None)
        assert expired.value.code == grpc.StatusCode.UNAVAILABLE and "hold timeout" in expired.value.details
        f.hold_timeout = 600
        waiting = asyncio.create_task(f._choose(None, set(), None, None))
        await until(lambda: bool(f.replicas.held))
        f.replicas.fail_held(RouteError(grpc.StatusCode.UNAVAILABLE, "the router is shutting down: retry"))
        with pytest.raises(RouteError) as stopped:
            await waiting
        assert stopped.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(RouteError):  # and nothing new is held
            await f._choose(None, set(), None, None)
        no_hold = forwarder(hold=0, max_held=2)
        with pytest.raises(RouteError) as at_once:
            await no_hold._choose(None, set(), None, None)
        assert at_once.value.code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())
