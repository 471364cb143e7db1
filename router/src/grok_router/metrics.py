"""The router's own `grok_router_*` Prometheus metrics (a contract, like grok-server's `grok_*`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from grok_router.replicas import ReplicaSet

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

METRIC_NAMES = (
    "grok_router_requests_total",
    "grok_router_upstream_requests_total",
    "grok_router_retries_total",
    "grok_router_routing_decisions_total",
    "grok_router_overhead_seconds",
    "grok_router_request_duration_seconds",
    "grok_router_replicas",
    "grok_router_replica_in_flight",
    "grok_router_replica_load",
    "grok_router_held_total",
    "grok_router_requests_held",
    "grok_router_oldest_held_seconds",
    "grok_router_tenant_requests_total",
    "grok_router_tenant_prompt_tokens_total",
    "grok_router_tenant_generated_tokens_total",
    "grok_router_tenant_refusals_total",
)


class _ReplicaCollector(Collector):
    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[GaugeMetricFamily]:
        known = GaugeMetricFamily(
            "grok_router_replicas", "Server pods the router knows of, by state.", labels=["state"]
        )
        known.add_metric(["known"], self._replicas.known)
        known.add_metric(["ready"], len(self._replicas.replicas))
        yield known
        in_flight = GaugeMetricFamily(
            "grok_router_replica_in_flight",
            "This router's calls in flight on each Ready replica.",
            labels=["replica"],
        )
        load = GaugeMetricFamily("grok_router_replica_load", "Each Ready replica's load as the router weighs "
                                 "it: its own calls there, plus the others' (from the replica's own count).",
                                 labels=["replica"])
        for replica in list(self._replicas.replicas.values()):
            in_flight.add_metric([replica.name], replica.in_flight)
            load.add_metric([replica.name], replica.load)
        yield in_flight
        yield load
        yield GaugeMetricFamily("grok_router_requests_held", "Calls waiting now for a replica to turn Ready.",
                                value=len(self._replicas.held))
        yield GaugeMetricFamily("grok_router_oldest_held_seconds",
                                "How long the oldest call waiting for a replica has waited.",
                                value=self._replicas.oldest_held_seconds())


class RouterMetrics:
    def __init__(self, replicas: ReplicaSet) -> None:
        disable_created_metrics()
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "grok_router_requests",
            "Calls the router finished, by API, method and status code (gRPC names).",
            ["api", "method", "code"],
            registry=r,
        )
        self.upstream = Counter(
            "grok_router_upstream_requests",
            "Attempts sent to replicas, by replica and status code.",
            ["replica", "code"],
            registry=r,
        )
        self.retries = Counter(
            "grok_router_retries",
            "Calls sent again to another replica, by the code of the failed attempt.",
            ["code"],
            registry=r,
        )
        self.decisions = Counter(
            "grok_router_routing_decisions",
            "Replica choices by reason: affinity (the prompt prefix's "
            "replica), affinity_overloaded (its next choice), load (least loaded).",
            ["reason"],
            registry=r,
        )
        self.overhead = Histogram(
            "grok_router_overhead_seconds",
            "Time a call spends in the router before its attempt goes out "
            "(choosing a replica, failed attempts excluded).",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "grok_router_request_duration_seconds",
            "Calls from arrival at the router to their end.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.held = Counter(
            "grok_router_held", "Calls that had to wait for a Ready replica (none was Ready on arrival).",
            registry=r)
        # Per tenant (with --api-keys-dir): the tenant label takes the tenants of the keys folder, and
        # "unknown" for calls without a valid key, so its values are bounded by the folder's files.
        self.tenant_requests = Counter(
            "grok_router_tenant_requests",
            "Calls by tenant and outcome (gRPC code names; refusals at the front door included).",
            ["tenant", "code"],
            registry=r,
        )
        self.tenant_prompt = Counter(
            "grok_router_tenant_prompt_tokens", "Prompt tokens of each tenant's calls (tokens in).",
            ["tenant"], registry=r)
        self.tenant_generated = Counter(
            "grok_router_tenant_generated_tokens", "Tokens generated for each tenant (tokens out).",
            ["tenant"], registry=r)
        self.tenant_refusals = Counter(
            "grok_router_tenant_refusals",
            "Calls refused at the front door, by tenant and reason: unauthenticated (tenant \"unknown\"), "
            "rate (requestsPerSecond), tokens (generatedTokensPerMinute), concurrency (concurrentRequests).",
            ["tenant", "reason"],
            registry=r,
        )
        r.register(_ReplicaCollector(replicas))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
