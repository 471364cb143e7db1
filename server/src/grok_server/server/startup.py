"""Where a replica's start-up went, phase by phase (pure, except for reading the clock).

grok-server times what happens in its own process (imports, engine config, warm-up); the engine processes
report what vLLM times there (startup_events). `build_report` puts both on one time line from the process's
exec to Ready, so that the phases add up to the total (`other` is what no phase claims: gRPC set-up,
threads, hand-offs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

# In the order a start runs them; every report has each of them (0 where a phase did not run).
PHASES = (
    "imports",           # exec -> grok-server's modules (grpc, torch, vLLM) imported
    "node_copy",         # the model's node-local copy made or checked (--node-cache-dir)
    "model_class",       # the Grok-1 class registered and inspected by vLLM
    "config",            # engine and model config resolved (the rest of vLLM's config step)
    "engine_processes",  # engine-core (and worker) processes spawned and importing
    "weights",           # weights read into the engine (vLLM's own measure)
    "compile",           # torch.compile / inductor, or loading its artifacts from the cache
    "cuda_graphs",       # CUDA-graph capture (GPUs only)
    "kv_cache",          # memory profiling and KV-cache allocation
    "engine_other",      # the rest of the engine's start: building the model, hand-shakes
    "warmup",            # grok-server's warm-up requests
    "other",
)


@dataclass
class CompileCacheOutcome:
    state: str  # hit, miss, off
    reason: str = ""
    directory: str = ""
    key: str = ""


@dataclass
class WeightsInfo:
    source: str          # "node": the node's copy; "shared": --model itself (the shared cache)
    bytes: int = 0       # the model's weight bytes the engine loaded
    path: str = ""       # what the engine loaded
    shared_bytes: int = 0  # bytes read from the shared cache: the copy's, or the engine's own load of it
    reason: str = ""     # why the source (a copy made, found, or not possible)


@dataclass
class StartupReport:
    seconds: float
    phases: dict[str, float]
    compile_cache: CompileCacheOutcome
    weights: WeightsInfo
    weights_gb_per_second: float | None = None
    engine_processes: int = 0
    overran: list[str] = field(default_factory=list)  # phases that ran past their bound
    engine_prestart: str = ""  # "used", or "not used: <why>" (prestart.py)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        parts = [f"{name.replace('_', ' ')} {seconds:.2f}" for name, seconds in self.phases.items()
                 if seconds >= 0.005 or name in ("imports", "engine_processes", "weights")]
        cc = self.compile_cache
        cache = cc.state + (f" ({cc.reason})" if cc.reason else "")
        rate = f", {self.weights_gb_per_second:.2f} GB/s" if self.weights_gb_per_second else ""
        overran = f"; overran: {', '.join(self.overran)}" if self.overran else ""
        return (f"start-up: Ready {self.seconds:.2f} s after exec = " + " + ".join(parts)
                + f"; compile cache {cache}; weights {self.weights.bytes / 1e9:.3f} GB from "
                f"{self.weights.source} {self.weights.path}{rate} "
                f"({self.weights.shared_bytes / 1e9:.3f} GB read from the shared cache); "
                f"{self.engine_processes} engine process(es)"
                + (f"; engine pre-start {self.engine_prestart}" if self.engine_prestart else "") + overran)


class StartupClock:
    """Wall-clock spans of grok-server's own phases (time.time(): the engine processes' events use it too)."""

    def __init__(self, process_started: float) -> None:
        self.process_started = process_started
        self.spans: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begun = time.time()
        try:
            yield
        finally:
            self.spans[name] = (begun, time.time())

    def mark(self, name: str, at: float | None = None) -> None:
        """A span from the process's start to now (or `at`), e.g. imports."""
        self.spans[name] = (self.process_started, time.time() if at is None else at)

    def seconds(self, name: str) -> float:
        begun, ended = self.spans.get(name, (0.0, 0.0))
        return max(0.0, ended - begun)


def _event_seconds(events: list[dict[str, Any]], name: str, combine: str = "max") -> float:
    values = [float(e["seconds"]) for e in events if e.get("event") == name and e.get("seconds") is not None]
    if not values:
        return 0.0
    return sum(values) if combine == "sum" else max(values)


def _span_between(events: list[dict[str, Any]], first: str, last: str) -> float:
    begun = [float(e["t"]) for e in events if e.get("event") == first]
    ended = [float(e["t"]) for e in events if e.get("event") == last]
    return max(0.0, max(ended) - min(begun)) if begun and ended else 0.0


def engine_phases(events: list[dict[str, Any]],
                  engine_span: tuple[float, float]) -> tuple[dict[str, float], int]:
    """The engine's share of a start, from the events of its processes (ranks run in parallel: the slowest
    rank's figure counts), and how many engine processes reported. Clamped so that the parts never exceed
    the engine's span as grok-server saw it."""
    begun, ended = engine_span
    span = max(0.0, ended - begun)
    starts = [float(e["t"]) for e in events
              if e.get("event") == "process_started" and begun <= float(e["t"]) <= ended]
    processes = max(0.0, max(starts) - begun) if starts else 0.0
    weights = _event_seconds(events, "weights_loaded")
    compiled = _event_seconds(events, "compiled")
    if not compiled:  # no total logged: the graphs compiled or loaded one by one
        compiled = (_event_seconds(events, "compiled_graph", "sum")
                    + _event_seconds(events, "compile_cache_loaded", "sum"))
    graphs = _event_seconds(events, "cuda_graphs_captured")
    initialised = _event_seconds(events, "engine_initialized")
    if not compiled:  # the CPU runner logs when its compile warm-up starts, and nothing when it ends
        compiled = _span_between(events, "compile_started", "engine_initialized")
    # vLLM's "init engine" span holds the profiling run, which is where compile and graph capture happen.
    kv_cache = max(0.0, initialised - compiled - graphs)
    phases = {"engine_processes": processes, "weights": weights, "compile": compiled, "cuda_graphs": graphs,
              "kv_cache": kv_cache}
    total = sum(phases.values())
    if total > span > 0:
        phases = {k: v * span / total for k, v in phases.items()}
        total = span
    phases["engine_other"] = max(0.0, span - total)
    return phases, len(starts)


def build_report(clock: StartupClock, events: list[dict[str, Any]], ready_at: float,
                 compile_cache: CompileCacheOutcome, weights: WeightsInfo,
                 overran: list[str] | None = None) -> StartupReport:
    total = max(0.0, ready_at - clock.process_started)
    phases = dict.fromkeys(PHASES, 0.0)
    phases["imports"] = clock.seconds("imports")
    phases["node_copy"] = clock.seconds("node_copy")
    phases["config"] = clock.seconds("config")
    # vLLM loads its plugins (ours registers the model class) at import or at config time: taken from that.
    for e in events:
        if e.get("api") and e.get("event") == "model_class_registered" and e.get("seconds") is not None:
            spans = {name: clock.spans.get(name, (0.0, -1.0)) for name in ("imports", "config")}
            within = next((name for name, (begun, ended) in spans.items() if begun <= float(e["t"]) <= ended),
                          None)
            if within is not None:
                phases["model_class"] = min(float(e["seconds"]), phases[within])
                phases[within] -= phases["model_class"]
    engine, processes = engine_phases(events, clock.spans.get("engine", (0.0, 0.0)))
    phases.update(engine)
    phases["warmup"] = clock.seconds("warmup")
    phases["other"] = max(0.0, total - sum(phases.values()))
    rate = weights.bytes / phases["weights"] / 1e9 if weights.bytes and phases["weights"] > 0 else None
    return StartupReport(seconds=total, phases=phases, compile_cache=compile_cache, weights=weights,
                         weights_gb_per_second=rate, engine_processes=processes, overran=list(overran or []))
