"""One start of grok-server, as it happens: the clock, the engine processes' event file and the compile cache.

The pure parts live in startup.py (the report) and compile_cache.py (the cache's rules); this module does the
I/O around one start: environment for the engine processes, the cache folder, reading the events back.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from grok_server.server import compile_cache, startup_events
from grok_server.server.config import ServerConfig
from grok_server.server.startup import (
    CompileCacheOutcome,
    StartupClock,
    StartupReport,
    WeightsInfo,
    build_report,
)
from grok_server.weights.node_copy import Held, NodeCache, NodeWeights

log = logging.getLogger("grok_server")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _engine_version() -> str:
    """The engine's version as GetModelInfo reports it, and torch's (both change compiled artifacts)."""
    from grok_server.server.engine import engine_version  # vLLM is imported by the time a cache is keyed

    return f"{engine_version()}, torch {importlib.metadata.version('torch')}"


def weights_info(model: str, node: NodeWeights | None = None) -> WeightsInfo:
    """What the engine loaded, from where, and how many bytes of it came from the shared cache: a node copy
    found whole, none; a copy made, the copy's; the shared cache loaded directly, the engine's read of it."""
    folder = Path(model)
    total = 0
    if folder.is_dir():
        for path in folder.rglob("*"):
            if path.suffix in WEIGHT_SUFFIXES and path.is_file():
                total += path.stat().st_size
    if node is None:
        return WeightsInfo("shared", total, model, total, "no --node-cache-dir: loaded from --model")
    # A copy that failed part way read some bytes from the shared cache before the engine read them all.
    shared = node.shared_bytes if node.source == "node" else total + node.shared_bytes
    return WeightsInfo(node.source, total, model, shared, node.reason)


class StartupRun:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.clock = StartupClock(startup_events.process_started_at())
        self._events_dir = Path(tempfile.mkdtemp(prefix="grok-startup-"))
        self.events_path = self._events_dir / "events.jsonl"
        # Inherited by the engine processes, whose vLLM plugin records into it; the API process is told apart.
        os.environ[startup_events.ENV] = str(self.events_path)
        os.environ[startup_events.API_PID_ENV] = str(os.getpid())
        self.prepared: compile_cache.Prepared | None = None
        self.node_weights: NodeWeights | None = None
        self._node_held: Held | None = None
        self.overran: list[str] = []

    def prepare_weights(self) -> None:
        """With --node-cache-dir: the node's copy of --model, made or checked, becomes what the engine loads
        (cfg.model), and is held in use (never evicted) until close(). Before the compile cache is keyed:
        its key holds the model's path. A copy that cannot be made leaves --model as it is, and says why."""
        cfg = self.cfg
        if cfg.node_cache_dir is None or not Path(cfg.model).is_dir():
            return
        with self.clock.phase("node_copy"):
            cache = NodeCache(cfg.node_cache_dir, cfg.node_cache_max_bytes, verify=cfg.node_cache_verify)
            self.node_weights, self._node_held = cache.ensure(Path(cfg.model))
        node = self.node_weights
        if node.source == "node":
            log.info("weights: node copy %s (%s; %.3f GB read from the shared cache)", node.path, node.reason,
                     node.shared_bytes / 1e9)
            if cfg.tokenizer is None:
                cfg.tokenizer = node.path
            if cfg.served_model_name is None:  # the model's name stays --model, not the copy's folder
                cfg.served_model_name = cfg.model
            cfg.model = node.path
        else:
            log.warning("weights: loading from the shared cache %s, not a node copy: %s", cfg.model,
                        node.reason)

    def prepare_compile_cache(self) -> CompileCacheOutcome:
        """Points the engine's caches at the shared folder's entry for this engine, before it starts."""
        cfg = self.cfg
        if cfg.compile_cache_dir is None:
            return CompileCacheOutcome("off", "no --compile-cache-dir: a private cache, gone at exit")
        if (problem := compile_cache.unwritable(cfg.compile_cache_dir)) is not None:
            log.warning("compile cache off: %s", problem)
            return CompileCacheOutcome("off", problem, str(cfg.compile_cache_dir))
        if cfg.enforce_eager:
            return CompileCacheOutcome("off", "--enforce-eager: nothing is compiled")
        try:
            model_config = (Path(cfg.model) / "config.json").read_bytes()
        except OSError:
            model_config = cfg.model.encode()  # a hub name: its identity is its name (and revision argument)
        key = compile_cache.key_for(
            engine=_engine_version(), model=cfg.model, model_config=model_config,
            tensor=cfg.tensor_parallel_size, pipeline=cfg.pipeline_parallel_size, nnodes=cfg.nnodes,
            node_rank=cfg.node_rank,
            dtype=cfg.dtype, quantization=cfg.quantization, device=compile_cache.device_name(
                os.environ.get("GROK_GPU_PRODUCT")),
            engine_args={**cfg.engine_args, "max_model_len": cfg.max_model_len,
                         "max_num_seqs": cfg.max_num_seqs, "enforce_eager": cfg.enforce_eager})
        self.prepared = compile_cache.prepare(cfg.compile_cache_dir, key)
        outcome = self.prepared.outcome
        if self.prepared.vllm_cache_root is not None:
            os.environ.update(compile_cache.engine_env(self.prepared.vllm_cache_root))
        if outcome.state == "off":
            log.warning("compile cache off: %s", outcome.reason)
        else:
            log.info("compile cache %s (entry %s)%s", outcome.state, outcome.key,
                     f": {outcome.reason}" if outcome.reason else "")
        return outcome

    def report(self, outcome: CompileCacheOutcome) -> StartupReport:
        events = startup_events.read(str(self.events_path))
        weights = weights_info(self.cfg.model, self.node_weights)
        return build_report(self.clock, events, time.time(), outcome, weights, self.overran)

    def publish_compile_cache(self) -> None:
        if self.prepared is not None and self.prepared.outcome.state == "miss":
            log.info("compile cache: %s", compile_cache.publish(self.prepared))

    def close(self) -> None:
        if self._node_held is not None:
            self._node_held.close()
        if self.prepared is not None:
            compile_cache.release(self.prepared)
        shutil.rmtree(self._events_dir, ignore_errors=True)
