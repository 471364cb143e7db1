"""grok-operator: runs the GrokDeployment operator."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from grok_operator import handlers  # noqa: F401 (registers the kopf handlers)
from grok_operator.control import metrics
from grok_operator.control.kube import load_config
from grok_operator.control.leader import LeaderElector
from grok_operator.control.state import State


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log pipelines (Loki, Cloud Logging, ...) parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("namespace", "name"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _peers(text: str) -> list[dict[str, Any]]:
    try:
        peers = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise argparse.ArgumentTypeError("expected a JSON list of NetworkPolicy peers (objects)")
    return peers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grok-operator", description=__doc__)
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    p.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("GROK_OPERATOR_METRICS_PORT", "8000"))
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("GROK_OPERATOR_HEALTH_PORT", "8080")),
        help="liveness endpoint http://0.0.0.0:PORT/healthz",
    )
    p.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    p.add_argument("--server-monitor-label", action="append", default=[], metavar="KEY=VALUE", type=_label,
                   help="extra label on the servers' ServiceMonitors, e.g. release=kube-prometheus-stack "
                        "(what your Prometheus's serviceMonitorSelector matches); repeatable")
    p.add_argument("--network-policy-metrics-from", type=_peers, default=[], metavar="JSON",
                   help="who may reach the servers' metrics port where spec.router.auth closes the front "
                        "door: a JSON list of NetworkPolicy peers (Prometheus, and this operator, which "
                        "reads the servers' start-up reports); default: any pod")
    p.add_argument("--lease-name", default="grok-operator",
                   help="the leader-election Lease: one per installation (the chart uses the release's name)")
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("GROK_PROMETHEUS_URL", ""),
        help="Prometheus HTTP API for the autoscaler (e.g. http://prometheus:9090)",
    )
    p.add_argument(
        "--prometheus-deployment-label",
        default="serving_grok_dev_deployment",
        help="Prometheus label carrying the pod label serving.grok.dev/deployment",
    )
    p.add_argument("--autoscale-interval", type=float, default=15.0, help="seconds between evaluations")
    p.add_argument(
        "--metrics-stale-seconds",
        type=float,
        default=60.0,
        help="older samples count as missing: replicas are held",
    )
    p.add_argument("--log-level", default=os.environ.get("GROK_OPERATOR_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format", choices=["json", "text"], default=os.environ.get("GROK_OPERATOR_LOG_FORMAT", "json")
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    log = logging.getLogger("grok_operator")
    State.prometheus_url = args.prometheus_url
    State.monitor_labels = dict(args.server_monitor_label)
    State.metrics_from = args.network_policy_metrics_from
    State.deployment_label = args.prometheus_deployment_label
    State.autoscale_interval = args.autoscale_interval
    State.metrics_stale_after = args.metrics_stale_seconds

    start_http_server(args.metrics_port)
    stop_asking = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_asking.set())

    elector = None
    if args.leader_election:
        elector = LeaderElector(load_config(), args.lease_namespace, args.lease_name)
        if not elector.acquire(stop_asking):
            return 0
        elector.keep_renewing()
    metrics.LEADER.set(1)

    async def run() -> None:
        stop_flag = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_flag.set)
        if elector is not None:
            elector.on_lost = lambda: loop.call_soon_threadsafe(stop_flag.set)
        await kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
            stop_flag=stop_flag,
        )

    log.info("operator starting (namespaces: %s)", ", ".join(args.namespace) or "all")
    asyncio.run(run())
    metrics.LEADER.set(0)
    if elector is not None:
        if elector.lost.is_set():
            log.error("lost leadership: exiting so that Kubernetes restarts this replica as a follower")
            return 1
        elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
