"""The front door's pure parts: key files to tenants, bearer checks, limit parsing, buckets on an injected
clock, per-tenant admission, the metadata sent upstream, and round-robin release of held calls."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from grok_router import main as router_main
from grok_router.forward import RouteError
from grok_router.gate import Gate, Refused
from grok_router.keyfiles import Watched, read_keys, read_token
from grok_router.limits import Bucket, Limit, Limiter, TenantState, parse_limits
from grok_router.metrics import RouterMetrics
from grok_router.replicas import ReplicaSet, round_robin
from grok_router.tenants import KeySet, parse_keys, tenant_of
from tests.router.keyslib import write_secret


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tenant_names_from_file_names() -> None:
    assert tenant_of("team-a") == tenant_of("team-a.2026-12") == tenant_of("team-a.old") == "team-a"
    for bad in ("Team-A", "team_a", "-team", "team-", "", ".hidden", "a" * 64, "unknown", "ünï"):
        assert tenant_of(bad) is None, bad
    assert tenant_of("a" * 63) == "a" * 63


def test_odd_key_files_are_skipped_with_the_file_named_never_the_key() -> None:
    keys = parse_keys({
        "team-a": b"  key-a1\n", "team-a.next": b"key-a2", "team-b": b"key-b", "team-e": b" \n ",
        "team-long": b"x" * 4097, "team-utf": "clé".encode(), "team-space": b"two words", "Bad_Name": b"k",
    })
    assert keys.keys == ((b"key-a1", "team-a"), (b"key-a2", "team-a"), (b"key-b", "team-b"))
    assert set(keys.skipped) == {"team-e", "team-long", "team-utf", "team-space", "Bad_Name"}
    assert "empty" in keys.skipped["team-e"] and "4096" in keys.skipped["team-long"]
    assert not any("key" in why and "clé" in why for why in keys.skipped.values())
    assert keys.tenants == {"team-a", "team-b"}


@pytest.mark.parametrize(("header", "tenant", "why"), [
    ("Bearer key-a1", "team-a", ""), ("bearer key-a2", "team-a", ""), ("Bearer  key-b ", "team-b", ""),
    (b"Bearer key-b", "team-b", ""), (None, None, "missing"), ("Bearer wrong", None, "invalid"),
    ("Basic a2V5", None, "malformed"), ("Bearer", None, "malformed"), ("key-a1", None, "malformed"),
    ("Bearer k\udcff", None, "invalid"), ("Bearer " + "x" * 10000, None, "invalid"),
])
def test_bearer_keys_give_the_tenant_or_say_what_to_send(header, tenant, why) -> None:  # type: ignore[no-untyped-def]
    keys = KeySet(((b"key-a1", "team-a"), (b"key-a2", "team-a"), (b"key-b", "team-b")))
    got, message = keys.authenticate(header)
    assert got == tenant
    assert why in message and (not why or "authorization: Bearer" in message)


def test_no_keys_refuses_everything_saying_so() -> None:
    assert KeySet().authenticate("Bearer anything") == (
        None, "the router has no API keys configured: every call is refused until keys are added")


def test_limits_json_and_its_errors_name_the_field() -> None:
    limits = parse_limits('{"default": {"requestsPerSecond": 5, "generatedTokensPerMinute": 60000, '
                          '"concurrentRequests": 8}, "tenants": {"team-a": {"requestsPerSecond": 20}}}')
    assert limits.of("team-a") == Limit(20.0, None, None)
    assert limits.of("other") == Limit(5.0, 60000.0, 8)
    assert parse_limits("{}").of("x").unlimited
    bad = [
        ("{", "JSON"),
        ("[]", "object"),
        ('{"default": {"requestsPerSecond": 0}}', "default.requestsPerSecond"),
        ('{"default": {"concurrentRequests": -1}}', "default.concurrentRequests"),
        ('{"tenants": {"t": {"generatedTokensPerMinute": "9"}}}', "tenants.t.generatedTokensPerMinute"),
        ('{"default": {"rps": 1}}', "default.rps"),
        ('{"tenants": {"Bad": {}}}', "tenants.Bad"),
        ('{"default": {"concurrentRequests": 1.5}}', "default.concurrentRequests"),
        ('{"default": {"requestsPerSecond": true}}', "default.requestsPerSecond"),
        ('{"other": 1}', "other"),
    ]
    for text, field in bad:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            parse_limits(text)


def test_flags_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model-name", "m", "--replica", "127.0.0.1:1"]
    with pytest.raises(SystemExit):
        router_main.parse_args([*base, "--tenant-limits", "{}"])
    assert "--tenant-limits needs --api-keys-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        router_main.parse_args([*base, "--api-keys-dir", "/k", "--tenant-limits",
                                '{"default": {"requestsPerSecond": -2}}'])
    assert "default.requestsPerSecond must be a number above 0" in capsys.readouterr().err
    args = router_main.parse_args([*base, "--api-keys-dir", "/k", "--tenant-limits", "{}"])
    assert args.api_keys_poll_seconds == 2.0 and args.router_replicas == 1


def test_buckets_refill_at_their_rate_up_to_capacity() -> None:
    clock = Clock()
    b = Bucket(rate=2.0, capacity=4.0, clock=clock)
    assert b.wait(1) == 0
    b.take(10)
    assert b.level == -6 and b.wait(1) == pytest.approx(3.5)
    clock.now += 100
    assert b.refill() == 4.0


def test_requests_per_second_burst_then_retry_after_from_the_bucket() -> None:
    clock = Clock()
    state = TenantState(Limit(requests_per_second=2), clock)
    assert state.admit(False) is None and state.admit(False) is None
    refusal = state.admit(False)
    assert refusal is not None and refusal.reason == "rate" and refusal.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert state.admit(False) is None
    slow = TenantState(Limit(requests_per_second=0.1), clock)  # capacity max(1, rate): one call
    assert slow.admit(False) is None
    assert slow.admit(False).retry_after == pytest.approx(10)  # type: ignore[union-attr]


def test_generated_tokens_admit_while_above_zero_and_may_go_negative() -> None:
    clock = Clock()
    state = TenantState(Limit(tokens_per_minute=60), clock)  # 1 token per second, capacity 60
    assert state.admit(True) is None
    state.generated(59)
    assert state.admit(True) is None  # 1 left: still above 0
    state.generated(30)  # streamed past the budget: -29
    refusal = state.admit(True)
    assert refusal is not None and refusal.reason == "tokens" and refusal.retry_after == pytest.approx(30)
    assert state.admit(False) is None  # a call that generates nothing (Tokenize) is not held back
    clock.now += 30
    assert state.admit(True) is None


def test_concurrency_counts_calls_until_released() -> None:
    state = TenantState(Limit(concurrent=2), Clock())
    assert state.admit(True) is None and state.admit(True) is None
    refusal = state.admit(True)
    assert refusal is not None and refusal.reason == "concurrency" and refusal.retry_after > 0
    state.release()
    assert state.admit(True) is None


def test_each_router_replica_takes_its_share() -> None:
    limiter = Limiter(parse_limits('{"default": {"requestsPerSecond": 10, "generatedTokensPerMinute": 600, '
                                   '"concurrentRequests": 3}}'), routers=2, clock=Clock())
    assert limiter.state("t").limit == Limit(5.0, 300.0, 1)


def _gate(tmp_path: Path, limits: str | None = None, token: bool = True) -> Gate:
    gate = Gate(RouterMetrics(ReplicaSet(0.5, 8)), tmp_path, tmp_path / "token" if token else None,
                parse_limits(limits) if limits else None, clock=Clock())
    gate.set_keys(parse_keys({"team-a": b"key-a", "team-b": b"key-b"}))
    return gate


def test_the_gate_refuses_counts_and_releases(tmp_path: Path) -> None:
    gate = _gate(tmp_path, '{"tenants": {"team-b": {"concurrentRequests": 1}}}')
    with pytest.raises(Refused) as no_key:
        gate.admit(None, True)
    assert no_key.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in no_key.value.details
    ticket = gate.admit("Bearer key-b", True)
    with pytest.raises(Refused) as busy:
        gate.admit("Bearer key-b", True)
    assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and busy.value.reason == "concurrency"
    assert ("retry-after-ms", "1000") in busy.value.trailers
    ticket.close("OK")
    ticket.close("OK")  # once only
    gate.admit("Bearer key-b", True).close("OK")
    text = gate.metrics.exposition().decode()
    assert 'grok_router_tenant_refusals_total{reason="unauthenticated",tenant="unknown"} 1.0' in text
    assert 'grok_router_tenant_refusals_total{reason="concurrency",tenant="team-b"} 1.0' in text
    assert 'grok_router_tenant_requests_total{code="OK",tenant="team-b"} 2.0' in text


def test_upstream_metadata_never_carries_the_callers_key(tmp_path: Path) -> None:
    caller = (("authorization", "Bearer key-a"), ("x-trace", "1"), ("user-agent", "grpc"))
    gate = _gate(tmp_path)
    with pytest.raises(RouteError) as no_token:  # the flag given, the file not there yet
        gate.upstream(caller)
    assert no_token.value.code == grpc.StatusCode.UNAVAILABLE
    gate.set_upstream_token("server-token")
    assert gate.upstream(caller) == (("x-trace", "1"), ("authorization", "Bearer server-token"))
    assert _gate(tmp_path, token=False).upstream(caller) == (("x-trace", "1"),)
    open_gate = Gate(RouterMetrics(ReplicaSet(0.5, 8)))  # neither flag: as before, passed through
    assert open_gate.upstream(caller) == (("authorization", "Bearer key-a"), ("x-trace", "1"))
    assert open_gate.admit(None, True).tenant is None


def test_key_folder_as_the_kubelet_writes_it_and_its_changes(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "keys"
    write_secret(folder, {"team-a": b"key-a\n", "team-x": b""})
    seen: list[KeySet] = []
    watched = Watched(folder, True, seen.append)
    with caplog.at_level(logging.WARNING):
        assert watched.check() and not watched.check()
    assert seen[-1].keys == ((b"key-a", "team-a"),) and set(seen[-1].skipped) == {"team-x"}
    write_secret(folder, {"team-a": b"key-a\n", "team-b": b"key-b"})
    assert watched.check() and seen[-1].tenants == {"team-a", "team-b"}
    write_secret(folder, {"team-b": b"key-b"})
    assert watched.check() and seen[-1].tenants == {"team-b"}
    assert read_keys(tmp_path / "absent").keys == ()
    token = tmp_path / "token"
    token.write_text("# the router's\n\n  s3cret \n")
    assert read_token(token) == "s3cret"
    token.write_text("")
    assert read_token(token) is None


def test_held_calls_leave_round_robin_across_tenants() -> None:
    arrivals = ["a1", "a2", "a3", "a4", "b1", "c1", "b2"]
    assert round_robin(arrivals, key=lambda x: x[0]) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]

    async def scenario() -> list[str]:
        from grok_router.replicas import Endpoint

        replicas = ReplicaSet(0.5, 8)
        order: list[str] = []

        async def call(name: str) -> None:
            await replicas.hold(600, tenant=name[0])
            order.append(name)

        tasks = []
        for name in arrivals:
            tasks.append(asyncio.create_task(call(name)))
            await asyncio.sleep(0)
        replicas.update({"pod": Endpoint("pod", "127.0.0.1:1")}, 1)
        await asyncio.gather(*tasks)
        await replicas.close()
        return order

    assert asyncio.run(scenario()) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
