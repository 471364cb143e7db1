"""`grok-router`: one address for the replicas of a GrokDeployment.

Serves grok.serving.v1.GenerationService (with gRPC health and reflection) on --port and OpenAI-compatible
HTTP, /metrics and probes on --http-port; forwards every call to one Ready replica, found by watching the
server pods of --selector in --namespace (or given with --replica). SIGTERM: health NOT_SERVING, calls in
flight get --drain-grace-seconds, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from grok_router.forward import Forwarder, RouteError
from grok_router.gate import Gate
from grok_router.http import RouterHTTP
from grok_router.keyfiles import Watched, poll_forever
from grok_router.limits import Limits, parse_limits
from grok_router.metrics import RouterMetrics
from grok_router.replicas import Endpoint, PodWatcher, ReplicaSet, scrape_forever
from grok_router.service import RouterServicer
from grok_router.tls import CertificateFiles
from grok_rpc.grpc_setup import SERVICE_NAME, generation_server

log = logging.getLogger("grok_router")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10, not {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.05 and 3600 seconds, not {text}")
    return value


def _limits(text: str) -> Limits:
    try:
        return parse_limits(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _static_replica(text: str) -> Endpoint:
    """HOST:PORT[,METRICS_HOST:PORT] — a replica given by address (tests, benchmarks, no cluster)."""
    grpc_address, _, metrics = text.partition(",")
    if ":" not in grpc_address:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT[,METRICS_HOST:PORT]")
    return Endpoint(grpc_address, grpc_address, metrics or None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grok-router", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="0.0.0.0", help="address of the gRPC and HTTP ports")
    p.add_argument("--port", type=int, default=50051, help="gRPC port")
    p.add_argument("--http-port", type=int, default=8080, help="OpenAI-compatible HTTP, /metrics and probes")
    p.add_argument("--model-name", required=True, help="the served model's name (OpenAI's `model`)")
    d = p.add_argument_group("replicas")
    d.add_argument("--namespace", help="namespace of the server pods")
    d.add_argument("--selector", help="label selector of the server pods, e.g. serving.grok.dev/deployment=x")
    d.add_argument(
        "--grpc-port-name", default="grpc", help="the servers' gRPC container port (name or number)"
    )
    d.add_argument(
        "--metrics-port-name", default="metrics", help="the servers' metrics port (name or number)"
    )
    d.add_argument(
        "--kubeconfig",
        help="default: the pod's service account (in-cluster), else $KUBECONFIG or ~/.kube/config",
    )
    d.add_argument(
        "--replica",
        type=_static_replica,
        action="append",
        default=[],
        help="HOST:PORT[,METRICS_HOST:PORT] of a replica, instead of watching pods (repeatable)",
    )
    r = p.add_argument_group("routing")
    r.add_argument(
        "--prefix-blocks",
        type=int,
        default=8,
        help="blocks of prompt (16 tokens, or 64 bytes of text) that key prefix affinity; 0: off",
    )
    r.add_argument(
        "--balance",
        type=_fraction,
        default=0.5,
        help="a prefix's replica is taken while its load is under (1 + balance) x the average",
    )
    r.add_argument(
        "--max-attempts",
        type=_positive,
        default=3,
        help="replicas tried for a call refused (UNAVAILABLE, RESOURCE_EXHAUSTED) before any output",
    )
    r.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between reads of replicas' gauges"
    )
    h = p.add_argument_group("holding (no Ready replica: scaled to zero, or all restarting)")
    h.add_argument("--hold-timeout-seconds", type=float, default=1800.0,
                   help="how long a call waits for a replica to turn Ready (a cold start of Grok-1 takes "
                        "minutes); 0: refuse at once with UNAVAILABLE")
    h.add_argument("--max-held", type=_positive, default=1024,
                   help="calls that may wait at once; more are refused at once with RESOURCE_EXHAUSTED")
    a = p.add_argument_group("API keys and limits per tenant (without --api-keys-dir: no keys checked)")
    a.add_argument("--api-keys-dir", type=Path,
                   help="folder of API keys (a mounted Secret): one key per file, the tenant is the file "
                        "name up to its first '.'; calls without 'authorization: Bearer <key>' are refused")
    a.add_argument("--api-keys-poll-seconds", type=_seconds, default=2.0,
                   help="how often the keys folder, the upstream token file and the TLS certificate and key "
                        "are checked for changes")
    a.add_argument("--upstream-token-file", type=Path,
                   help="file with the token the router sends to the replicas "
                        "('authorization: Bearer <token>'), in place of any caller's")
    a.add_argument("--tenant-limits", type=_limits,
                   help='JSON: {"default": {"requestsPerSecond": R, "generatedTokensPerMinute": T, '
                        '"concurrentRequests": C}, "tenants": {"NAME": {...}}}; absent fields: unlimited')
    a.add_argument("--router-replicas", type=_positive, default=1,
                   help="router replicas sharing the limits: each enforces 1/N of every tenant's limit")
    t = p.add_argument_group("TLS on both ports (without --tls-cert: plaintext)")
    t.add_argument("--tls-cert", type=Path,
                   help="certificate chain (PEM; a mounted kubernetes.io/tls Secret's tls.crt) served on the "
                        "gRPC and HTTP ports; a renewed one is picked up without a restart")
    t.add_argument("--tls-key", type=Path, help="its private key (PEM; the Secret's tls.key)")
    p.add_argument("--drain-grace-seconds", type=float, default=30.0)
    p.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="uvloop (the default) costs the router less CPU per streamed token than "
                        "asyncio's own loop (bench/router_vs_peers.py, docs/router.md)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.replica and not (args.namespace and args.selector):
        p.error("give --namespace and --selector (watch the server pods) or --replica addresses")
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if args.tenant_limits is not None and args.api_keys_dir is None:
        p.error("--tenant-limits needs --api-keys-dir: without API keys there are no tenants to limit")
    return args


class Router:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.replicas = ReplicaSet(args.balance, args.prefix_blocks)
        self.metrics = RouterMetrics(self.replicas)
        self.gate = Gate(self.metrics, args.api_keys_dir, args.upstream_token_file, args.tenant_limits,
                         args.router_replicas)
        self.watched: list[Watched] = []
        if args.api_keys_dir is not None:
            self.watched.append(Watched(args.api_keys_dir, True, self.gate.set_keys))  # type: ignore[arg-type]
        if args.upstream_token_file is not None:
            self.watched.append(Watched(args.upstream_token_file, False,
                                        self.gate.set_upstream_token))  # type: ignore[arg-type]
        self.tls = None
        if args.tls_cert is not None:
            self.tls = CertificateFiles(args.tls_cert, args.tls_key)
            if not self.tls.check():
                raise SystemExit(f"grok-router: no usable TLS certificate and key in {args.tls_cert} and "
                                 f"{args.tls_key} (see the warning above)")
            self.watched.append(self.tls)  # type: ignore[arg-type]
        for watched in self.watched:  # read once before serving: no call meets an unread folder
            watched.check()
        self.forwarder = Forwarder(self.replicas, self.metrics, args.max_attempts, args.hold_timeout_seconds,
                                   args.max_held)
        self.health = health_aio.HealthServicer()
        self.stop = asyncio.Event()
        self.draining = False

    def ready(self) -> bool:
        return self.replicas.synced.is_set() and not self.draining

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        a = self.args
        servicer = RouterServicer(self.forwarder, a.prefix_blocks, self.gate)
        server = generation_server(servicer, self.health, -1)
        address = f"{a.host}:{a.port}"
        port = (server.add_secure_port(address, self.tls.grpc_credentials()) if self.tls is not None
                else server.add_insecure_port(address))
        http = RouterHTTP(self.forwarder, a.model_name, a.prefix_blocks, self.ready, self.metrics.exposition,
                          self.gate)
        # A caller that disconnects cancels its handler, and with it the replica's generation.
        runner = web.AppRunner(http.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, a.host, a.http_port,
                           ssl_context=self.tls.http if self.tls is not None else None)
        await site.start()
        await server.start()
        watcher = None
        if a.replica:
            self.replicas.update({e.name: e for e in a.replica}, len(a.replica))
        else:
            watcher = PodWatcher(
                self.replicas, a.namespace, a.selector, a.grpc_port_name, a.metrics_port_name, a.kubeconfig
            )
            watcher.start(loop)
        scraper = asyncio.create_task(scrape_forever(self.replicas, a.scrape_interval))
        poller = None
        if self.watched:
            poller = asyncio.create_task(poll_forever(self.watched, a.api_keys_poll_seconds))
        log.info(
            "listening on %s:%d (gRPC) and %s:%d (HTTP)%s; replicas: %s",
            a.host,
            port,
            a.host,
            a.http_port,
            " with TLS" if self.tls is not None else "",
            ", ".join(e.grpc_address for e in a.replica) or f"pods {a.selector} in {a.namespace}",
        )
        await self.replicas.synced.wait()
        for service in (SERVICE_NAME, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self.stop.wait()
        log.info("draining: grace period %.1f s", a.drain_grace_seconds)
        self.draining = True
        # Held calls cannot be handed to another router replica from here: they end now, retryable.
        self.replicas.fail_held(RouteError(grpc.StatusCode.UNAVAILABLE, "the router is shutting down: retry"))
        for service in (SERVICE_NAME, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace=a.drain_grace_seconds)
        await runner.cleanup()
        scraper.cancel()
        if poller is not None:
            poller.cancel()
        if watcher is not None:
            watcher.stop()
        await self.replicas.close()
        log.info("exiting")
        return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        code = runner.run(Router(args).run())
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
