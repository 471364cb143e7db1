"""The gauges the router reads from a replica's /metrics page, whatever else the page holds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from grok_router.replicas import parse_gauges


def page() -> str:
    """A page shaped like grok-server's: the three gauges among histograms, labelled counters and names that
    share their prefixes."""
    registry = CollectorRegistry()
    Gauge("grok_requests_in_flight", "in flight", registry=registry).set(7)
    Gauge("grok_requests_waiting", "waiting", registry=registry).set(3)
    Gauge("grok_kv_cache_usage_ratio", "kv", registry=registry).set(0.25)
    Gauge("grok_requests_in_flight_peak", "a longer name", registry=registry).set(99)
    Gauge("grok_requests_waiting_by_tenant", "labelled", ["tenant"], registry=registry).labels("a").set(5)
    requests = Counter("grok_requests", "requests", ["method", "code"], registry=registry)
    latency = Histogram("grok_time_to_first_token_seconds", "ttft", registry=registry)
    for i in range(200):
        requests.labels("GenerateStream", "OK").inc()
        latency.observe(i / 100)
    return generate_latest(registry).decode()


def test_the_three_gauges_and_nothing_else_are_read() -> None:
    assert parse_gauges(page()) == {
        "grok_requests_in_flight": 7.0,
        "grok_requests_waiting": 3.0,
        "grok_kv_cache_usage_ratio": 0.25,
    }


def test_a_page_without_them_or_cut_short_gives_what_it_has() -> None:
    assert parse_gauges("") == {}
    whole = page()
    cut = whole[: whole.index("grok_requests_waiting ")]  # the page in registration order: in flight first
    assert parse_gauges(cut) == {"grok_requests_in_flight": 7.0}
