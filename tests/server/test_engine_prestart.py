"""The pre-started engine core (--engine-prestart, prestart.py): a real grok-server over loopback, real vLLM
on the CPU. A first start records the engine core's environment under --compile-cache-dir; the next one
hands its engine to a process started at its exec, or falls back to vLLM's own spawn, and says why."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.serverlib import ServerProcess, launch_server, running_server, wait_serving
from tests.server.test_startup_engine import greedy, startup_report

PRESTART_MODULE = b"grok_server.server.prestart"


def prestarted_pids(server: ServerProcess) -> list[int]:
    """Processes of the server's process group (its own, from launch_server) running the pre-start module
    and not handed an engine yet (vLLM retitles the engine core): found even once the server is gone."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if PRESTART_MODULE in cmdline and os.getpgid(int(entry.name)) == server.proc.pid:
                found.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def only_record(cache: Path) -> Path:
    records = list((cache / "prestart").glob("*.json"))
    assert len(records) == 1, records
    return records[0]


@pytest.fixture(scope="module")
def recorded(grok_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[int]]]:
    """A cache folder after one start (which had no record: vLLM spawned its engine core), and that start's
    greedy tokens."""
    cache = tmp_path_factory.mktemp("prestart-cache")
    with running_server(grok_model, tmp_path_factory.mktemp("first"), "--compile-cache-dir", str(cache)) as s:
        report = startup_report(s)
        assert report["engine_prestart"].startswith("not used: no record")
        assert not prestarted_pids(s)
        tokens = greedy(s)
    only_record(cache)
    yield cache, tokens


def own_copy(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def test_a_second_start_hands_its_engine_to_the_prestarted_process(
        grok_model: Path, recorded: tuple[Path, list[int]], tmp_path: Path) -> None:
    cache, tokens = recorded
    cache = own_copy(cache, tmp_path)
    with running_server(grok_model, tmp_path / "srv", "--compile-cache-dir", str(cache)) as server:
        report = startup_report(server)
        assert report["engine_prestart"] == "used"
        assert report["engine_processes"] == 1  # the plugin reported from it, after the hand-off
        assert greedy(server) == tokens  # the same greedy tokens as vLLM's own spawn gave
        # The engine core is the process started at exec (vLLM has retitled it since: found by the log).
        handed = re.search(r"the engine core runs in the pre-started process (\d+)", server.log())
        assert handed is not None
        engine = server.engine_core_pids()
        assert engine == [int(handed.group(1))]
        # vLLM watches it as its own child (the pidfd sentinel): its death ends the server, status 1.
        os.kill(engine[0], signal.SIGKILL)
        assert server.wait_exit(timeout=60) == 1
        assert "the engine died" in server.log()


def test_a_record_that_no_longer_matches_falls_back_and_says_why(
        grok_model: Path, recorded: tuple[Path, list[int]], tmp_path: Path) -> None:
    cache, tokens = recorded
    cache = own_copy(cache, tmp_path)
    record = only_record(cache)
    data = json.loads(record.read_text())
    right = data["delta"]["OMP_NUM_THREADS"]
    data["delta"]["OMP_NUM_THREADS"] = str(int(right) + 2)  # as if the node's CPUs had changed
    record.write_text(json.dumps(data))
    with running_server(grok_model, tmp_path / "srv", "--compile-cache-dir", str(cache)) as server:
        report = startup_report(server)
        assert report["engine_prestart"] == (
            "not used: its environment differs from the engine core's in OMP_NUM_THREADS")
        assert "engine pre-start: not used (its environment differs from the engine core's in " \
               "OMP_NUM_THREADS)" in server.log()
        assert greedy(server) == tokens
        assert not prestarted_pids(server)  # sent away, not left waiting
    assert json.loads(record.read_text())["delta"]["OMP_NUM_THREADS"] == right  # recorded anew


def test_a_server_killed_before_the_hand_off_leaves_no_prestarted_process(
        grok_model: Path, recorded: tuple[Path, list[int]], tmp_path: Path) -> None:
    # The record in the node's model folder (--node-cache-dir, a hostPath, comes before --compile-cache-dir,
    # which may be a pod's emptyDir).
    node = tmp_path / "node"
    shutil.copytree(recorded[0] / "prestart", node / "prestart")
    server = launch_server(grok_model, tmp_path / "srv", "--node-cache-dir", str(node))
    try:
        deadline = time.monotonic() + 60
        while not prestarted_pids(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prestarted_pids(server), server.log()
        server.proc.kill()  # before its own imports are done: no hand-off yet
        server.proc.wait(10)
        deadline = time.monotonic() + 120
        while prestarted_pids(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not prestarted_pids(server)
        assert "engine pre-start: the engine core runs" not in server.log()
    finally:
        server.stop()


def test_off_starts_no_process(grok_model: Path, recorded: tuple[Path, list[int]], tmp_path: Path) -> None:
    cache, tokens = recorded
    cache = own_copy(cache, tmp_path)
    server = launch_server(grok_model, tmp_path / "srv", "--compile-cache-dir", str(cache),
                           "--engine-prestart", "off")
    try:
        wait_serving(server)
        assert startup_report(server)["engine_prestart"] == "not used: --engine-prestart off"
        assert greedy(server) == tokens
    finally:
        server.stop()


def test_the_record_replays_what_a_start_changed_and_a_bad_one_is_none(tmp_path: Path) -> None:
    from grok_server.server import prestart

    before = {"HOME": "/h", "KEEP": "1", "GONE": "x", "VLLM_CACHE_ROOT": "/a"}
    after = {"HOME": "/h", "KEEP": "2", "LD_PRELOAD": "libgomp.so", "VLLM_CACHE_ROOT": "/b"}
    delta = prestart.environment_delta(before, after)
    assert delta == {"KEEP": "2", "LD_PRELOAD": "libgomp.so", "VLLM_CACHE_ROOT": "/b", "GONE": None}
    # Another pod: its own HOME, the same changes; a per-start cache folder is sent at the hand-off instead.
    pod = {**before, "HOME": "/other"}
    replayed = prestart.replay(pod, delta)
    assert replayed == {"HOME": "/other", "KEEP": "2", "LD_PRELOAD": "libgomp.so", "VLLM_CACHE_ROOT": "/a"}
    assert prestart.differing(replayed, {**replayed, "VLLM_CACHE_ROOT": "/c"}) == []
    assert prestart.differing(replayed, {**replayed, "OMP_NUM_THREADS": "4", "KEEP": "3"}) == [
        "KEEP", "OMP_NUM_THREADS"]
    record = tmp_path / "r" / "key.json"
    prestart.write_record(record, delta)
    assert prestart.read_record(record) == delta
    for bad in ("", "{", '{"version": 1, "delta": {"A": 3}}', '{"version": 99, "delta": {}}', "[]"):
        record.write_text(bad)
        assert prestart.read_record(record) is None, bad
    assert prestart.read_record(tmp_path / "missing.json") is None


def test_no_process_is_launched_where_it_could_not_be_used(tmp_path: Path) -> None:
    from grok_server.server.prestart import Prestart

    cases = [
        (("off", tmp_path, 1, 1, 1), "--engine-prestart off"),
        (("auto", tmp_path, 2, 1, 1), "more than one rank"),
        (("auto", tmp_path, 1, 1, 2), "more than one rank"),
        (("auto", None, 1, 1, 1),
         "no --node-cache-dir or --compile-cache-dir to keep its environment record in"),
        (("auto", tmp_path, 1, 1, 1),
         "no record of the engine core's environment yet (this start writes it)"),
    ]
    for args, reason in cases:
        p = Prestart.launch(*args)  # type: ignore[arg-type]
        assert p.proc is None and p.reason == reason, args
    p = Prestart.launch("auto", tmp_path, 1, 1, 1, worker_process=True)
    assert p.proc is None and p.reason == "the model runs in a worker process of its own"
