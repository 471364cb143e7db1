"""status.lastStartup: a server's own start-up report, fetched once per pod and shaped for the status."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.observe import startup_reports
from grok_operator.observe.startup import cache_unavailable, last_startup, newest_ready_server, startup_status
from grok_operator.observe.startup_reports import NotAvailable, StartupReports, fetch_report
from grok_operator.observe.status import Observed, status_patch
from grok_operator.plan.admission import plan_request
from grok_operator.plan.planner import plan

# As grok-server answers GET /startup once Ready (StartupReport.to_json).
REPORT = {
    "seconds": 12.3456,
    "phases": {"imports": 3.1, "model_class": 0.3, "config": 0.5, "engine_processes": 5.0, "weights": 0.05,
               "compile": 0.0, "cuda_graphs": 0.0, "kv_cache": 0.1, "engine_other": 0.4, "warmup": 0.3,
               "other": 0.2},
    "compile_cache": {"state": "miss", "reason": "no entry for this key",
                      "directory": "/var/cache/grok-serve/compile", "key": "ab12"},
    "weights": {"source": "/models/model", "bytes": 12345},
    "weights_gb_per_second": 0.2,
    "engine_processes": 2,
    "engine_prestart": "used",
    "overran": [],
}
UNWRITABLE = {**REPORT, "compile_cache": {
    "state": "off", "directory": "/var/cache/grok-serve/compile", "key": "ab12",
    "reason": "/var/cache/grok-serve/compile is not writable (Permission denied); starting without the "
              "compile cache"}}


def pod(name: str, ready_at: str | None, uid: str | None = None, ip: str = "10.0.0.1",
        app: str = "grok-server", port: int | None = 9090) -> dict:
    conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}] if ready_at else [
        {"type": "Ready", "status": "False"}]
    labels = {"app.kubernetes.io/name": app}
    return {"metadata": {"name": name, "uid": uid or f"uid-{name}", "labels": labels},
            "status": {"podIP": ip, "conditions": conditions}, "created": "2026-12-01T00:00:00Z",
            "metricsPort": port}


def test_the_report_is_shaped_for_the_status():
    shaped = startup_status(REPORT, "grok-5d9-x")
    assert shaped == {
        "pod": "grok-5d9-x",
        "seconds": 12.35,
        "phases": REPORT["phases"],
        "compileCache": "miss",
        "compileCacheReason": "no entry for this key",
        "weightsSource": "/models/model",
        "weightsBytes": 12345,
        "weightsSharedBytes": 0,
        "weightsGBPerSecond": 0.2,
        "engineProcesses": 2,
        "enginePrestart": "used",
    }
    bare = startup_status({"seconds": 1, "weights_gb_per_second": None, "overran": ["warmup"]}, "p")
    assert bare["compileCache"] == "unknown" and "weightsGBPerSecond" not in bare
    assert bare["overran"] == ["warmup"] and bare["phases"] == {}


def test_the_last_start_is_the_leaders_that_turned_ready_last():
    pods = [
        pod("a", "2026-12-01T00:01:00Z"),
        pod("b", "2026-12-01T00:03:00Z"),
        pod("c", None),  # still starting
        # A LeaderWorkerSet group's worker (no grok-server, no report), Ready after its leader.
        pod("b-1", "2026-12-01T00:04:00Z", app="grok-server-worker"),
    ]
    assert newest_ready_server(pods)["metadata"]["name"] == "b"
    assert last_startup(pods, {}) is None  # not fetched yet: the status keeps what it had
    assert last_startup(pods, {"uid-b": {"pod": "b"}, "uid-a": {"pod": "a"}}) == {"pod": "b"}
    assert newest_ready_server([pod("c", None)]) is None


def test_the_status_carries_the_report_and_replaces_an_earlier_pods():
    spec = GrokDeploymentSpec.from_body({"metadata": {"name": "g", "namespace": "ml", "uid": "u"},
                                         "spec": {"model": {"uri": "pvc://w/g", "quantization": "fp8"}}})
    p = plan(plan_request(spec))
    shaped = startup_status(REPORT, "new")
    status = status_patch(Observed(1, plan=p, last_startup_seconds=14.2, last_startup=shaped), {}, 1)
    assert status["lastStartup"] == shaped and status["lastStartupSeconds"] == 14
    # A JSON merge patch keeps keys it does not mention: the new pod's report nulls the older one's extra.
    old = {"lastStartup": {**shaped, "pod": "old", "overran": ["warmup"], "phases": {"p2p_check": 60.0}}}
    status = status_patch(Observed(1, plan=p, last_startup=shaped), old, 1)
    assert status["lastStartup"]["overran"] is None and status["lastStartup"]["phases"]["p2p_check"] is None
    assert status["lastStartup"]["pod"] == "new"
    # Not fetched: nothing written, so the status keeps the last report it had.
    assert "lastStartup" not in status_patch(Observed(1, plan=p), old, 1)


def test_only_a_cache_volume_the_server_could_not_use_is_a_warning():
    assert cache_unavailable(UNWRITABLE) == UNWRITABLE["compile_cache"]["reason"]
    assert cache_unavailable(REPORT) is None  # a miss says why in the status, no Event
    eager = {**REPORT, "compile_cache": {"state": "off", "reason": "--enforce-eager: nothing compiles"}}
    assert cache_unavailable(eager) is None
    assert cache_unavailable({}) is None


def test_reports_are_fetched_once_per_pod_and_failures_are_tried_again():
    calls: list[tuple[str, int]] = []
    answers: list[object] = [NotAvailable("404 not started yet"), REPORT]

    def fetch(ip: str, port: int) -> dict:
        calls.append((ip, port))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    reports = StartupReports(fetch)
    ready = pod("a", "2026-12-01T00:01:00Z", ip="10.1.2.3", port=9191)
    assert reports.collect(ready, 9090) is None and reports.snapshot() == {}  # 404: tried again later
    assert reports.collect(ready, 9090) == REPORT  # the first success: the caller's cue for its Event
    assert reports.collect(ready, 9090) is None  # known: never fetched again
    assert calls == [("10.1.2.3", 9191), ("10.1.2.3", 9191)]  # the pod's own metrics port
    assert reports.snapshot() == {"uid-a": startup_status(REPORT, "a")}
    assert reports.collect({"metadata": {"uid": "x"}, "status": {}}, 9090) is None  # no podIP yet: no call
    assert len(calls) == 2


def test_a_server_that_never_answers_is_not_asked_forever_and_the_table_is_bounded():
    calls = []

    def failing(ip: str, port: int) -> dict:
        calls.append(ip)
        raise NotAvailable("timed out")

    reports = StartupReports(failing)
    for _ in range(startup_reports.MAX_ATTEMPTS + 5):
        assert reports.collect(pod("a", "2026-12-01T00:01:00Z"), 9090) is None
    assert len(calls) == startup_reports.MAX_ATTEMPTS

    bad_shape = StartupReports(lambda ip, port: {"phases": "not a map", "seconds": "soon"})
    bad_shape.collect(pod("b", "2026-12-01T00:01:00Z"), 9090)  # never raises into a handler
    assert bad_shape.snapshot()["uid-b"]["seconds"] == 0.0

    small = StartupReports(lambda ip, port: REPORT, max_pods=3)
    for i in range(5):
        small.collect(pod(f"p{i}", "2026-12-01T00:01:00Z"), 9090)
    assert list(small.snapshot()) == ["uid-p2", "uid-p3", "uid-p4"]


@pytest.fixture
def startup_endpoint() -> Iterator[tuple[str, int, dict]]:
    """A real HTTP server answering /startup as grok-server does: 404 with an error until `state['ready']`."""
    state: dict = {"ready": False, "body": REPORT}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/startup" or not state["ready"]:
                code, body = 404, {"error": "not started yet (loading)"}
            else:
                code, body = 200, state["body"]
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def test_fetching_a_report_over_http(startup_endpoint):
    ip, port, state = startup_endpoint
    with pytest.raises(NotAvailable, match="404"):
        fetch_report(ip, port)
    state["ready"] = True
    assert fetch_report(ip, port) == REPORT
    state["body"] = ["not", "an", "object"]
    with pytest.raises(NotAvailable, match="JSON object"):
        fetch_report(ip, port)
    with pytest.raises(NotAvailable):
        fetch_report("127.0.0.1", 1, timeout=1)  # nothing listens: refused, not a hang


SPEC = GrokDeploymentSpec.from_body({"metadata": {"name": "g", "namespace": "ml", "uid": "u"},
                                     "spec": {"model": {"uri": "pvc://weights/grok-1"},
                                              "server": {"metricsPort": 9090}}})
NODE_COPY = {**REPORT, "weights": {"source": "node", "bytes": 12345, "shared_bytes": 0,
                                   "path": "/var/cache/grok-serve/models/m-1",
                                   "reason": "a whole copy was on the node"}}
TOO_SMALL = {**REPORT, "weights": {"source": "shared", "bytes": 12345, "path": "/models/model",
                                   "shared_bytes": 12345, "reason": "the model (1.000 GB) is larger than the "
                                                                    "node cache's bound (0.500 GB)"}}


def test_the_weights_source_is_shaped_and_a_shared_fallback_is_told_apart():
    from grok_operator.observe.startup import holds_node_copy, node_copy_unavailable

    shaped = startup_status(NODE_COPY, "p")
    assert (shaped["weightsSource"], shaped["weightsSharedBytes"]) == ("node", 0)
    assert shaped["weightsPath"] == "/var/cache/grok-serve/models/m-1"
    assert holds_node_copy(NODE_COPY) and node_copy_unavailable(NODE_COPY) is None
    assert "larger than the node cache's bound" in (node_copy_unavailable(TOO_SMALL) or "")
    given_none = {**REPORT, "weights": {"source": "shared",
                                        "reason": "no --node-cache-dir: loaded from --model"}}
    assert node_copy_unavailable(given_none) is None and not holds_node_copy(given_none)


def serving_report(monkeypatch, startup_endpoint, body: dict) -> tuple[list[dict], str, int]:
    """The report endpoint serving `body`, the operator's Events collected, its reports forgotten:
    (events, ip, port)."""
    from grok_operator.control import grokdeployments as handlers
    from grok_operator.control.state import State

    ip, port, state = startup_endpoint
    state.update(ready=True, body=body)
    events: list[dict] = []
    monkeypatch.setattr(handlers.kopf, "event", lambda body, **kw: events.append(kw))
    monkeypatch.setattr(State, "startup_reports", StartupReports())
    return events, ip, port


def owner_body() -> dict:
    return {"metadata": {"name": "g", "namespace": "ml", "uid": "u"}, "status": {}}


def test_a_shared_fallback_is_a_warning_event(monkeypatch, startup_endpoint):
    from grok_operator.control import grokdeployments as handlers

    events, ip, port = serving_report(monkeypatch, startup_endpoint, TOO_SMALL)
    owner = owner_body()
    p = {**pod("g-1", "2026-12-01T00:01:00Z", ip=ip, port=port), "spec": {"nodeName": "gpu-0"}}
    for _ in range(2):
        handlers.collect_startup(owner, [p], SPEC)
    assert [(e["reason"], e["type"]) for e in events] == [("NodeCopyUnavailable", "Warning")]
    assert "on node gpu-0 loads the model from the shared cache" in events[0]["message"]


def test_every_ready_server_pod_that_holds_a_node_copy_labels_its_node(monkeypatch, startup_endpoint):
    """Replicas turning Ready together, or before a restart of the operator: each pod's report is read once,
    not only the newest one's, so every node that holds the model is marked (and every fallback said)."""
    from grok_operator.control import grokdeployments as handlers

    events, ip, port = serving_report(monkeypatch, startup_endpoint, NODE_COPY)
    labelled: list[tuple[str, dict]] = []
    monkeypatch.setattr(handlers, "kube", lambda: SimpleNamespace(
        label_node=lambda node, labels: labelled.append((node, labels))))
    pods = [{**pod(f"g-{i}", f"2026-12-01T00:0{i}:00Z", uid=f"uid-{i}", ip=ip, port=port),
             "spec": {"nodeName": f"gpu-{i}"}} for i in (1, 2, 3)]
    for _ in range(2):
        handlers.collect_startup(owner_body(), pods, SPEC)
    assert sorted(node for node, _ in labelled) == ["gpu-1", "gpu-2", "gpu-3"]  # once each
    assert events == []


def test_reports_are_fetched_a_few_at_a_time_newest_first(monkeypatch, startup_endpoint):
    """Many Ready replicas (an operator restart beside a large fleet): one event fetches a bounded number of
    reports, the newest first, so an event never waits on a whole fleet; later events fetch the rest."""
    from grok_operator.control import grokdeployments as handlers

    _, ip, port = serving_report(monkeypatch, startup_endpoint, NODE_COPY)
    labelled: list[str] = []
    monkeypatch.setattr(handlers, "kube", lambda: SimpleNamespace(
        label_node=lambda node, labels: labelled.append(node)))
    pods = [{**pod(f"g-{i}", f"2026-12-01T00:{i:02d}:00Z", uid=f"uid-{i}", ip=ip, port=port),
             "spec": {"nodeName": f"gpu-{i}"}} for i in range(20)]
    handlers.collect_startup(owner_body(), pods, SPEC)
    assert sorted(labelled) == sorted(f"gpu-{i}" for i in range(20 - handlers.FETCHES_PER_EVENT, 20))
    for _ in range(3):
        handlers.collect_startup(owner_body(), pods, SPEC)
    assert sorted(labelled) == sorted(f"gpu-{i}" for i in range(20))  # each once


def test_an_unusable_cache_volume_is_one_warning_event_per_pod(monkeypatch, startup_endpoint):
    from grok_operator.control import grokdeployments as handlers
    from grok_operator.control.state import State

    events, ip, port = serving_report(monkeypatch, startup_endpoint, UNWRITABLE)
    owner = owner_body()
    pods = [pod("g-1", "2026-12-01T00:01:00Z", ip=ip, port=port)]
    for _ in range(3):
        handlers.collect_startup(owner, pods, SPEC)
    assert events == [{"type": "Warning", "reason": "CompileCacheUnavailable",
                       "message": "pod g-1: " + UNWRITABLE["compile_cache"]["reason"]}]
    assert State.startup_reports.snapshot()["uid-g-1"]["compileCache"] == "off"
    # After a restart of the operator: the status already names the pod, so it is not said again.
    monkeypatch.setattr(State, "startup_reports", StartupReports())
    handlers.collect_startup({**owner, "status": {"lastStartup": {"pod": "g-1"}}}, pods, SPEC)
    assert len(events) == 1


def test_the_pod_index_carries_what_fetching_a_report_needs():
    from grok_operator.control.indexes import server_pods

    spec = {"containers": [{"name": "server", "ports": [{"name": "grpc", "containerPort": 50051},
                                                        {"name": "metrics", "containerPort": 9191}]}]}
    entry = server_pods(namespace="ns", labels={"serving.grok.dev/deployment": "g",
                                                "app.kubernetes.io/name": "grok-server"},
                        meta=SimpleNamespace(name="g-1", creation_timestamp="2026-12-01T00:00:00Z"),
                        status={"podIP": "10.0.0.9"}, uid="uid-9", spec=spec)
    (value,) = entry.values()
    assert value["metadata"]["uid"] == "uid-9" and value["metricsPort"] == 9191
    assert value["status"]["podIP"] == "10.0.0.9"
    assert value["metadata"]["labels"] == {"app.kubernetes.io/name": "grok-server"}
