"""The servers' start-up reports (GET /startup on a server pod's metrics port): fetched once per pod, kept
in a bounded table by pod uid. The only I/O of status.lastStartup (its shaping is startup.py)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from grok_operator.observe.startup import pod_uid, startup_status

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 3.0
MAX_PODS = 1024  # reports kept (the newest pods'); a pod forgotten is fetched again if it is still the last
MAX_ATTEMPTS = 20  # per pod: a server that never answers (an image without /startup) is not asked forever


class NotAvailable(Exception):
    """The pod gave no report (not Ready yet by its own account, unreachable, or not a JSON object)."""


def fetch_report(ip: str, port: int, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """The server's /startup body; raises NotAvailable."""
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/startup", timeout=timeout) as response:
            body = json.loads(response.read(1 << 20))
    except (urllib.error.URLError, OSError, ValueError) as err:  # HTTPError (404 before Ready) is a URLError
        raise NotAvailable(f"{ip}:{port}/startup: {err}") from err
    if not isinstance(body, dict):
        raise NotAvailable(f"{ip}:{port}/startup: not a JSON object")
    return body


class StartupReports:
    """Reports by pod uid, shaped for status.lastStartup. `collect` never raises: a failure is tried again
    at the pod's next event, up to MAX_ATTEMPTS."""

    def __init__(self, fetch: Callable[[str, int], dict[str, Any]] = fetch_report,
                 max_pods: int = MAX_PODS) -> None:
        self.fetch, self.max_pods = fetch, max_pods
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._reports)

    def wanted(self, pod: dict[str, Any]) -> bool:
        """Whether `collect` would fetch this pod's report now (not fetched, not in flight, not given up)."""
        uid = pod_uid(pod)
        with self._lock:
            return bool(uid) and uid not in self._reports and uid not in self._busy \
                and self._failures.get(uid, 0) < MAX_ATTEMPTS

    def collect(self, pod: dict[str, Any], default_port: int) -> dict[str, Any] | None:
        """The raw report of a pod not fetched before (its first successful fetch: the caller's cue for
        anything said once per pod), else None. Its shaped form is in snapshot() afterwards."""
        uid = pod_uid(pod)
        ip = (pod.get("status") or {}).get("podIP")
        if not uid or not ip:
            return None
        with self._lock:
            if uid in self._reports or uid in self._busy or self._failures.get(uid, 0) >= MAX_ATTEMPTS:
                return None
            self._busy.add(uid)
        try:
            port = int(pod.get("metricsPort") or default_port)
            report = self.fetch(str(ip), port)
            shaped = startup_status(report, str((pod.get("metadata") or {}).get("name") or ""))
        except Exception as err:  # NotAvailable, or a body of the wrong shape: never the handler's problem
            with self._lock:
                self._busy.discard(uid)
                self._failures[uid] = self._failures.pop(uid, 0) + 1
                while len(self._failures) > self.max_pods:
                    self._failures.popitem(last=False)
            log.debug("no start-up report yet from pod %s: %s", uid, err)
            return None
        with self._lock:
            self._busy.discard(uid)
            self._failures.pop(uid, None)
            self._reports[uid] = shaped
            while len(self._reports) > self.max_pods:
                self._reports.popitem(last=False)
        return report
