"""A closed-loop load generator: N clients, each sending its next request as soon as the last one ends.

Used by the demo and the autoscaling tests to drive real servers; `clients(n)` changes the load live.
"""

from __future__ import annotations

import contextlib
import threading

import grpc
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc


class ClosedLoopLoad:
    def __init__(self, target: str, prompt: str = "the quick brown fox", max_new_tokens: int = 96,
                 timeout: float = 600.0) -> None:
        self.timeout = timeout  # per request: generous, a queue behind the admission limit can be long
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        self.request = pb.GenerateRequest(
            text=prompt, stopping=pb.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True)
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.completed = 0
        self.failed = 0

    def _client(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                for _ in self.stub.GenerateStream(self.request, timeout=self.timeout):
                    pass
                with self._lock:
                    self.completed += 1
            except grpc.RpcError:
                if stop.is_set():
                    return  # cancelled by close(): not a failure of the server
                with self._lock:
                    self.failed += 1
                stop.wait(0.2)  # a refused request (admission limit, draining) backs off a little

    def clients(self, n: int) -> None:
        """Sets the number of concurrent clients (0 stops the load once running requests end)."""
        self._stop.set()
        for t in self._threads:
            t.join(130)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(self._stop,), daemon=True) for _ in range(n)
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stops at once: requests still running are cancelled (closing the channel), not waited for."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.channel.close()
        for t in self._threads:
            t.join(30)


def main(argv: list[str] | None = None) -> int:
    """`python -m grok_server.client.load --target HOST:PORT --clients N [--seconds S]`: runs until the
    time is up or SIGTERM/SIGINT, then prints the completed and refused counts. A process of its own keeps
    gRPC clear of the caller's forks (a process that forks, e.g. to run kubectl, disturbs its channels)."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="grok-load", description="closed-loop gRPC load")
    parser.add_argument("--target", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=3600)
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    load = ClosedLoopLoad(args.target, max_new_tokens=args.max_tokens)
    load.clients(args.clients)
    done.wait(args.seconds)
    load.close()
    print(f"completed {load.completed}, refused {load.failed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
