"""`grok-server`: serve a model over gRPC (grok.serving.v1) with vLLM's AsyncLLM.

Startup: the gRPC port and the metrics port open first (health NOT_SERVING, RPCs UNAVAILABLE) while the engine
loads in a thread; then health turns SERVING. SIGTERM drains: NOT_SERVING, new calls UNAVAILABLE, in-flight
calls get --drain-grace-seconds to finish, then exit 0. If the engine dies: in-flight calls get UNAVAILABLE
and the process exits 1 so that Kubernetes restarts it.

With --nnodes > 1 this is the leader (node 0) of a replica spread over several hosts, whose other nodes run
`grok-server-worker` (worker.py). A worker node that stops heartbeating for --peer-timeout-seconds counts as
an engine death (group.py): the engine core is stopped and the same path runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import grpc
from grpc_health.v1.health import aio as health_aio

from grok_common.attention import AttentionBackendRefused
from grok_common.load_formats import LoadFormatRefused
from grok_rpc.grpc_setup import SERVICE_NAME, generation_server
from grok_server import __version__
from grok_server.server import placement
from grok_server.server.admission import Admission
from grok_server.server.config import ServerConfig, parse_args, start_checks
from grok_server.server.group import PeerWatch
from grok_server.server.lifecycle import Lifecycle, Phase
from grok_server.server.metrics import MetricsHTTPServer, ServerMetrics
from grok_server.server.prestart import Prestart
from grok_server.server.security import BearerTokenInterceptor, load_tokens, server_credentials
from grok_server.server.startup_run import StartupRun

log = logging.getLogger("grok_server")

EXIT_OK = 0
EXIT_ENGINE_FAILED = 1
# Time for calls that already have their final status (engine death, drain abort) to send it.
_FLUSH_SECONDS = 2.0
# How long a draining server keeps its connections open, answering new calls UNAVAILABLE ("draining"), so that
# health checks and load balancers notice; then it sends GOAWAY and stops listening, and clients reconnect
# (behind a Service: to another replica) while the calls in flight run on.
DRAIN_NOTICE_SECONDS = 5.0


def _grpc_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """Options beyond grpc_setup.SHARED_OPTIONS."""
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ] + ([
        # Aged connections get GOAWAY; their calls run on for the grace (grpc's own connection-age options).
        ("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_seconds * 1000)),
    ] if cfg.max_connection_age_seconds > 0 else [])


class Server:
    def __init__(self, cfg: ServerConfig, run: StartupRun | None = None,
                 prestart: Prestart | None = None) -> None:
        self.cfg = cfg
        self.startup = run or StartupRun(cfg)
        self.prestart = prestart or Prestart(None, "not launched")
        self.health = health_aio.HealthServicer()
        self.lifecycle = Lifecycle(self.health, [SERVICE_NAME])
        self.admission = Admission(cfg.max_concurrent_requests)
        self.metrics = ServerMetrics(
            max_concurrent=cfg.max_concurrent_requests,
            build_info={"version": __version__, "model": cfg.served_model_name or cfg.model},
        )
        self.metrics.in_flight = lambda: self.admission.in_flight
        self.lifecycle.observe(self.metrics.set_phase)
        self.stop_requested = asyncio.Event()
        self.engine_dead = asyncio.Event()
        from grok_server.server.servicer import GenerationServicer  # imports vLLM: after arg parsing

        self.servicer = GenerationServicer(self.lifecycle, self.admission, self.metrics, self.engine_dead.set,
                                           cfg.stream_interval)
        self.engine = None
        self.peers: PeerWatch | None = None
        self.startup.clock.mark("imports")  # grpc, torch and vLLM are in (the servicer imports the engine)

    def _build_grpc(self) -> grpc.aio.Server:
        interceptors = []
        if self.cfg.auth_token_file is not None:
            tokens = load_tokens(self.cfg.auth_token_file)
            interceptors.append(BearerTokenInterceptor(
                tokens, on_reject=lambda m: self.metrics.requests.labels(m.rsplit("/", 1)[-1],
                                                                         "UNAUTHENTICATED").inc()))
        # The servicer rejects requests over --max-request-bytes with a precise INVALID_ARGUMENT; the
        # transport cap sits above it so that only absurd messages get gRPC's own RESOURCE_EXHAUSTED.
        server = generation_server(self.servicer, self.health, self.cfg.max_request_bytes * 4 + 65536,
                                   _grpc_options(self.cfg), interceptors)
        address = f"{self.cfg.host}:{self.cfg.port}"
        if self.cfg.tls_cert is not None and self.cfg.tls_key is not None:
            creds = server_credentials(self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_client_ca)
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        return server

    async def _load_engine(self) -> None:
        from grok_server.model.device import current_device
        from grok_server.server import engine as eng

        loop = asyncio.get_running_loop()
        # Refusals first: a refused start reads no weights and touches no compile cache.
        for notice in self.cfg.notices + start_checks(self.cfg, current_device(), os.environ):
            log.warning("%s", notice)
        eng.check_load_format(self.cfg)
        await loop.run_in_executor(None, self.startup.prepare_weights)
        compile_outcome = await loop.run_in_executor(None, self.startup.prepare_compile_cache)
        # Built in a thread so that health checks keep answering NOT_SERVING during a long load.
        self.engine = await loop.run_in_executor(None, eng.create_engine, self.cfg, self.metrics.engine,
                                                 self.startup.clock, self.prestart)
        engine = self.engine
        if self.cfg.nnodes > 1:
            # Every node has joined (else the engine could not have loaded): from now on each must be heard.
            assert self.cfg.master_addr is not None
            self.peers = PeerWatch(self.cfg.master_addr, self.cfg.master_port, self.cfg.nnodes,
                                   self.cfg.peer_timeout_seconds)
            self.peers.start()
        # Start vLLM's output loop on this event loop now (it otherwise starts on the first request), so that
        # an engine that dies while idle is noticed.
        engine._run_output_handler()
        if self.cfg.warmup:
            with self.startup.clock.phase("warmup"):
                await self._warm_up(eng, engine)
        if self.cfg.cpu_affinity == "auto" and eng.runs_on_cpu():
            self._place_off_worker_cpus()
        limits = eng.limits_for(engine, self.cfg)
        info = eng.model_info(engine, self.cfg, limits, __version__)
        self.metrics.build_info = {**self.metrics.build_info, "engine_version": info.engine_version}
        self.servicer.attach(engine, limits, info)
        report = self.startup.report(compile_outcome)
        report.engine_prestart = "used" if self.prestart.used else f"not used: {self.prestart.reason}"
        self.metrics.startup = report
        log.info("%s", report.summary())

    async def _warm_up(self, eng: Any, engine: Any) -> None:
        """Bounded: a warm-up that overruns is abandoned (its request aborted), and the server serves anyway
        and says so, rather than never turning Ready."""
        try:
            cfg = self.cfg
            await asyncio.wait_for(eng.warm_up(engine, cfg.warmup_prompt_tokens, cfg.warmup_new_tokens),
                                   cfg.warmup_timeout_seconds)
        except TimeoutError:
            self.startup.overran.append("warmup")
            log.warning("start-up phase warmup overran its bound (--warmup-timeout-seconds %.3g): abandoned; "
                        "serving without it (the first requests pay its one-time costs)",
                        self.cfg.warmup_timeout_seconds)
            with contextlib.suppress(Exception):
                await engine.abort([eng.WARMUP_REQUEST_ID, eng.WARMUP_SHAPE_REQUEST_ID])

    def _place_off_worker_cpus(self) -> None:
        placed = placement.keep_off_worker_cpus()
        if placed is None:
            log.info("CPU placement: left as it is (no engine worker is bound to a subset of the CPUs)")
        else:
            log.info("CPU placement: this server and %d engine process(es) moved to CPUs %s, off the "
                     "workers' CPUs %s", len(placed.moved_pids) - 1, sorted(placed.frontend_cpus),
                     sorted(placed.worker_cpus))

    async def _watch_engine(self) -> None:
        while not self.engine_dead.is_set():
            if self.engine is not None and self.engine.errored:
                self.engine_dead.set()
                return
            if self.peers is not None and (lost := self.peers.lost()) is not None:
                log.error("%s: the replica cannot run its engine any more", lost)
                self._stop_engine_core()
                self.engine_dead.set()
                return
            await asyncio.sleep(0.5)

    def _stop_engine_core(self) -> None:
        """Kills the engine-core process(es), so that calls in flight (whose engine steps may be blocked in a
        collective with a dead node) end through vLLM's engine-death path, with UNAVAILABLE."""
        for pid in placement.descendants(os.getpid()):
            if "EngineCore" in placement.process_title(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        http = MetricsHTTPServer(self.metrics, self.cfg.metrics_host, self.cfg.metrics_port)
        http.start()
        grpc_server = self._build_grpc()
        await grpc_server.start()
        await self.lifecycle.set(Phase.LOADING)
        log.info("listening on %s:%d (gRPC%s), metrics on %s:%d; loading %s", self.cfg.host, self.port,
                 " with TLS" if self.cfg.tls_cert else "", self.cfg.metrics_host, http.port, self.cfg.model)
        try:
            return await self._serve(grpc_server)
        finally:
            http.stop()

    async def _serve(self, grpc_server: grpc.aio.Server) -> int:
        load = asyncio.create_task(self._load_engine())
        stop = asyncio.create_task(self.stop_requested.wait())
        await asyncio.wait({load, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not load.done():
            log.info("stop requested while loading: waiting for the load to finish, then exiting")
            with_error = await asyncio.gather(load, return_exceptions=True)
            return await self._shutdown(grpc_server, EXIT_OK if not isinstance(with_error[0], BaseException)
                                        else EXIT_ENGINE_FAILED)
        if isinstance(load.exception(), AttentionBackendRefused | LoadFormatRefused):
            log.error("refusing to start: %s", load.exception())
            await self.lifecycle.set(Phase.FAILED)
            return await self._shutdown(grpc_server, EXIT_ENGINE_FAILED)
        if load.exception() is not None:
            log.error("the engine failed to load", exc_info=load.exception())
            await self.lifecycle.set(Phase.FAILED)
            return await self._shutdown(grpc_server, EXIT_ENGINE_FAILED)
        await self.lifecycle.set(Phase.SERVING)
        log.info("serving %s on port %d", self.cfg.served_model_name or self.cfg.model, self.port)
        # After Ready: hashing the artifacts must not delay it.
        asyncio.get_running_loop().run_in_executor(None, self.startup.publish_compile_cache)

        watch = asyncio.create_task(self._watch_engine())
        dead = asyncio.create_task(self.engine_dead.wait())
        await asyncio.wait({stop, dead}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if self.engine_dead.is_set():
            log.error("the engine died: failing in-flight requests with UNAVAILABLE and exiting")
            await self.lifecycle.set(Phase.FAILED)
            await self._wait_idle(_FLUSH_SECONDS)
            return await self._shutdown(grpc_server, EXIT_ENGINE_FAILED)
        return await self._drain(grpc_server)

    async def _drain(self, grpc_server: grpc.aio.Server) -> int:
        grace = self.cfg.drain_grace_seconds
        log.info("draining: %d request(s) in flight, grace period %.1f s", self.admission.in_flight, grace)
        await self.lifecycle.set(Phase.DRAINING)
        notice = min(DRAIN_NOTICE_SECONDS, grace / 2)
        # grpc's own grace outlasts ours: at the end of ours, abort_all ends what is left with UNAVAILABLE.
        transport_grace = grace - notice + _FLUSH_SECONDS + 1
        goaway = asyncio.create_task(self._goaway_after(grpc_server, notice, transport_grace))
        if not await self._wait_idle(grace):
            log.warning("drain grace period over: aborting %d request(s)", self.admission.in_flight)
            await self.servicer.abort_all()
            await self._wait_idle(_FLUSH_SECONDS)
        goaway.cancel()
        if self.engine_dead.is_set():
            await self.lifecycle.set(Phase.FAILED)
            return await self._shutdown(grpc_server, EXIT_ENGINE_FAILED)
        return await self._shutdown(grpc_server, EXIT_OK)

    @staticmethod
    async def _goaway_after(grpc_server: grpc.aio.Server, notice: float, grace: float) -> None:
        await asyncio.sleep(notice)
        log.info("drain notice over: closing connections (GOAWAY); calls in flight go on")
        # Shielded: stopping the drain's wait must not cut grpc's shutdown short (stop is idempotent).
        await asyncio.shield(grpc_server.stop(grace=grace))

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.servicer.idle.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def _shutdown(self, grpc_server: grpc.aio.Server, code: int) -> int:
        if self.peers is not None:
            self.peers.stop()
        if self.lifecycle.phase is not Phase.FAILED:
            await self.lifecycle.set(Phase.STOPPED)
        await grpc_server.stop(grace=1.0)
        if self.engine is not None:
            self.engine.shutdown()
        self.startup.close()
        self.prestart.close()
        log.info("exiting with status %d", code)
        return code

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop_requested.is_set():
            log.warning("second %s: exiting now", sig.name)
            os._exit(EXIT_ENGINE_FAILED if self.engine_dead.is_set() else EXIT_OK)
        log.info("%s received", sig.name)
        self.stop_requested.set()


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = StartupRun(cfg)  # before vLLM is imported: its plugin reports to it
    # Before grok-server's own torch and vLLM import (Server's): the engine core's import runs beside it.
    prestart = Prestart.launch(cfg.engine_prestart, cfg.node_cache_dir or cfg.compile_cache_dir,
                               cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.nnodes,
                               worker_process=cfg.engine_worker == "process"
                               or "distributed_executor_backend" in cfg.engine_args)
    code = asyncio.run(Server(cfg, run, prestart).run())
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
