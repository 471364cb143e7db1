"""Writing a GrokDeployment's status: inside a per-object lock, from the indexes as they are at that moment
(handlers run in parallel threads, and a status computed from what one saw earlier must never overwrite what
another saw later), with an Event for each condition that changes, and retries.

Why a retry loop of our own: kopf retries change handlers (on.create/update/resume, with
`TemporaryError(delay=…)`), whose progress it keeps in annotations on the object; every handler here is an
event handler (each event, compared with the generation already handled), which kopf calls once and never
retries.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from grok_operator.api.spec import DEFAULT_REPLICAS
from grok_operator.control import metrics
from grok_operator.control.state import State, kube
from grok_operator.observe.status import condition, merge_conditions

log = logging.getLogger("grok_operator")
BAD_WHEN = {
    "PlanValid": "False",
    "ModelReady": "False",
    "Unschedulable": "True",
    "Degraded": "True",
    "Ready": "False",
}



def write_status(body: dict[str, Any], make_status: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    meta = body["metadata"]
    with State.lock:
        lock = State.status_locks.setdefault(meta["uid"], threading.Lock())
    with lock:
        old = State.written.get(meta["uid"]) or body.get("status") or {}
        status = make_status(old)
        desired = int(body["spec"].get("replicas", DEFAULT_REPLICAS))
        metrics.GROKDEPLOYMENTS.record(meta["namespace"], meta["name"], desired, {**old, **status})
        if all(old.get(k) == v for k, v in status.items()):
            return
        kube().patch_status(meta["namespace"], meta["name"], status)
        State.written[meta["uid"]] = {**old, **status}
        _announce_transitions(body, old.get("conditions") or [], status["conditions"])


def _announce_transitions(body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """An Event for every condition that changed status."""
    before = {c["type"]: c for c in old}
    for c in new:
        prior = before.get(c["type"])
        if prior is not None and prior["status"] == c["status"]:
            continue
        bad = BAD_WHEN.get(c["type"]) == c["status"]
        if prior is None and not bad and c["type"] not in ("PlanValid", "Ready"):
            continue  # the initial "all good" of minor conditions is noise
        if c["type"] == "Ready" and bad and (prior is None or prior["status"] != "True"):
            continue  # not ready yet is not news; losing readiness is
        kopf.event(
            body,
            type="Warning" if bad else "Normal",
            reason=c.get("reason", c["type"]),
            message=c.get("message", ""),
        )


RETRY_DELAYS = (0.5, 1, 2, 4, 8, 16)


def _transient(err: Exception) -> bool:
    if isinstance(err, ApiException):
        return err.status in (409, 429) or (err.status or 0) >= 500
    return isinstance(err, OSError | urllib3.exceptions.HTTPError)


def with_retries(call: Callable[[], Any]) -> Any:
    """Event handlers are not retried by kopf: ride out API-server hiccups (etcd timeouts, conflicts)."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except Exception as err:
            if delay is None or not _transient(err):
                raise
            log.info("transient API error (%s), retrying in %ss", err, delay)
            time.sleep(delay)
    return None


def api_message(err: ApiException) -> str:
    """The API server's own message from a Status body (the body itself when it is not one)."""
    try:
        return str(json.loads(err.body or "")["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return (err.body or "")[:500]


def report_refused(body: dict[str, Any], message: str) -> None:
    """The spec's generation could not be applied: say so, and keep observedGeneration at the last one that
    was, so that nothing waiting on observedGeneration == generation takes the edit as rolled out."""
    meta = body["metadata"]
    generation = int(meta.get("generation", 1))
    State.refused[meta["uid"]] = generation
    refused = condition(
        "Progressing", False, "ReconcileFailed",
        f"generation {generation} was not applied (the running replicas are unchanged): {message}",
    )

    def make(old: dict[str, Any]) -> dict[str, Any]:
        return {"conditions": merge_conditions(old.get("conditions") or [], [refused], generation)}

    try:
        with_retries(lambda: write_status(body, make))
    except Exception:
        log.exception("could not write the status of %s/%s", meta["namespace"], meta["name"])


