"""The front door: who a call is from (API keys), whether its tenant's limits admit it, what credential goes
on to the replicas, and the per-tenant metrics. Keys, limits and the upstream token come from tenants.py,
limits.py and keyfiles.py; this module only joins them for a call.

Without --api-keys-dir and --upstream-token-file every call is admitted, untenanted, and the caller's own
`authorization` goes on to the replica, as before these flags existed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grok_router.forward import RouteError, forwardable
from grok_router.limits import Limiter, Limits, TenantState
from grok_router.metrics import RouterMetrics
from grok_router.tenants import UNKNOWN, KeySet

log = logging.getLogger("grok_router.gate")


@dataclass
class Refused(RouteError):
    """A call the gate turned away: `reason` is unauthenticated, rate, tokens or concurrency."""

    reason: str = "unauthenticated"
    retry_after: float = 0.0  # seconds, for the limits


class Ticket:
    """An admitted call: counts its tokens against its tenant and frees its concurrency slot at the end."""

    __slots__ = ("_closed", "_counters", "_gate", "_generated", "_prompt", "_state", "tenant")

    def __init__(self, gate: Gate | None, tenant: str | None, state: TenantState | None) -> None:
        self._gate, self.tenant, self._state = gate, tenant, state
        self._counters = gate.counters(tenant) if gate is not None and tenant is not None else None
        self._generated = self._prompt = 0
        self._closed = False

    def observe(self, message: Any) -> None:
        """A replica's response message (usage is cumulative): the new generated tokens are taken out."""
        if self._gate is None:
            return
        usage = message.usage
        generated = usage.generated_tokens - self._generated
        if generated > 0:
            self._generated = usage.generated_tokens
            if self._state is not None:
                self._state.generated(generated)
            self._counters.generated.inc(generated)
        if usage.prompt_tokens > self._prompt:
            self._counters.prompt.inc(usage.prompt_tokens - self._prompt)
            self._prompt = usage.prompt_tokens

    def close(self, code: str) -> None:
        if self._gate is None or self._closed:
            return
        self._closed = True
        if self._state is not None:
            self._state.release()
        if code == "OK":
            self._counters.ok.inc()
        else:
            self._gate.metrics.tenant_requests.labels(self.tenant, code).inc()


@dataclass
class _Counters:
    """A tenant's counters, looked up once (prometheus_client's labels() takes a lock and a dict per call)."""

    ok: Any
    prompt: Any
    generated: Any


OPEN = Ticket(None, None, None)  # the ticket of every call when the router checks no keys


class Gate:
    def __init__(
        self,
        metrics: RouterMetrics,
        keys_dir: Path | None = None,
        upstream_token_file: Path | None = None,
        limits: Limits | None = None,
        routers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.keys_dir = keys_dir
        self.token_file = upstream_token_file
        self.checks_keys = keys_dir is not None
        self.keys = KeySet()
        self.limiter = Limiter(limits, routers, clock) if limits is not None else None
        self._upstream: tuple[tuple[str, str], ...] | None = None
        self._skipped: dict[str, str] = {}
        self._counters: dict[str, _Counters] = {}

    def counters(self, tenant: str) -> _Counters:
        found = self._counters.get(tenant)
        if found is None:
            m = self.metrics
            found = self._counters[tenant] = _Counters(m.tenant_requests.labels(tenant, "OK"),
                                                       m.tenant_prompt.labels(tenant),
                                                       m.tenant_generated.labels(tenant))
        return found

    # -- configuration, as keyfiles.py reads it

    def set_keys(self, keys: KeySet) -> None:
        for name, why in keys.skipped.items():
            if self._skipped.get(name) != why:
                log.warning("API keys folder %s: file %r skipped: %s", self.keys_dir, name, why)
        self._skipped = dict(keys.skipped)
        # Called once per change of the folder: said once per change.
        if not keys.keys:
            log.warning("API keys folder %s holds no valid key: every call is refused (UNAUTHENTICATED)",
                        self.keys_dir)
        else:
            log.info("API keys: %d keys of %d tenants", len(keys.keys), len(keys.tenants))
        self.keys = keys

    def set_upstream_token(self, token: str | None) -> None:
        if token is None:
            self._upstream = None
        else:
            if self._upstream is None:
                log.info("upstream token read from %s", self.token_file)
            self._upstream = (("authorization", f"Bearer {token}"),)

    # -- per call

    def admit(self, authorization: str | bytes | None, generates: bool) -> Ticket:
        """The call's ticket, or Refused (UNAUTHENTICATED or RESOURCE_EXHAUSTED)."""
        if not self.checks_keys:
            return OPEN
        tenant, why = self.keys.authenticate(authorization)
        if tenant is None:
            self._refuse(UNKNOWN, "unauthenticated")
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, why)
        state = None
        if self.limiter is not None:
            state = self.limiter.state(tenant)
            refusal = state.admit(generates)
            if refusal is not None:
                self._refuse(tenant, refusal.reason)
                millis = max(1, math.ceil(refusal.retry_after * 1000))
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message,
                              (("retry-after-ms", str(millis)),), refusal.reason, refusal.retry_after)
        return Ticket(self, tenant, state)

    def _refuse(self, tenant: str, reason: str) -> None:
        self.metrics.tenant_refusals.labels(tenant, reason).inc()
        self.metrics.tenant_requests.labels(
            tenant, "UNAUTHENTICATED" if reason == "unauthenticated" else "RESOURCE_EXHAUSTED").inc()

    def upstream(self, metadata: Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
        """The metadata a forwarded call carries: the caller's (less this hop's headers), with `authorization`
        replaced by the router's upstream token, or dropped when the router checks keys itself."""
        passed = forwardable(metadata)
        if self.token_file is None and not self.checks_keys:
            return passed  # neither flag: the caller's credential goes on, as before
        if self.token_file is not None and self._upstream is None:
            raise RouteError(grpc.StatusCode.UNAVAILABLE,
                             f"the router has no upstream token ({self.token_file} is missing or holds no "
                             "token): retry later")
        return tuple(kv for kv in passed if kv[0] != "authorization") + (self._upstream or ())
