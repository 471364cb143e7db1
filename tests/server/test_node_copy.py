"""The node copy of a model's files under faults, on real files with real processes: a copier killed
halfway, two copiers at once, a corrupt or truncated local file, a node folder too small, eviction of what is
not in use, and a new revision in the shared source."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from grok_devcluster.local import wait
from grok_server.weights import node_copy
from grok_server.weights.node_copy import NodeCache
from grok_server.weights.plan import MANIFEST, Entry, plan_fit, source_key

DEADLINE = 120.0


def make_model(folder: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for rel, size in sizes.items():
        (folder / rel).write_bytes(rng.randbytes(size))
    return folder


SMALL = {"config.json": 100, "model-00001.safetensors": 300_000, "model-00002.safetensors": 200_000}


def copier(source: Path, root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "grok_server.weights.node_copy", "--source", str(source),
                             "--root", str(root), *extra], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(check, what: str):
    return wait(check, DEADLINE, what, interval=0.02)


# -- pure decisions ------------------------------------------------------------------------------------------

def test_key_changes_with_any_file_and_names_the_model():
    files = [node_copy.SourceFile("a.safetensors", 10, 1), node_copy.SourceFile("config.json", 2, 1)]
    key = source_key("/models/grok-1", files)
    assert key.startswith("grok-1-") and key == source_key("/models/grok-1/", list(reversed(files)))
    assert key != source_key("/models/grok-1", [files[0], node_copy.SourceFile("config.json", 2, 2)])
    assert key != source_key("/models/grok-1", files[:1])


def test_plan_fit_evicts_least_recently_used_never_in_use():
    entries = [Entry("old-busy", 40, 1.0, True), Entry("old", 30, 2.0, False), Entry("new", 30, 3.0, False)]
    assert plan_fit(30, entries, 200, 1000) == plan_fit(30, entries, None, 1000)
    assert plan_fit(30, entries, 200, 1000).evict == ()
    assert plan_fit(50, entries, 140, 1000).evict == ("old",)
    assert plan_fit(60, entries, 120, 1000).evict == ("old", "new")
    refused = plan_fit(70, entries, 100, 1000)
    assert refused.evict == () and "in use and kept: old-busy" in (refused.problem or "")
    assert "larger than the node cache's bound" in (plan_fit(101, [], 100, 1000).problem or "")
    assert plan_fit(50, entries, None, 30).evict == ("old",)  # the disk's free space, without a bound
    assert "free space" in (plan_fit(61, entries, None, 0).problem or "")


# -- real files, one process ---------------------------------------------------------------------------------

def test_first_use_copies_and_counts_bytes_second_reads_none(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "grok-1", SMALL)
    cache = NodeCache(tmp_path / "node")
    first, held1 = cache.ensure(source)
    assert first.source == "node" and first.copied and first.shared_bytes == sum(SMALL.values())
    local = Path(first.path)
    assert local.parent == tmp_path / "node" / "models"
    assert all((local / rel).read_bytes() == (source / rel).read_bytes() for rel in SMALL)
    manifest = json.loads((local / MANIFEST).read_text())
    assert manifest["total_bytes"] == sum(SMALL.values()) and set(manifest["files"]) == set(SMALL)
    second, held2 = cache.ensure(source)
    assert (second.source, second.path, second.shared_bytes, second.copied) == ("node", first.path, 0, False)
    held1.close()
    held2.close()


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_bad_local_file_is_copied_again_never_served(tmp_path: Path, damage: str):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    cache = NodeCache(tmp_path / "node")
    first, held = cache.ensure(source)
    held.close()
    victim = Path(first.path) / "model-00001.safetensors"
    if damage == "corrupt":
        data = bytearray(victim.read_bytes())
        data[1234] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        with victim.open("r+b") as f:
            f.truncate(1000)
    else:
        victim.unlink()
    again, held = cache.ensure(source)
    held.close()
    assert again.source == "node" and again.copied and again.shared_bytes == sum(SMALL.values())
    assert "copied again" in again.reason and "model-00001.safetensors" in again.reason
    assert victim.read_bytes() == (source / "model-00001.safetensors").read_bytes()


@pytest.mark.parametrize("files", [{"config.json": 5}, {"config.json": ["100", "x"]}, {"config.json": []}])
def test_a_manifest_of_the_wrong_shape_is_a_bad_copy_not_a_crash(tmp_path: Path, files: dict):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    cache = NodeCache(tmp_path / "node")
    first, held = cache.ensure(source)
    held.close()
    path = Path(first.path) / MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), "files": files}))  # valid JSON, bad shape
    again, held = cache.ensure(source)
    held.close()
    assert again.source == "node" and again.copied and "copied again" in again.reason, again


def test_verify_sizes_skips_checksums_but_not_sizes(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    cache = NodeCache(tmp_path / "node", verify="sizes")
    first, held = cache.ensure(source)
    held.close()
    victim = Path(first.path) / "model-00001.safetensors"
    data = bytearray(victim.read_bytes())
    data[7] ^= 0xFF
    victim.write_bytes(bytes(data))
    same, held = cache.ensure(source)  # same size: not read again, by choice
    held.close()
    assert not same.copied
    with victim.open("r+b") as f:
        f.truncate(10)
    again, held = cache.ensure(source)
    held.close()
    assert again.copied and "truncated" in again.reason
    with pytest.raises(ValueError, match="verify"):
        NodeCache(tmp_path / "node", verify="none")


def test_too_small_node_folder_serves_from_shared_and_says_why(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    weights, held = NodeCache(tmp_path / "node", max_bytes=100_000).ensure(source)
    held.close()
    assert (weights.source, weights.path, weights.shared_bytes) == ("shared", str(source), 0)
    assert "larger than the node cache's bound" in weights.reason
    assert list((tmp_path / "node" / "models").iterdir()) == []


def test_a_full_node_disk_serves_from_shared_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import errno
    import shutil

    source = make_model(tmp_path / "shared" / "m", SMALL)
    root = tmp_path / "node"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))  # too little free space
    weights, held = NodeCache(root).ensure(source)
    held.close()
    assert weights.source == "shared" and "free space" in weights.reason and weights.shared_bytes == 0
    monkeypatch.setattr(shutil, "disk_usage", real)

    # The disk fills during the copy (another writer on the node): the partial copy goes, its reads count.
    def filling(self, source, listing, work):  # part of a file written, then the disk is full
        assert work.is_dir()  # made with the copy's reservation
        (work / "config.json").write_bytes(b"x" * 50)
        self.read_so_far = 1234
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(NodeCache, "_copy", filling)
    weights, held = NodeCache(root).ensure(source)
    held.close()
    assert weights.source == "shared" and weights.shared_bytes == 1234
    assert "the node disk filled up during the copy" in weights.reason
    assert list((root / "models").iterdir()) == [] and list((root / "tmp").iterdir()) == []


def test_eviction_takes_the_least_recently_used_copy_not_in_use(tmp_path: Path):
    total = sum(SMALL.values())
    models = [make_model(tmp_path / "shared" / f"m{i}", SMALL, seed=i) for i in range(3)]
    cache = NodeCache(tmp_path / "node", max_bytes=2 * total + 10)
    a, held_a = cache.ensure(models[0])  # in use for the whole test
    b, held_b = cache.ensure(models[1])
    held_b.close()
    c, held_c = cache.ensure(models[2])  # needs room: b goes (a is older but in use)
    assert c.source == "node" and Path(a.path).is_dir() and not Path(b.path).exists()
    held_c.close()
    d, held_d = cache.ensure(models[1])  # again: now c is the one not in use
    assert d.copied and not Path(c.path).exists() and Path(a.path).is_dir()
    # Every copy in use and no room: served from the shared source, and nothing evicted.
    e, held_e = cache.ensure(models[2])
    assert e.source == "shared" and "in use and kept" in e.reason and Path(a.path).is_dir()
    for h in (held_a, held_d, held_e):
        h.close()


def test_eviction_that_keeps_failing_serves_from_shared_and_never_overruns_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    total = sum(SMALL.values())
    models = [make_model(tmp_path / "shared" / f"m{i}", SMALL, seed=i) for i in range(2)]
    cache = NodeCache(tmp_path / "node", max_bytes=total + 10)
    a, held = cache.ensure(models[0])
    held.close()
    # Every planned eviction loses its race (a replica takes the copy into use between plan and evict).
    monkeypatch.setattr(NodeCache, "_evict", lambda self, key: False)
    b, held = cache.ensure(models[1])
    held.close()
    assert b.source == "shared" and b.shared_bytes == 0 and "evict" in b.reason, b
    assert [p.name for p in (tmp_path / "node" / "models").iterdir()] == [a.key]  # the bound holds


def test_a_copy_served_until_just_now_is_more_recently_used_than_one_started_later(tmp_path: Path):
    total = sum(SMALL.values())
    models = [make_model(tmp_path / "shared" / f"m{i}", SMALL, seed=i) for i in range(3)]
    cache = NodeCache(tmp_path / "node", max_bytes=2 * total + 10)
    a, held_a = cache.ensure(models[0])  # a long-lived replica
    b, held_b = cache.ensure(models[1])  # a short one, started later
    held_b.close()
    locks = tmp_path / "node" / "locks"
    os.utime(locks / f"{a.key}.use", (100, 100))  # a started long ago, b after it
    os.utime(locks / f"{b.key}.use", (200, 200))
    held_a.close()  # a served until now: its copy was used last
    c, held_c = cache.ensure(models[2])
    held_c.close()
    assert c.source == "node" and Path(a.path).is_dir() and not Path(b.path).exists()


def test_new_revision_in_the_shared_source_gets_its_own_copy(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    cache = NodeCache(tmp_path / "node")
    old, held = cache.ensure(source)
    held.close()
    (source / "model-00002.safetensors").write_bytes(b"revision 2" * 1000)
    new, held = cache.ensure(source)
    held.close()
    assert new.key != old.key and new.copied
    assert (Path(new.path) / "model-00002.safetensors").read_bytes() == b"revision 2" * 1000
    assert (Path(old.path) / "model-00002.safetensors").stat().st_size == SMALL["model-00002.safetensors"]


def test_hidden_folders_of_the_source_are_not_copied_nor_keyed(tmp_path: Path):
    """huggingface_hub's snapshot_download(local_dir=) leaves .cache/huggingface/download/*.metadata beside
    the model (grok-fetch's hf:// path): bookkeeping, not the model; touching it is no new revision."""
    source = make_model(tmp_path / "shared" / "m", SMALL)
    meta = source / ".cache" / "huggingface" / "download" / "model-00001.safetensors.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("etag 1")
    cache = NodeCache(tmp_path / "node")
    first, held = cache.ensure(source)
    held.close()
    assert not (Path(first.path) / ".cache").exists() and first.shared_bytes == sum(SMALL.values())
    meta.write_text("etag 1, checked again")
    again, held = cache.ensure(source)
    held.close()
    assert again.key == first.key and not again.copied


def test_unwritable_node_folder_serves_from_shared(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", SMALL)
    (tmp_path / "file").write_text("not a folder")
    weights, _ = NodeCache(tmp_path / "file" / "node").ensure(source)
    assert weights.source == "shared" and "not usable" in weights.reason


# -- real processes ------------------------------------------------------------------------------------------

BIG = {"config.json": 100, "model.safetensors": 4_000_000}


def test_copier_killed_halfway_leaves_nothing_served_and_the_next_redoes_it(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", BIG)
    root = tmp_path / "node"
    slow = copier(source, root, "--max-read-bytes-per-second", "1000000")  # about 4 s for the whole
    partial = wait_for(lambda: [p for p in (root / "tmp").rglob("model.safetensors")
                                if p.stat().st_size >= 1_000_000] if (root / "tmp").is_dir() else [],
                       "a partial copy")
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait()
    assert partial[0].stat().st_size < BIG["model.safetensors"]
    assert list((root / "models").iterdir()) == []  # nothing renamed into place: nothing to serve
    weights, held = NodeCache(root).ensure(source)
    held.close()
    assert weights.copied and weights.shared_bytes == sum(BIG.values())
    local = Path(weights.path) / "model.safetensors"
    assert local.read_bytes() == (source / "model.safetensors").read_bytes()
    assert list((root / "tmp").iterdir()) == []  # the dead copier's partial copy is gone


def test_two_copiers_at_once_one_copies_the_other_waits_and_reads_nothing(tmp_path: Path):
    source = make_model(tmp_path / "shared" / "m", BIG)
    root = tmp_path / "node"
    first = copier(source, root, "--max-read-bytes-per-second", "4000000", "--hold")
    wait_for(lambda: (root / "tmp").is_dir() and any((root / "tmp").iterdir()), "the first copier to start")
    second = copier(source, root, "--hold")
    outcomes = []
    for proc in (first, second):
        assert proc.stdout is not None
        outcomes.append(json.loads(proc.stdout.readline()))
    assert [o["copied"] for o in outcomes] == [True, False]
    assert [o["shared_bytes"] for o in outcomes] == [sum(BIG.values()), 0]
    assert outcomes[0]["path"] == outcomes[1]["path"] and outcomes[1]["source"] == "node"
    # Both hold the copy in use: an eviction for another model must not take it.
    other = make_model(tmp_path / "shared" / "other", BIG, seed=7)
    weights, _ = NodeCache(root, max_bytes=sum(BIG.values()) + 10).ensure(other)
    assert weights.source == "shared" and "in use and kept" in weights.reason
    for proc in (first, second):
        proc.communicate("")
        assert proc.returncode == 0
    # Once they are gone, it may go.
    weights, held = NodeCache(root, max_bytes=sum(BIG.values()) + 10).ensure(other)
    held.close()
    assert weights.source == "node" and not Path(outcomes[0]["path"]).exists()


def test_two_models_copied_at_once_stay_under_the_bound_together(tmp_path: Path):
    """Two replicas of different models starting on one node at once: each plans its room knowing of the
    other's copy under way (a reservation), so together they never overrun the bound."""
    root = tmp_path / "node"
    models = [make_model(tmp_path / "shared" / f"m{i}", BIG, seed=i) for i in range(2)]
    bound = str(sum(BIG.values()) * 3 // 2)  # room for one copy, not two
    first = copier(models[0], root, "--max-bytes", bound, "--max-read-bytes-per-second", "4000000", "--hold")
    wait_for(lambda: (root / "tmp").is_dir() and any((root / "tmp").iterdir()), "the first copy to start")
    second = copier(models[1], root, "--max-bytes", bound, "--hold")
    outcomes = []
    for proc in (first, second):
        assert proc.stdout is not None
        outcomes.append(json.loads(proc.stdout.readline()))
    assert [o["source"] for o in outcomes] == ["node", "shared"], outcomes
    assert "does not fit" in outcomes[1]["reason"] and outcomes[0]["key"] in outcomes[1]["reason"]
    assert [p.name for p in (root / "models").iterdir()] == [outcomes[0]["key"]]
    for proc in (first, second):
        proc.communicate("")
        assert proc.returncode == 0


def test_a_bad_copy_other_replicas_serve_from_is_left_to_them_and_redone_once_free(tmp_path: Path):
    """A copy found bad while a replica on the node still serves from it is not pulled from under that
    replica (it may still be loading): this start reads the shared cache, and the first start after the
    last user stopped copies it again."""
    source = make_model(tmp_path / "shared" / "m", SMALL)
    cache = NodeCache(tmp_path / "node")
    first, serving = cache.ensure(source)
    victim = Path(first.path) / "model-00002.safetensors"
    data = bytearray(victim.read_bytes())
    data[99] ^= 0xFF
    victim.write_bytes(bytes(data))
    second, held = cache.ensure(source)
    held.close()
    assert second.source == "shared" and "model-00002.safetensors" in second.reason, second
    assert "still serve from it" in second.reason
    assert (Path(first.path) / MANIFEST).is_file()  # left in place for the replica using it
    serving.close()
    third, held = cache.ensure(source)
    held.close()
    assert third.source == "node" and third.copied and "copied again" in third.reason
    assert victim.read_bytes() == (source / "model-00002.safetensors").read_bytes()


def test_a_lock_that_fails_leaves_no_open_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import errno
    import fcntl

    source = make_model(tmp_path / "shared" / "m", SMALL)

    def no_locks(handle, kind):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    before = sum(1 for _ in Path("/proc/self/fd").iterdir())
    weights, held = NodeCache(tmp_path / "node").ensure(source)
    held.close()
    assert weights.source == "shared" and "No locks available" in weights.reason
    assert sum(1 for _ in Path("/proc/self/fd").iterdir()) == before


def test_a_copy_another_replica_is_checking_is_not_planned_for_eviction(tmp_path: Path):
    """A copy whose copy lock a starting replica holds (it is checking it) is in use for eviction too: the
    plan takes another idle copy instead of trying three times to evict one that cannot go."""
    import fcntl

    total = sum(SMALL.values())
    models = [make_model(tmp_path / "shared" / f"m{i}", SMALL, seed=i) for i in range(3)]
    cache = NodeCache(tmp_path / "node", max_bytes=2 * total + 10)
    x, held = cache.ensure(models[0])
    held.close()
    z, held = cache.ensure(models[1])
    held.close()
    locks = tmp_path / "node" / "locks"
    os.utime(locks / f"{x.key}.use", (100, 100))  # x is the least recently used
    with (locks / f"{x.key}.copy").open("a+b") as checking:
        fcntl.flock(checking, fcntl.LOCK_EX)  # a replica checking x's files
        y, held = NodeCache(tmp_path / "node", max_bytes=2 * total + 10).ensure(models[2])
        held.close()
    assert y.source == "node", y.reason
    assert Path(x.path).is_dir() and not Path(z.path).exists()


def test_a_finished_copy_is_counted_until_it_is_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Between the end of a copy and its rename into place, another model's planner still counts it."""
    root = tmp_path / "node"
    first = make_model(tmp_path / "shared" / "p", {"config.json": 100, "w.safetensors": 1000})
    second = make_model(tmp_path / "shared" / "q", {"config.json": 100, "w.safetensors": 1400}, seed=2)
    bound = 2000
    seen: list = []
    real = node_copy.fsync_dir

    def meanwhile(path: Path) -> None:  # the first copy is whole, not yet renamed: the second plans now
        real(path)
        if not seen and path.parent.name == "tmp":
            seen.append(None)  # once (the second's own copy, if it makes one, passes here too)
            seen[0] = NodeCache(root, max_bytes=bound).ensure(second)

    monkeypatch.setattr(node_copy, "fsync_dir", meanwhile)
    weights, held = NodeCache(root, max_bytes=bound).ensure(first)
    held.close()
    (other, other_held), = seen
    other_held.close()
    assert weights.source == "node" and other.source == "shared" and "does not fit" in other.reason
    on_disk = sum(f.stat().st_size for f in (root / "models").rglob("*")
                  if f.is_file() and f.suffix != ".json")
    assert on_disk <= bound
    assert not (Path(weights.path) / node_copy.RESERVED).exists()


def test_a_dead_copiers_partial_copy_of_another_model_is_swept(tmp_path: Path):
    root = tmp_path / "node"
    dead = root / "tmp" / "gone-0123456789abcdef.deadbeef"
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"x" * 1000)
    (dead / node_copy.RESERVED).write_text("5000")
    weights, held = NodeCache(root).ensure(make_model(tmp_path / "shared" / "m", SMALL))
    held.close()
    assert weights.source == "node" and not dead.exists()


# -- grok-server's use of it ---------------------------------------------------------------------------------

def test_server_start_loads_the_node_copy_and_reports_bytes_from_shared(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    from grok_server.server import startup_events
    from grok_server.server.config import ServerConfig
    from grok_server.server.startup_run import StartupRun, weights_info

    for name in (startup_events.ENV, startup_events.API_PID_ENV):
        monkeypatch.setenv(name, "")  # StartupRun sets them for its engine: restored after the test
    source = make_model(tmp_path / "shared" / "tiny", SMALL)
    runs = []
    for _ in range(2):
        cfg = ServerConfig(model=str(source), node_cache_dir=tmp_path / "node")
        run = StartupRun(cfg)
        run.prepare_weights()
        runs.append(run)
        assert cfg.model.startswith(str(tmp_path / "node" / "models")) and cfg.tokenizer == cfg.model
        # The model keeps its name (ModelInfo, vLLM's served name): --model, not the node copy's folder.
        assert cfg.served_model_name == str(source)
    weights = [weights_info(r.cfg.model, r.node_weights) for r in runs]
    model_bytes = sum(v for k, v in SMALL.items() if k.endswith(".safetensors"))
    assert [(w.source, w.bytes, w.shared_bytes) for w in weights] == [
        ("node", model_bytes, sum(SMALL.values())), ("node", model_bytes, 0)]
    assert runs[0].clock.seconds("node_copy") > 0
    # Too small a bound: the shared cache, said in the report.
    cfg = ServerConfig(model=str(source), node_cache_dir=tmp_path / "node2", node_cache_max_bytes=1000)
    run = StartupRun(cfg)
    run.prepare_weights()
    info = weights_info(cfg.model, run.node_weights)
    assert (info.source, info.path, info.shared_bytes) == ("shared", str(source), model_bytes)
    assert "larger than the node cache's bound" in info.reason
    for r in [*runs, run]:
        r.close()


def test_grok_server_refuses_a_load_format_this_machine_cannot_run():
    from grok_common.load_formats import LoadFormatRefused
    from grok_server.server import engine
    from grok_server.server.config import ServerConfig

    for fmt in ("runai_streamer", "fastsafetensors"):  # neither package is installed here; no CUDA either
        with pytest.raises(LoadFormatRefused, match=fmt):
            engine.check_load_format(ServerConfig(model="/m", engine_args={"load_format": fmt}))
    engine.check_load_format(ServerConfig(model="/m", engine_args={"load_format": "safetensors"}))
    engine.check_load_format(ServerConfig(model="/m"))


def test_an_empty_source_serves_from_shared_and_says_why(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    weights, _ = NodeCache(tmp_path / "node").ensure(tmp_path / "empty")
    assert weights.source == "shared" and "holds no files" in weights.reason


def test_a_source_rewritten_during_the_copy_is_never_served_from_the_node(tmp_path: Path):
    import threading

    source = make_model(tmp_path / "shared" / "m", BIG)
    root = tmp_path / "node"
    outcome: list = []
    copying = threading.Thread(target=lambda: outcome.append(
        NodeCache(root, max_read_bytes_per_second=2_000_000).ensure(source)))
    copying.start()
    wait_for(lambda: (root / "tmp").is_dir() and any(p.stat().st_size > 0 for p in (root / "tmp").rglob("*")
                                                     if p.is_file()), "the copy to start")
    (source / "config.json").write_text('{"revision": 2}')  # a new revision written in place
    copying.join(DEADLINE)
    ((weights, held),) = outcome
    held.close()
    assert weights.source == "shared" and "changed during the copy" in weights.reason
    assert weights.shared_bytes > 0  # what the dropped copy read, counted
    assert list((root / "models").iterdir()) == [] and list((root / "tmp").iterdir()) == []
