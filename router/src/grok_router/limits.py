"""Limits per tenant (pure, the clock injected): requests per second, generated tokens per minute and
concurrent requests, from --tenant-limits JSON.

- requestsPerSecond: a token bucket, capacity max(1, rate) (a burst of one second's worth); a call takes 1.
- generatedTokensPerMinute: a bucket refilled at rate/60 per second, capacity = the rate; a call is admitted
  while the bucket is above 0, and the tokens it generates are taken out as they stream (the bucket may go
  below 0: later calls wait for the refill).
- concurrentRequests: calls in flight (held ones included).

With `share` = N router replicas, each enforces 1/N of every limit (concurrency: at least 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("requestsPerSecond", "generatedTokensPerMinute", "concurrentRequests")
CONCURRENCY_RETRY_SECONDS = 1.0  # a fixed hint: a slot frees when a call ends, which no bucket predicts


@dataclass(frozen=True)
class Limit:
    requests_per_second: float | None = None
    tokens_per_minute: float | None = None
    concurrent: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_second is None and self.tokens_per_minute is None and self.concurrent is None

    def share(self, routers: int) -> Limit:
        if routers == 1:
            return self
        return Limit(
            None if self.requests_per_second is None else self.requests_per_second / routers,
            None if self.tokens_per_minute is None else self.tokens_per_minute / routers,
            None if self.concurrent is None else max(1, self.concurrent // routers),
        )


@dataclass(frozen=True)
class Limits:
    default: Limit = field(default_factory=Limit)
    tenants: Mapping[str, Limit] = field(default_factory=dict)

    def of(self, tenant: str) -> Limit:
        return self.tenants.get(tenant, self.default)


def _limit(where: str, spec: Any) -> Limit:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be an object with {', '.join(FIELDS)}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    values: list[float | None] = []
    for name in FIELDS:
        value = spec.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{where}.{name} must be a number above 0, not {json.dumps(value)}")
        if name == "concurrentRequests" and value is not None and not float(value).is_integer():
            raise ValueError(f"{where}.{name} must be a whole number, not {value}")
        values.append(value)
    rps, tpm, concurrent = values
    return Limit(None if rps is None else float(rps), None if tpm is None else float(tpm),
                 None if concurrent is None else int(concurrent))


def parse_limits(text: str) -> Limits:
    """--tenant-limits: {"default": {...}, "tenants": {"team-a": {...}}}; ValueError naming the field."""
    from grok_router.tenants import tenant_of

    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(body, dict):
        raise ValueError('must be a JSON object: {"default": {...}, "tenants": {"NAME": {...}}}')
    unknown = sorted(set(body) - {"default", "tenants"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (known: default, tenants)")
    default = _limit("default", body.get("default") or {})
    tenants = body.get("tenants") or {}
    if not isinstance(tenants, dict):
        raise ValueError("tenants must be an object: tenant name -> limits")
    named = {}
    for name, spec in tenants.items():
        if tenant_of(name) != name:
            raise ValueError(f"tenants.{name}: not a tenant name (lowercase letters, digits and '-')")
        named[name] = _limit(f"tenants.{name}", spec)
    return Limits(default, named)


class Bucket:
    """A token bucket: `level` refills at `rate` per second up to `capacity`; `take` may make it negative."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.level = capacity
        self.at = clock()

    def refill(self) -> float:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level

    def wait(self, need: float) -> float:
        """Seconds until the level is at least `need` (0: now)."""
        level = self.refill()
        return 0.0 if level >= need else (need - level) / self.rate

    def take(self, amount: float) -> None:
        self.refill()
        self.level -= amount


@dataclass
class Refusal:
    reason: str  # "rate", "tokens" or "concurrency"
    retry_after: float  # seconds
    message: str


class TenantState:
    """One tenant's buckets and in-flight count under a Limit."""

    def __init__(self, limit: Limit, clock: Callable[[], float]) -> None:
        self.limit = limit
        rps, tpm = limit.requests_per_second, limit.tokens_per_minute
        self.requests = None if rps is None else Bucket(rps, max(1.0, rps), clock)
        self.tokens = None if tpm is None else Bucket(tpm / 60.0, tpm, clock)
        self.in_flight = 0

    def admit(self, generates: bool) -> Refusal | None:
        """Takes a request (and a concurrency slot) when every limit allows it, else says which does not."""
        limit = self.limit
        if limit.concurrent is not None and self.in_flight >= limit.concurrent:
            return Refusal("concurrency", CONCURRENCY_RETRY_SECONDS,
                           f"over the tenant's limit of {limit.concurrent} concurrent requests")
        if generates and self.tokens is not None:
            wait = self.tokens.wait(1e-9)
            if wait > 0:
                wait = self.tokens.wait(1.0)
                return Refusal("tokens", wait, f"over the tenant's limit of {limit.tokens_per_minute:g} "
                               f"generated tokens per minute: retry in {wait:.1f} s")
        if self.requests is not None:
            wait = self.requests.wait(1.0)
            if wait > 0:
                return Refusal("rate", wait, f"over the tenant's limit of {limit.requests_per_second:g} "
                               f"requests per second: retry in {wait:.2f} s")
            self.requests.take(1.0)
        self.in_flight += 1
        return None

    def generated(self, tokens: int) -> None:
        if self.tokens is not None and tokens:
            self.tokens.take(tokens)

    def release(self) -> None:
        self.in_flight -= 1


class Limiter:
    """The tenants' states, made on first use (tenants come from the keys folder: a bounded number)."""

    def __init__(self, limits: Limits, routers: int, clock: Callable[[], float]) -> None:
        self.limits, self.routers, self.clock = limits, routers, clock
        self.states: dict[str, TenantState] = {}

    def state(self, tenant: str) -> TenantState:
        state = self.states.get(tenant)
        if state is None:
            state = self.states[tenant] = TenantState(self.limits.of(tenant).share(self.routers), self.clock)
        return state
