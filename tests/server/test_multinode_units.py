"""One replica across nodes, without an engine: the flags of grok-server and grok-server-worker, the engine
arguments they make, the heartbeat watches (group.py) against a fake store and real sockets, and the
rendezvous store bound to the master address (rendezvous.py) with torch's own store."""

from __future__ import annotations

import datetime
import importlib
import os
import socket
import threading
import time

import pytest

from grok_devcluster.local import free_port, wait
from grok_server.server import rendezvous
from grok_server.server.config import parse_args, parse_worker_args
from grok_server.server.group import LeaderWatch, PeerWatch, heartbeat_interval, heartbeat_key, port_open
from tests.server.serverlib import listening_addresses

LEADER = ["--model", "m", "--tp", "2", "--pp", "2", "--nnodes", "2", "--node-rank", "0",
          "--master-addr", "leader.example", "--master-port", "29501"]


def test_multinode_flags_reach_the_config() -> None:
    cfg = parse_args(LEADER)
    assert (cfg.tensor_parallel_size, cfg.pipeline_parallel_size) == (2, 2)
    assert (cfg.nnodes, cfg.node_rank, cfg.master_addr, cfg.master_port) == (2, 0, "leader.example", 29501)
    assert cfg.peer_timeout_seconds == 30.0
    single = parse_args(["--model", "m"])
    assert (single.nnodes, single.node_rank, single.master_addr) == (1, 0, None)
    assert single.pipeline_parallel_size == 1

    worker = parse_worker_args(["--model", "m", "--tp", "4", "--nnodes", "2", "--node-rank", "1",
                                "--master-addr", "10.0.0.1", "--peer-timeout-seconds", "12",
                                "--leader-wait-seconds", "60", "--dtype", "float32", "--enforce-eager",
                                "--engine-arg", "max_num_batched_tokens=512"])
    assert (worker.nnodes, worker.node_rank, worker.master_addr) == (2, 1, "10.0.0.1")
    assert worker.master_port == 29501
    assert (worker.peer_timeout_seconds, worker.leader_wait_seconds) == (12.0, 60.0)
    assert worker.dtype == "float32" and worker.enforce_eager
    assert worker.engine_args == {"max_num_batched_tokens": 512}


@pytest.mark.parametrize(
    ("worker", "argv", "message"),
    [
        (False, ["--model", "m", "--tp", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "a"],
         "--node-rank 2 must be less than --nnodes 2"),
        (False, ["--model", "m", "--tp", "2", "--nnodes", "2"], "--nnodes 2 needs --master-addr"),
        (False, ["--model", "m", "--tp", "2", "--pp", "3", "--nnodes", "4", "--master-addr", "a"],
         "--nnodes 4 must divide the replica's ranks evenly: tensor x pipeline = 2 x 3 = 6"),
        (False, ["--model", "m", "--tp", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "a"],
         "node 1 runs grok-server-worker"),
        (False, ["--model", "m", "--pp", "0"], "must be >= 1, got 0"),
        (False, ["--model", "m", "--master-port", "0"], "must be from 1 to 65535"),
        (False, ["--model", "m", "--peer-timeout-seconds", "0"], "must be > 0"),
        (True, ["--model", "m", "--tp", "2", "--nnodes", "2", "--master-addr", "a"],
         "the following arguments are required: --node-rank"),
        (True, ["--model", "m", "--tp", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr", "a"],
         "--node-rank 0 is the leader, which runs grok-server"),
        (True, ["--model", "m", "--node-rank", "0"], "grok-server-worker needs --nnodes > 1"),
        (True, ["--model", "m", "--tp", "2", "--nnodes", "2", "--node-rank", "1"], "needs --master-addr"),
        (True, ["--model", "m", "--tp", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "a",
                "--port", "50051"], "unrecognized arguments: --port 50051"),
    ],
)
def test_multinode_flags_rejected_as_usage_errors(worker: bool, argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        (parse_worker_args if worker else parse_args)(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_engine_args_use_the_multiprocessing_backend_across_nodes(tiny_grok_checkpoint) -> None:
    """(A real checkpoint folder: vLLM's engine arguments look the model up, never on a hub here.)"""
    from grok_server.server.engine import engine_args

    model = str(tiny_grok_checkpoint)
    leader = [model if a == "m" else a for a in LEADER]
    args = engine_args(parse_args(leader))
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (2, 2)
    assert (args.nnodes, args.node_rank, args.master_addr) == (2, 0, "leader.example")
    assert args.master_port == 29501
    assert args.distributed_executor_backend == "mp"
    worker = engine_args(parse_worker_args([*leader[:8], "--node-rank", "1", *leader[10:]]))
    assert (worker.nnodes, worker.node_rank) == (2, 1)
    single = engine_args(parse_args(["--model", model]))
    assert single.nnodes == 1 and single.distributed_executor_backend is None
    assert engine_args(parse_args(["--model", model, "--tp", "2"])).distributed_executor_backend == "mp"


class FakeStore:
    """TCPStore's add(), shared by fake clients; `fail` makes every call raise, `block` makes calls hang."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.lock = threading.Lock()
        self.fail = False
        self.block = threading.Event()
        self.block.set()

    def add(self, key: str, amount: int) -> int:
        self.block.wait()
        if self.fail:
            raise RuntimeError("Failed to recv, got 0 bytes. Connection was likely closed.")
        with self.lock:
            self.values[key] = self.values.get(key, 0) + amount
            return self.values[key]


@pytest.fixture
def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def _wait(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    wait(condition, timeout, "the condition", interval=0.02)


def test_heartbeat_interval_is_several_per_timeout() -> None:
    assert heartbeat_interval(30) == 5.0 and heartbeat_interval(3) == 0.5 and heartbeat_interval(600) == 5.0


def test_port_open(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    assert port_open("127.0.0.1", port, timeout=5)
    listening.close()
    assert not port_open("127.0.0.1", port, timeout=5)


def test_worker_heartbeats_and_leader_sees_it(listening: socket.socket) -> None:
    store = FakeStore()
    port = listening.getsockname()[1]
    worker = LeaderWatch("127.0.0.1", port, node_rank=1, timeout=1.2, wait=30,
                         connect=lambda *_: store)
    leader = PeerWatch("127.0.0.1", port, nnodes=2, timeout=1.2, connect=lambda *_: store)
    worker.start()
    leader.start()
    try:
        _wait(lambda: store.values.get(heartbeat_key(1), 0) >= 3)
        assert worker.lost() is None and leader.lost() is None
        worker.stop()  # this node goes silent: the leader says so after the timeout
        _wait(lambda: leader.lost() is not None)
        assert "node 1 of the replica not heard from" in (leader.lost() or "")
    finally:
        worker.stop()
        leader.stop()


def test_leader_names_a_node_never_heard_from(listening: socket.socket) -> None:
    store = FakeStore()
    port = listening.getsockname()[1]
    node2 = LeaderWatch("127.0.0.1", port, node_rank=2, timeout=1.0, wait=30, connect=lambda *_: store)
    leader = PeerWatch("127.0.0.1", port, nnodes=3, timeout=1.0, connect=lambda *_: store)
    node2.start()
    leader.start()
    try:
        _wait(lambda: leader.lost() is not None)
        assert "node 1 of the replica never heard from" in (leader.lost() or "")
        assert store.values.get(heartbeat_key(2), 0) >= 1 and heartbeat_key(1) in store.values
    finally:
        node2.stop()
        leader.stop()


def test_worker_loses_a_leader_whose_store_closes(listening: socket.socket) -> None:
    store = FakeStore()
    worker = LeaderWatch("127.0.0.1", listening.getsockname()[1], node_rank=1, timeout=60, wait=60,
                         connect=lambda *_: store)
    worker.start()
    try:
        _wait(worker.joined.is_set)
        store.fail = True
        _wait(lambda: worker.lost() is not None)
        assert "lost the leader's store" in (worker.lost() or "")
    finally:
        worker.stop()


def test_worker_loses_a_leader_that_stops_answering(listening: socket.socket) -> None:
    """A store call that never returns (host gone without a reset) counts as silence after the timeout."""
    store = FakeStore()
    worker = LeaderWatch("127.0.0.1", listening.getsockname()[1], node_rank=1, timeout=1.0, wait=60,
                         connect=lambda *_: store)
    worker.start()
    try:
        _wait(worker.joined.is_set)
        store.block.clear()
        _wait(lambda: worker.lost() is not None)
        assert "has not answered for" in (worker.lost() or "")
    finally:
        store.block.set()
        worker.stop()


def test_worker_waits_for_the_leader_then_gives_up(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    listening.close()  # nobody listens: the leader has not started
    worker = LeaderWatch("127.0.0.1", port, node_rank=1, timeout=5, wait=1.0,
                         connect=lambda *_: pytest.fail("connected to a closed port"))
    worker.start()
    try:
        assert worker.lost() is None  # still within --leader-wait-seconds
        _wait(lambda: worker.lost() is not None)
        assert "did not open within 1 s (--leader-wait-seconds)" in (worker.lost() or "")
    finally:
        worker.stop()


def test_a_stopped_watch_reports_nothing(listening: socket.socket) -> None:
    """A node shutting down on purpose stops its watch first: the store closing then is no loss."""
    store = FakeStore()
    worker = LeaderWatch("127.0.0.1", listening.getsockname()[1], node_rank=1, timeout=3, wait=60,
                         connect=lambda *_: store)
    worker.start()
    _wait(worker.joined.is_set)
    worker.stop()
    store.fail = True
    time.sleep(3 * worker.interval)
    assert worker.stopped and worker.lost() is None


def test_the_rendezvous_store_listens_on_the_master_address_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's tcp:// rendezvous (what vLLM uses across nodes) with the store bound as grok-server asks."""
    store_module = importlib.import_module("torch.distributed.rendezvous")
    monkeypatch.setattr(store_module, "_create_c10d_store", store_module._create_c10d_store)  # undone after
    monkeypatch.delenv(rendezvous.BIND_ENV, raising=False)
    rendezvous.install()
    assert not getattr(store_module._create_c10d_store, "grok_bound_to_master_addr", False)  # not asked for
    monkeypatch.setenv(rendezvous.BIND_ENV, "1")
    rendezvous.install()
    rendezvous.install()  # idempotent (every vLLM process calls the plugin, some more than once)
    port = free_port()
    store = store_module._create_c10d_store("127.0.0.1", port, 0, 1, datetime.timedelta(seconds=30))
    store.set("k", "v")
    assert store.get("k") == b"v"
    listening = {address for address in listening_addresses([os.getpid()]) if address[1] == port}
    assert listening == {("127.0.0.1", port)}  # torch alone: ("::", port) or ("0.0.0.0", port)
    del store


def test_a_store_address_not_of_this_host_cannot_be_bound() -> None:
    with pytest.raises(OSError):
        rendezvous.listen_socket("192.0.2.1", 0)  # TEST-NET-1: never an address of this host
