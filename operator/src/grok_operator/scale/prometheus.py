"""The built-in autoscaler's I/O: Prometheus queries (PromQL over the servers' stable grok_* metrics)
and what one evaluation observes. The decision itself is scaling.decide (pure)."""

from __future__ import annotations

import json
import math
import statistics
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from grok_common.pods import is_ready
from grok_operator.observe.pods import created_at, ready_since
from grok_operator.scale.decide import DEFAULT_STARTUP_SECONDS

DEFAULT_DEPLOYMENT_LABEL = "serving_grok_dev_deployment"  # the pod label serving.grok.dev/deployment, as
# Prometheus names it (ServiceMonitor podTargetLabels, or a kubernetes_sd labelmap)

# (series the value comes from, PromQL aggregation over the deployment's replicas)
QUERIES = {
    "waitingRequestsPerReplica": ("grok_requests_waiting", "sum({series})"),
    "generatedTokensPerSecondPerReplica": ("grok_generation_tokens_total", "sum(rate({series}[1m]))"),
    "kvCacheUsage": ("grok_kv_cache_usage_ratio", "avg({series})"),
}


def router_queries(namespace: str, name: str, window: float,
                   label: str = DEFAULT_DEPLOYMENT_LABEL) -> tuple[str, str]:
    """PromQL for scale to zero, over the deployment's router pods: the calls held now, and the calls seen
    over the window (finished, plus in flight and held now)."""
    match = f'namespace="{namespace}",{label}="{name}"'
    held = f"sum(grok_router_requests_held{{{match}}})"
    # A router that has served nothing yet has no request series: counted as 0 (its held gauge is there).
    recent = (f"(sum(increase(grok_router_requests_total{{{match}}}[{int(window)}s])) or vector(0)) "
              f"+ (sum(grok_router_replica_in_flight{{{match}}}) or vector(0)) + {held}")
    return held, recent


class MetricsUnavailable(Exception):
    """Why there is no usable metric value; `reason` becomes the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MetricQuery:
    value: str
    freshness: str  # newest sample time among the deployment's series


def metric_query(
    metric: str, namespace: str, name: str, label: str = DEFAULT_DEPLOYMENT_LABEL
) -> MetricQuery:
    series_name, aggregation = QUERIES[metric]
    series = f'{series_name}{{namespace="{namespace}",{label}="{name}"}}'
    return MetricQuery(aggregation.format(series=series), f"max(timestamp({series}))")


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def instant(self, query: str) -> tuple[float, float] | None:
        """(value, evaluation time) of a one-series instant query; None when it returns no series."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                payload = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise MetricsUnavailable(
                "PrometheusUnreachable", f"Prometheus at {self.url} did not answer: {err}"
            ) from err
        if payload.get("status") != "success":
            raise MetricsUnavailable(
                "PrometheusError", f"Prometheus refused {query!r}: {payload.get('error')}"
            )
        result = payload["data"]["result"]
        if not result:
            return None
        at, value = result[0]["value"]
        return float(value), float(at)

    def metric(self, query: MetricQuery, stale_after: float) -> float:
        """The metric's current value, refusing missing or stale data."""
        fresh = self.instant(query.freshness)
        if fresh is None:
            raise MetricsUnavailable(
                "MetricMissing",
                f"no series match {query.value}: are the servers scraped, with the deployment label?",
            )
        newest, now = fresh
        if now - newest > stale_after:
            raise MetricsUnavailable(
                "MetricStale",
                f"the newest sample is {now - newest:.0f}s old "
                f"(more than {stale_after:.0f}s): scrapes are failing",
            )
        value = self.instant(query.value)
        if value is None or math.isnan(value[0]):
            raise MetricsUnavailable("MetricMissing", f"{query.value} returned no value")
        return value[0]


def replica_startup(pods: list[dict[str, Any]], now: float) -> tuple[tuple[float, ...], float]:
    """Ages of the replicas still starting, and the start-up time measured on those that became ready
    (creation to Ready; median of what is there, a default before any was seen)."""
    starting, measured = [], []
    for pod in pods:
        created = created_at(pod)
        if created is None:
            continue
        became_ready = ready_since(pod)
        if became_ready is not None:
            measured.append(max(0.0, became_ready - created))
        elif not is_ready(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            starting.append(max(0.0, now - created))
    return tuple(starting), (statistics.median(measured) if measured else DEFAULT_STARTUP_SECONDS)
