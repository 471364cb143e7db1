"""The replicas a router forwards to: discovered from pods, loaded from the router's own counts and the
replicas' `grok_*` gauges.

A pod is a replica while its Ready condition is true, it has an IP and no deletion timestamp: a pod that turns
not-Ready or starts terminating leaves at once (its in-flight calls run on). Pods are watched directly, as
Gateway API Inference Extension's endpoint picker does: EndpointSlices add nothing a pod does not say, and in
the simulated cluster they cannot carry loopback pod addresses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_common.pods import is_ready
from grok_router import picker
from grok_rpc.exposition import samples

log = logging.getLogger("grok_router.replicas")
T = TypeVar("T")

# The replicas' gauges that the load estimate reads (grok-server's metric contract).
SCRAPED = ("grok_requests_in_flight", "grok_requests_waiting", "grok_kv_cache_usage_ratio")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # A replica that vanished without closing its connection (a killed node) is noticed by keepalive.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def round_robin(items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """`items` (oldest first) taken one per key in turn: each key's own in their order, the keys in the order
    of their oldest item. Held calls leave so, tenant by tenant: one tenant's burst cannot go first whole."""
    queues: dict[Hashable, collections.deque[T]] = {}
    for item in items:
        queues.setdefault(key(item), collections.deque()).append(item)
    order: list[T] = []
    while queues:
        for k in list(queues):
            order.append(queues[k].popleft())
            if not queues[k]:
                del queues[k]
    return order


@dataclass(frozen=True)
class Endpoint:
    """Where a replica answers: its gRPC address and, when known, its metrics address."""

    name: str
    grpc_address: str
    metrics_address: str | None = None


def _port(container_ports: Iterable[Mapping[str, Any]], name: str) -> int | None:
    for port in container_ports:
        if port.get("name") == name:
            return int(port["containerPort"])
    return None


def endpoint_of(
    pod: Mapping[str, Any], grpc_port: str = "grpc", metrics_port: str = "metrics"
) -> Endpoint | None:
    """The pod's endpoint while it should get new requests (Ready, has an IP, not terminating), else None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return None
    if not is_ready(pod):
        return None
    ports = [p for c in (pod.get("spec") or {}).get("containers") or () for p in c.get("ports") or ()]
    grpc_number = _port(ports, grpc_port) if not grpc_port.isdigit() else int(grpc_port)
    if grpc_number is None:
        return None
    metrics_number = _port(ports, metrics_port) if not metrics_port.isdigit() else int(metrics_port)
    ip = status["podIP"]
    host = f"[{ip}]" if ":" in ip else ip
    return Endpoint(
        meta["name"],
        f"{host}:{grpc_number}",
        f"{host}:{metrics_number}" if metrics_number is not None else None,
    )


def _metric_of(line: str) -> str:
    """The metric a line of an exposition is about (its HELP, TYPE or sample line)."""
    if line.startswith("#"):
        parts = line.split(" ", 3)
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


def parse_gauges(exposition: str) -> dict[str, float]:
    """The SCRAPED gauges from a Prometheus text exposition (unlabelled samples only). Only their lines are
    parsed: a replica's page is mostly histogram buckets, and parsing all of it every second cost the router
    more CPU than routing did at low load."""
    wanted = "".join(f"{line}\n" for line in exposition.splitlines() if _metric_of(line) in SCRAPED)
    found = samples(wanted)
    return {name: found[name] for name in SCRAPED if name in found}


@dataclass
class Replica:
    endpoint: Endpoint
    channel: grpc.aio.Channel
    stub: pb_grpc.GenerationServiceStub
    in_flight: int = 0  # this router's calls on it now
    gauges: dict[str, float] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    @property
    def name(self) -> str:
        return self.endpoint.name

    others: float = 0.0  # requests on the replica that are not this router's, as of the last scrape

    @property
    def load(self) -> float:
        """Requests on the replica: this router's own (exact, now) plus the others' (other routers', clients
        that bypass the router) from the replica's own count at the last scrape."""
        return self.in_flight + self.others


class ReplicaSet:
    """The Ready replicas, kept on the router's event loop (every change and read happens there)."""

    def __init__(self, balance: float, prefix_blocks: int) -> None:
        self.balance = balance
        self.prefix_blocks = prefix_blocks
        self.replicas: dict[str, Replica] = {}
        self.known = 0  # pods seen, Ready or not
        self.synced = asyncio.Event()
        self._turn = 0
        # Calls waiting for a Ready replica: (arrival, waiter, tenant), oldest first.
        self.held: collections.deque[tuple[float, asyncio.Future[None], str | None]] = collections.deque()
        self.closing = False

    def update(self, endpoints: Mapping[str, Endpoint], known: int) -> None:
        """Replace the set with these Ready endpoints (by pod name); channels of the ones gone are closed once
        their calls end (grpc closes a channel gracefully: calls in flight finish)."""
        self.known = known
        for name in list(self.replicas):
            if name not in endpoints or endpoints[name] != self.replicas[name].endpoint:
                gone = self.replicas.pop(name)
                log.info("replica %s (%s) left", name, gone.endpoint.grpc_address)
                asyncio.get_running_loop().create_task(_close_when_idle(gone))
        for name, endpoint in endpoints.items():
            if name not in self.replicas:
                channel = grpc.aio.insecure_channel(endpoint.grpc_address, options=CHANNEL_OPTIONS)
                self.replicas[name] = Replica(endpoint, channel, pb_grpc.GenerationServiceStub(channel))
                log.info("replica %s (%s) joined", name, endpoint.grpc_address)
        self.synced.set()
        if self.replicas:
            self._release_held()

    def _release_held(self, error: BaseException | None = None) -> None:
        # Round-robin over tenants, oldest first within each: futures resolved in order wake their waiters in
        # that order on the event loop (and so reach the replica's queue in that order).
        held = round_robin(list(self.held), key=lambda entry: entry[2])
        self.held.clear()
        for _, waiter, _ in held:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    async def hold(self, seconds: float | None, tenant: str | None = None) -> bool:
        """Waits until a replica is Ready (True) or `seconds` pass (False); raises what `fail_held` gives."""
        if self.replicas:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (time.monotonic(), waiter, tenant)
        self.held.append(entry)
        try:
            await asyncio.wait_for(waiter, seconds)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self.held.remove(entry)

    def oldest_held_seconds(self) -> float:
        return time.monotonic() - self.held[0][0] if self.held else 0.0

    def fail_held(self, error: BaseException) -> None:
        """The router is stopping: held calls end now, with `error`, rather than wait for a replica."""
        self.closing = True
        self._release_held(error)

    def pick(self, key: bytes | None, exclude: set[str]) -> tuple[Replica, str] | None:
        candidates = [
            picker.Candidate(r.name, r.load) for r in self.replicas.values() if r.name not in exclude
        ]
        choice = picker.pick(candidates, key, self.balance, self._turn)
        self._turn += 1
        if choice is None:
            return None
        return self.replicas[choice.name], choice.reason

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()


async def _close_when_idle(replica: Replica) -> None:
    if replica.in_flight:
        await replica.idle.wait()
    await replica.channel.close()


class PodWatcher:
    """Keeps a ReplicaSet equal to the Ready pods of a selector: a list, then a watch from its
    resourceVersion, relisting when the watch expires (410) or fails. Runs the blocking Kubernetes client in
    a thread and hands each new endpoint set to the event loop."""

    def __init__(
        self,
        replicas: ReplicaSet,
        namespace: str,
        selector: str,
        grpc_port: str = "grpc",
        metrics_port: str = "metrics",
        kubeconfig: str | None = None,
    ) -> None:
        self.replicas = replicas
        self.namespace = namespace
        self.selector = selector
        self.ports = (grpc_port, metrics_port)
        self.kubeconfig = kubeconfig
        self._stop = threading.Event()
        self._watch: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        threading.Thread(target=self._run, args=(loop,), name="pod-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig:
            config.load_kube_config(self.kubeconfig)
        else:
            # The pod's service account (the standard in-cluster files); outside a pod, the client's own
            # kubeconfig lookup ($KUBECONFIG, then ~/.kube/config), as the operator's login does.
            try:
                config.load_incluster_config()
            except config.ConfigException as not_in_a_pod:
                try:
                    config.load_kube_config()
                except config.ConfigException as err:
                    raise config.ConfigException(
                        f"no service account ({not_in_a_pod}) and no kubeconfig ({err}): pass --kubeconfig"
                    ) from err
        return client.CoreV1Api()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        api = None
        while not self._stop.is_set():
            try:
                api = api or self._api()
                listing = api.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _preload_content=False
                )
                body = json.loads(listing.data)
                pods = {p["metadata"]["name"]: p for p in body["items"]}
                self._publish(loop, pods)
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    api.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=body["metadata"]["resourceVersion"],
                    allow_watch_bookmarks=True,
                    timeout_seconds=300,
                ):
                    if self._stop.is_set():
                        return
                    pod, kind = event["raw_object"], event["type"]
                    if kind == "ERROR":
                        break  # expired (410): relist
                    if kind == "DELETED":
                        pods.pop(pod["metadata"]["name"], None)
                    elif kind in ("ADDED", "MODIFIED"):
                        pods[pod["metadata"]["name"]] = pod
                    else:
                        continue
                    self._publish(loop, pods)
            except ApiException as err:
                log.warning(
                    "watching pods %s in %s: %s %s", self.selector, self.namespace, err.status, err.reason
                )
                self._stop.wait(2.0)
            except Exception as err:  # the API server may be briefly unreachable: relist after a pause
                log.warning("watching pods %s in %s failed: %s", self.selector, self.namespace, err)
                api = None
                self._stop.wait(2.0)

    def _publish(self, loop: asyncio.AbstractEventLoop, pods: Mapping[str, Mapping[str, Any]]) -> None:
        endpoints = {
            name: e for name, pod in pods.items() if (e := endpoint_of(pod, *self.ports)) is not None
        }
        loop.call_soon_threadsafe(self.replicas.update, endpoints, len(pods))


async def scrape_forever(replicas: ReplicaSet, interval: float) -> None:
    """Refreshes each replica's gauges from its metrics endpoint. A failed scrape zeroes nothing: the router's
    own in-flight count still counts, and the pod watch removes a replica that is gone."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=max(1.0, interval * 2))
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        while True:
            started = time.monotonic()
            targets = [r for r in replicas.replicas.values() if r.endpoint.metrics_address]
            await asyncio.gather(*(_scrape(session, r) for r in targets))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def _scrape(session: Any, replica: Replica) -> None:
    mine = replica.in_flight
    try:
        async with session.get(f"http://{replica.endpoint.metrics_address}/metrics") as answer:
            if answer.status == 200:
                replica.gauges = parse_gauges(await answer.text())
                # The replica counted this router's calls too: the ones in flight at either end of the scrape
                # are taken off (a scrape read while a call ended must not count it for a whole interval).
                mine = max(mine, replica.in_flight)
                replica.others = max(0.0, replica.gauges.get("grok_requests_in_flight", 0.0) - mine)
    except Exception as err:  # the replica may be going away; the watch decides that
        log.debug("scraping %s: %s", replica.name, err)
