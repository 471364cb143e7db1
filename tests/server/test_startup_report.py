"""Start-up phases: vLLM's timing records turned into events, events into phases that add up to the total."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from grok_server.server import startup_events
from grok_server.server.startup import (
    PHASES,
    CompileCacheOutcome,
    StartupClock,
    WeightsInfo,
    build_report,
    engine_phases,
)


def test_vllm_timing_records_become_events() -> None:
    assert startup_events.event_for("Loading weights took %.2f seconds", (1.5,)) == ("weights_loaded", 1.5)
    assert startup_events.event_for(
        "init engine (profile, create kv cache, warmup model) took %.2f s", (7.25,)) == ("engine_initialized",
                                                                                      7.25)
    assert startup_events.event_for(
        "%storch.compile and initial profiling/warmup run together took %.2f s in total", ("", 30.0)) == (
        "compiled", 30.0)
    assert startup_events.event_for("Graph capturing finished in %.0f secs, took %.2f GiB", (61, 2.5))[0] == \
        "cuda_graphs_captured"  # type: ignore[index]
    started = startup_events.event_for("Warming up model for the compilation...", ())
    assert started is not None and started[0] == "compile_started"
    assert startup_events.event_for("Using max model len %d", (2048,)) is None


def _vllm_sources() -> str:
    import vllm

    root = Path(vllm.__file__).parent
    folders = ("v1", "compilation", "model_executor/model_loader")
    return "\n".join(p.read_text(errors="replace") for sub in folders for p in (root / sub).rglob("*.py"))


def test_every_record_we_listen_for_is_still_logged_by_this_vllm() -> None:
    """A vLLM that rewords a timing message would leave a phase at 0 without this."""
    # Adjacent string literals joined, as Python joins them: a message may span several lines.
    literals = re.sub(r'"\s*\n\s*(?:f|r)?"', "", _vllm_sources())
    wanted = {"weights_loaded", "compile_started", "engine_initialized", "compiled", "compiled_graph",
              "compile_cache_loaded", "cuda_graphs_captured"}
    for pattern, name in startup_events._RECORDS:
        if name in wanted:
            # The pattern anchors on a message start; in joined literals it may follow a prefix such as "%s".
            loose = re.compile(pattern.pattern.lstrip("^").replace(r"took .* in total", r"took"))
            assert loose.search(literals), f"vLLM no longer logs {pattern.pattern!r} ({name})"


def test_the_handler_records_vllm_records_in_an_engine_process(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(startup_events.ENV, str(path))
    monkeypatch.setenv(startup_events.API_PID_ENV, "1")  # not this process: it acts as an engine process
    vllm_log = logging.getLogger("vllm")
    before, level = list(vllm_log.handlers), vllm_log.level
    vllm_log.setLevel(logging.INFO)  # as vLLM configures it in its processes
    try:
        startup_events.install()
        startup_events.install()  # vLLM loads plugins more than once: one handler
        assert len(vllm_log.handlers) == len(before) + 1
        logging.getLogger("vllm.model_executor.model_loader.default_loader").info(
            "Loading weights took %.2f seconds", 0.75)
    finally:
        vllm_log.handlers[:] = before
        vllm_log.setLevel(level)
    events = startup_events.read(str(path))
    assert [e["event"] for e in events] == ["process_started", "weights_loaded"]
    assert events[1]["seconds"] == 0.75 and events[1]["pid"] == os.getpid() and events[1]["api"] is False
    assert events[0]["started"] <= events[0]["t"]


def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    startup_events.record("weights_loaded", path=str(path), seconds=1.0)
    with path.open("a") as f:
        f.write('{"event": "compil')
    assert [e["event"] for e in startup_events.read(str(path))] == ["weights_loaded"]
    assert startup_events.read(str(tmp_path / "missing")) == []


def _clock() -> StartupClock:
    clock = StartupClock(process_started=100.0)
    clock.spans = {"imports": (100.0, 107.0), "config": (107.0, 108.0), "engine": (108.0, 130.0),
                   "warmup": (130.0, 130.5)}
    return clock


EVENTS = [
    {"event": "model_class_registered", "t": 107.4, "seconds": 0.3, "api": True},
    {"event": "process_started", "t": 114.0, "api": False},
    {"event": "weights_loaded", "t": 115.0, "seconds": 1.0, "api": False},
    {"event": "compile_started", "t": 116.0, "api": False},
    {"event": "engine_initialized", "t": 128.0, "seconds": 12.5, "api": False},
]


def test_phases_add_up_to_the_total_and_come_from_the_right_clock() -> None:
    report = build_report(_clock(), EVENTS, ready_at=131.0, compile_cache=CompileCacheOutcome("hit"),
                          weights=WeightsInfo("node", 2_000_000_000, "/nodecache/models/m-1",
                                              shared_bytes=0))
    p = report.phases
    assert list(p) == list(PHASES)
    assert report.seconds == 31.0
    assert p["imports"] == 7.0
    assert p["model_class"] == pytest.approx(0.3) and p["config"] == pytest.approx(0.7)
    assert p["engine_processes"] == 6.0  # engine start (108) to the last process up (114)
    assert p["weights"] == 1.0 and report.weights_gb_per_second == 2.0
    assert p["compile"] == 12.0 and p["kv_cache"] == pytest.approx(0.5)  # 12.5 of "init engine", 12 compiling
    assert p["warmup"] == 0.5
    assert sum(p.values()) == pytest.approx(31.0)
    assert report.engine_processes == 1
    line = report.summary()
    assert line.startswith("start-up: Ready 31.00 s after exec = imports 7.00 + model class 0.30")
    assert "compile cache hit" in line
    assert "2.000 GB from node /nodecache/models/m-1, 2.00 GB/s (0.000 GB read from the shared cache)" in line
    assert report.to_json()["phases"]["compile"] == 12.0


def test_engine_parts_never_exceed_the_engine_span() -> None:
    events = [{"event": "process_started", "t": 5.0}, {"event": "weights_loaded", "t": 6.0, "seconds": 50.0}]
    phases, processes = engine_phases(events, (0.0, 10.0))
    assert sum(phases.values()) == pytest.approx(10.0) and processes == 1
    assert engine_phases([], (0.0, 0.0)) == ({"engine_processes": 0.0, "weights": 0.0, "compile": 0.0,
                                              "cuda_graphs": 0.0, "kv_cache": 0.0, "engine_other": 0.0}, 0)


def test_process_start_time_is_in_the_past() -> None:
    import time

    started = startup_events.process_started_at()
    assert started <= time.time() and time.time() - started < 24 * 3600
