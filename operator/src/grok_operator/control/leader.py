"""Leader election on a coordination.k8s.io Lease: of several operator replicas, one acts.

The others wait, retrying every few seconds; the leader renews its Lease and steps down (the process
exits, and Kubernetes restarts it as a follower) if it cannot renew before the Lease expires.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "grok-operator",
        lease_seconds: int = 15,
        renew_seconds: float = 5,
        retry_seconds: float = 2,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.lease_seconds, self.renew_seconds, self.retry_seconds = (
            lease_seconds,
            renew_seconds,
            retry_seconds,
        )
        self.lost = threading.Event()
        self.on_lost: Callable[[], None] = lambda: None

    def _try_acquire_or_renew(self) -> bool:
        now = _now()
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.lease_seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_err:
                if create_err.status == 409:
                    return False  # another replica created it first
                raise
        spec = lease.spec
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        expires = (spec.renew_time or now).timestamp() + (spec.lease_duration_seconds or self.lease_seconds)
        if held_by_other and expires > now.timestamp():
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity, spec.renew_time, spec.lease_duration_seconds = (
            self.identity,
            now,
            self.lease_seconds,
        )
        try:  # resourceVersion in the body makes this a compare-and-swap
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Blocks until this replica leads (True) or `stop` is set (False)."""
        log.info("waiting to lead (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
        while not (stop and stop.is_set()):
            try:
                if self._try_acquire_or_renew():
                    log.info("leading as %s", self.identity)
                    return True
            except ApiException as err:
                log.warning("leader election: %s", err.reason)
            time.sleep(self.retry_seconds)
        return False

    def keep_renewing(self) -> None:
        """Renews in a daemon thread; sets `lost` if the Lease could not be renewed in time."""

        def loop() -> None:
            last_ok = time.monotonic()
            while not self.lost.is_set():
                time.sleep(self.renew_seconds)
                try:
                    if self._try_acquire_or_renew():
                        last_ok = time.monotonic()
                        continue
                    log.error("leadership taken over by another replica")
                except Exception as err:  # network errors: retry until the Lease would expire
                    log.warning("renewing the Lease failed: %s", err)
                    if time.monotonic() - last_ok < self.lease_seconds - self.renew_seconds:
                        continue
                self.lost.set()
                self.on_lost()

        threading.Thread(target=loop, name="lease-renewal", daemon=True).start()

    def release(self) -> None:
        """Hands the Lease over at once on a clean shutdown (the next leader need not wait for expiry)."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as err:
            log.debug("releasing the Lease: %s", err)
