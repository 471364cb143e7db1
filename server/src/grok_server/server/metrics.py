"""The server's own `grok_*` Prometheus metrics, and the small HTTP endpoint that serves them.

These names are a contract (the autoscaler and dashboards query them); they are computed by this server, never
re-exported from vLLM, whose metric names have changed between releases. The same HTTP port also answers
`/healthz` (liveness) and `/readyz` (readiness) so that Kubernetes probes work even when gRPC uses TLS, and
`/startup`: the last start's phases as JSON.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from grok_server.server.lifecycle import Phase
from grok_server.server.startup import StartupReport

TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                20.0, 40.0, 60.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
               0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)

# Every metric name this module exports: the contract, listed once (tests check the exposition against it).
METRIC_NAMES = (
    "grok_requests_waiting",
    "grok_requests_running",
    "grok_requests_in_flight",
    "grok_max_concurrent_requests",
    "grok_kv_cache_usage_ratio",
    "grok_server_ready",
    "grok_prompt_tokens_total",
    "grok_generation_tokens_total",
    "grok_time_to_first_token_seconds",
    "grok_inter_token_latency_seconds",
    "grok_request_duration_seconds",
    "grok_requests_total",
    "grok_build_info",
    "grok_server_startup_seconds",
    "grok_server_startup_phase_seconds",
    "grok_server_compile_cache",
)


@dataclass
class EngineSnapshot:
    """The engine scheduler's latest figures, written by the engine's stat logger on every step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


class _GaugeCollector(Collector):
    """Gauges read at scrape time, so they are never stale between engine steps."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        m = self._m
        snap = m.engine
        # The engine publishes scheduler figures only while it steps: after the last request ends or is
        # aborted it goes quiet with the old numbers. With nothing in flight here, nothing runs there.
        idle = m.engine_requests() == 0
        yield GaugeMetricFamily(
            "grok_requests_waiting", "Requests queued in the engine, not yet scheduled.",
            value=0 if idle else snap.waiting)
        yield GaugeMetricFamily(
            "grok_requests_running", "Requests in the engine's running batch.",
            value=0 if idle else snap.running)
        yield GaugeMetricFamily(
            "grok_requests_in_flight",
            "Requests admitted by this server and not finished (the admission-controlled count).",
            value=m.in_flight())
        yield GaugeMetricFamily(
            "grok_max_concurrent_requests", "The admission limit on requests in flight.",
            value=m.max_concurrent)
        yield GaugeMetricFamily(
            "grok_kv_cache_usage_ratio", "Fraction of the KV cache in use, 0 to 1.",
            value=0.0 if idle else snap.kv_cache_usage)
        yield GaugeMetricFamily(
            "grok_server_ready", "1 while the server accepts requests (health SERVING), else 0.",
            value=1 if m.phase is Phase.SERVING else 0)
        info = InfoMetricFamily("grok_build", "Server and engine versions and the served model.")
        info.add_metric([], m.build_info)
        yield info
        report = m.startup
        if report is not None:
            yield GaugeMetricFamily(
                "grok_server_startup_seconds", "This server's last start: exec to Ready.",
                value=report.seconds)
            phases = GaugeMetricFamily(
                "grok_server_startup_phase_seconds", "This server's last start, by phase (they add up to "
                "grok_server_startup_seconds).", labels=["phase"])
            for name, seconds in report.phases.items():
                phases.add_metric([name], seconds)
            yield phases
            cache = GaugeMetricFamily(
                "grok_server_compile_cache", "The compile cache at this server's start: 1 for the result it "
                "had (hit, miss or off), 0 for the others.", labels=["result"])
            for result in ("hit", "miss", "off"):
                cache.add_metric([result], 1 if report.compile_cache.state == result else 0)
            yield cache


class RepeatedHistogram(Collector):
    """A Prometheus histogram whose observe() can count one value several times.

    A stream message carrying n tokens is n inter-token gaps of the same length: one call instead of n keeps
    the metric off the per-token path (thousands of tokens a second under load). Observed from the event
    loop, read by the metrics thread; the lock keeps the buckets, count and sum of a scrape consistent.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [*buckets, math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float, times: int = 1) -> None:
        i = bisect.bisect_left(self._bounds, value)  # the first bucket whose upper bound (inclusive) holds it
        with self._lock:
            self._counts[i] += times
            self._sum += value * times

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = itertools.accumulate(counts)
        yield HistogramMetricFamily(
            self._name, self._documentation,
            buckets=[(floatToGoString(b), c) for b, c in zip(self._bounds, cumulative, strict=True)],
            sum_value=total)


class ServerMetrics:
    def __init__(self, *, max_concurrent: int, build_info: dict[str, str]) -> None:
        # The *_created series double the exposition for no use to the autoscaler.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.engine = EngineSnapshot()
        self.max_concurrent = max_concurrent
        self.build_info = build_info
        self.phase = Phase.LOADING
        self.startup: StartupReport | None = None
        self.in_flight: Callable[[], int] = lambda: 0
        self.engine_requests: Callable[[], int] = lambda: 0
        r = self.registry
        self.prompt_tokens = Counter(
            "grok_prompt_tokens", "Prompt tokens prefilled for requests.", registry=r)
        self.generation_tokens = Counter(
            "grok_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "grok_time_to_first_token_seconds",
            "From a request's admission to its first generated token.", buckets=TTFT_BUCKETS, registry=r)
        self.itl = RepeatedHistogram(
            "grok_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.",
            ITL_BUCKETS, r)
        self.duration = Histogram(
            "grok_request_duration_seconds",
            "Generate and GenerateStream calls admitted to the engine, from admission to the end.",
            buckets=DURATION_BUCKETS, registry=r)
        self.requests = Counter(
            "grok_requests", "Finished RPCs by method and gRPC status code.", ["method", "code"], registry=r)
        self.registry.register(_GaugeCollector(self))

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _handler_class(metrics: ServerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                alive = metrics.phase is not Phase.FAILED
                self._reply(200 if alive else 503, metrics.phase.value.encode() + b"\n")
            elif path == "/readyz":
                ready = metrics.phase is Phase.SERVING
                self._reply(200 if ready else 503, metrics.phase.value.encode() + b"\n")
            elif path == "/startup":
                # Where this server's start went (the operator puts it in the GrokDeployment's status).
                if metrics.startup is None:
                    error = {"error": f"not started yet ({metrics.phase.value})"}
                    self._reply(404, json.dumps(error).encode(), "application/json")
                else:
                    self._reply(200, json.dumps(metrics.startup.to_json()).encode(), "application/json")
            else:
                self._reply(404, b"not found: try /metrics, /healthz, /readyz or /startup\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the server's log

    return Handler


class MetricsHTTPServer:
    """Serves /metrics, /healthz and /readyz from a daemon thread (off the gRPC event loop)."""

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(metrics))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="grok-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
