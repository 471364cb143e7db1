"""The dashboard and alert rules the chart ships (hack/observability.py makes them), offline: the committed
files are what the code makes, the dashboard has the shape Grafana requires, promtool accepts the rules, the
chart wraps both only when asked, and every metric they name is one the product exports. That every query
returns data on a real workload is proven by the demo (tests/e2e/test_demo.py)."""

from __future__ import annotations

import enum
import functools
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import types
import typing

import jsonschema
import pytest
import yaml
from grafana_foundation_sdk.cog import plugins as grafana_plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import REGISTRY

from grok_devcluster.local import wait
from grok_devcluster.prometheus import PrometheusServer
from grok_devcluster.tools import tools_dir
from grok_operator.control import metrics as operator_metrics  # noqa: F401  (registers the operator's metrics)
from grok_router.metrics import METRIC_NAMES as ROUTER_METRICS
from grok_server.server.metrics import METRIC_NAMES as SERVER_METRICS
from tests.chart.conftest import ROOT, template

spec = importlib.util.spec_from_file_location("observability", ROOT / "hack" / "observability.py")
assert spec is not None and spec.loader is not None
obs = importlib.util.module_from_spec(spec)
sys.modules["observability"] = obs  # dataclasses look their module up
spec.loader.exec_module(obs)

DASHBOARD = json.loads(obs.DASHBOARD_PATH.read_text())
RULES = yaml.safe_load(obs.RULES_PATH.read_text())

TARGET = {"type": "object", "required": ["refId", "expr"],
          "properties": {"refId": {"type": "string", "minLength": 1},
                         "expr": {"type": "string", "minLength": 1},
                         "legendFormat": {"type": "string"}, "datasource": {"$ref": "#/$defs/datasource"}}}
GRID = {"type": "object", "required": ["h", "w", "x", "y"],
        "properties": {"h": {"type": "integer", "minimum": 1},
                       "w": {"type": "integer", "minimum": 1, "maximum": 24},
                       "x": {"type": "integer", "minimum": 0, "maximum": 23},
                       "y": {"type": "integer", "minimum": 0}}}
# This dashboard's own rules on top of Grafana's schema (checked below with Grafana's typed models): a
# Prometheus data source everywhere, a uid Grafana accepts, only the panel types used here.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {"datasource": {"type": "object", "required": ["type", "uid"],
                             "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}}}},
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"},
        "editable": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "refresh": {"type": "string"},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {
            "type": "array", "items": {
            "type": "object", "required": ["name", "type"],
            "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                           "type": {"enum": ["query", "datasource", "custom", "constant", "interval"]}}}}}},
        "panels": {"type": "array", "items": {"oneOf": [
            {"type": "object", "required": ["type", "id", "title", "gridPos", "panels", "collapsed"],
             "properties": {"type": {"const": "row"}, "id": {"type": "integer"}, "gridPos": GRID,
                            "panels": {"type": "array"}, "collapsed": {"type": "boolean"}}},
            {"type": "object", "required": ["type", "id", "title", "gridPos", "datasource", "targets"],
             "properties": {"type": {"enum": ["timeseries", "bargauge", "stat", "table", "state-timeline"]},
                            "id": {"type": "integer"}, "gridPos": GRID,
                            "datasource": {"$ref": "#/$defs/datasource"},
                            "fieldConfig": {"type": "object", "required": ["defaults"]},
                            "targets": {"type": "array", "minItems": 1, "items": TARGET}}},
        ]}},
    },
}
ROWS = ["Traffic", "Latency", "Saturation", "Replicas", "Router", "Operator"]

# Grafana's own schema, as the typed models grafana-foundation-sdk generates from it (for Grafana 11.6,
# requirements/grafana/foundation-sdk.txt): each panel's options and field config decode into its plugin's
# models, each target into the Prometheus query's.
grafana_plugins.register_default_plugins()
NONE = type(None)


@functools.cache
def json_keys(cls: type) -> dict[str, str]:
    """A model's attribute -> the JSON key it is read from (its generated from_json: `if "key" in data:
    args["attribute"] = ...`)."""
    chunks = inspect.getsource(cls.from_json).split('if "')[1:]  # one per key, some over several lines
    found = (re.match(r'(\w+)" in data:.*?args\["(\w+)"\]', chunk, re.DOTALL) for chunk in chunks)
    keys = {m[2]: m[1] for m in found if m}
    assert keys, f"{cls.__name__}.from_json reads no key this test can find: the SDK's generated code changed"
    return keys


def grafana_problems(value: object, hint: object, written: object, path: str) -> list[str]:
    """Where `value` (decoded from `written`, the dashboard's JSON) is not of the schema's type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (typing.Any, object):
        found = []
    elif origin in (typing.Union, types.UnionType):
        # The member the value was decoded as (Panel or RowPanel), else the one it fits best.
        models = [a for a in args if isinstance(a, type) and isinstance(value, a)
                  and a.__module__.startswith("grafana_foundation_sdk")]
        members = models or [a for a in args if a is not NONE]
        tries = [grafana_problems(value, a, written, path) for a in members]
        found = [] if any(not t for t in tries) else min(tries, key=len)
    elif origin is typing.Literal:
        found = [] if value in args else [f"{path}: {value!r} is none of {args}"]
    elif origin is list:
        found = [f"{path}: a list, not {value!r}"] if not isinstance(value, list) else [
            p for i, v in enumerate(value) for p in grafana_problems(
                v, args[0], written[i] if isinstance(written, list) else None, f"{path}[{i}]")]
    elif origin is dict:
        found = [f"{path}: an object, not {value!r}"] if not isinstance(value, dict) else [
            p for k, v in value.items() for p in grafana_problems(
                v, args[1], (written or {}).get(k), f"{path}.{k}")]
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = {m.value for m in hint}
        found = [] if value in allowed or isinstance(value, hint) else [
            f"{path}: {value!r} is none of {sorted(map(str, allowed))}"]
    elif hint is float:
        found = [] if isinstance(value, int | float) and not isinstance(value, bool) else [
            f"{path}: a number, not {value!r}"]
    elif hint is int:
        found = [] if isinstance(value, int) and not isinstance(value, bool) else [
            f"{path}: an integer, not {value!r}"]
    elif isinstance(hint, type):  # str, bool, a model's class
        found = [] if isinstance(value, hint) else [f"{path}: a {hint.__name__}, not {value!r}"]
    else:
        raise AssertionError(f"{path}: a type the check does not know: {hint}")
    if not found and type(value).__module__.startswith("grafana_foundation_sdk.models."):
        found = model_problems(value, written, path)
    return found


def model_problems(model: object, written: object, path: str) -> list[str]:
    """A decoded model's fields against their types; the fields the schema requires present in the JSON."""
    if not isinstance(written, dict):
        return [f"{path}: an object, not {written!r}"]
    keys = json_keys(type(model))
    found = []
    for attr, hint in typing.get_type_hints(type(model)).items():
        if keys and attr not in keys:
            continue  # not read from the JSON: a constant of the model's (a row's type)
        key = keys.get(attr, attr)
        if key not in written:
            if NONE not in typing.get_args(hint):  # not Optional
                found.append(f"{path}.{key}: required")
            continue
        found += grafana_problems(getattr(model, attr), hint, written[key], f"{path}.{key}")
    return found


def unknown_to_grafana(written: object, encoded: object, path: str = "") -> list[str]:
    """What the typed models dropped or changed on the way through (a field Grafana's schema has not)."""
    if isinstance(written, dict) and isinstance(encoded, dict):
        return [p for k, v in written.items() for p in (
            [f"{path}.{k}: not in Grafana's schema"] if k not in encoded
            else unknown_to_grafana(v, encoded[k], f"{path}.{k}"))]
    if isinstance(written, list) and isinstance(encoded, list) and len(written) == len(encoded):
        return [p for i, (w, e) in enumerate(zip(written, encoded, strict=True))
                for p in unknown_to_grafana(w, e, f"{path}[{i}]")]
    return [] if written == encoded else [f"{path}: {written!r} read back as {encoded!r}"]


def grafana_check(dashboard: dict) -> list[str]:
    model = Dashboard.from_json(dashboard)
    encoded = json.loads(json.dumps(model, cls=JSONEncoder))
    found = unknown_to_grafana(dashboard, encoded) + model_problems(model, dashboard, "dashboard")
    for i, panel in enumerate(model.panels or []):
        # A panel type or datasource the models do not know stays an untyped bag, checked by nothing.
        if panel.type_val != "row":
            if isinstance(panel.options, dict) or isinstance(panel.field_config.defaults.custom, dict):
                found.append(f"panels[{i}]: panel type {panel.type_val!r} has no model")
            found += [f"panels[{i}].targets[{j}]: not a Prometheus query" for j, t in enumerate(panel.targets)
                      if type(t).__module__ != "grafana_foundation_sdk.models.prometheus"]
    return found


def test_committed_files_are_what_the_code_makes():
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "observability.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for path, text in obs.rendered().items():
        assert path.read_text() == text


def test_dashboard_passes_the_schema_with_rows_variables_and_unique_ids():
    jsonschema.validate(DASHBOARD, SCHEMA)
    panels = DASHBOARD["panels"]
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]
    names = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert names == ["datasource", "namespace", "deployment"]
    # Every server and router query follows the variables; the operator's own row is the operator's.
    current = None
    for p in panels:
        if p["type"] == "row":
            current = p["title"]
            continue
        for t in p["targets"]:
            if current != "Operator":
                assert '"$namespace"' in t["expr"] and '"$deployment"' in t["expr"], t["expr"]


def test_dashboard_passes_grafanas_schema_through_the_sdks_typed_models():
    assert grafana_check(DASHBOARD) == []


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d.update(schemaVersoin=39), ".schemaVersoin: not in Grafana's schema"),
    (lambda d: d.update(graphTooltip=7), ".graphTooltip: 7 is none of"),
    (lambda d: d["panels"][1]["gridPos"].update(w="8"), "gridPos.w: an integer, not '8'"),
    (lambda d: d["panels"][1]["gridPos"].pop("h"), "gridPos.h: required"),
    (lambda d: d["panels"][1]["options"]["legend"].update(placement="top"), "placement: 'top' is none of"),
    (lambda d: d["panels"][1]["targets"][0].update(legend="x"), "targets[0].legend: not in Grafana's schema"),
    (lambda d: d["panels"][1].update(type="fancy"), "panel type 'fancy' has no model"),
    (lambda d: d["templating"]["list"][1].update(type="qeury"), "'qeury' is none of"),
])
def test_grafanas_schema_check_refuses_what_grafana_would_not_read(change, why):
    broken = json.loads(json.dumps(DASHBOARD))
    change(broken)
    found = grafana_check(broken)
    assert any(why in p for p in found), found


def test_promtool_accepts_the_rules_and_each_says_what_to_look_at():
    result = subprocess.run([str(tools_dir() / "promtool"), "check", "rules", str(obs.RULES_PATH)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(obs.RULES)} rules found" in result.stdout
    rules = RULES["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "GrokNoReadyReplicaWhileRequestsHeld", "GrokHighErrorRatio", "GrokTimeToFirstTokenP99High",
        "GrokKVCacheNearlyFull", "GrokAutoscalerHoldingOnMissingMetrics", "GrokReplicaCrashLooping",
        "GrokOperatorNoLeader"}
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and "Look at" in r["annotations"]["description"], r["alert"]


def test_every_metric_named_is_exported():
    operator = {m.name for m in REGISTRY.collect() if m.name.startswith("grok_operator_")}
    operator |= {n + "_total" for n in operator if not n.endswith("_total")}  # counters' family names
    exported = set(SERVER_METRICS) | set(ROUTER_METRICS) | operator
    for name in obs.every_metric_named():
        base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        assert name in exported or base in exported, name


@pytest.mark.parametrize("values", [[], ["--set", "dashboards.enabled=false"]])
def test_chart_ships_neither_unless_enabled(values):
    result, docs = template("obs", "grok-system", *values)
    assert result.returncode == 0, result.stderr
    assert not [d for d in docs if d["kind"] in ("PrometheusRule", "ConfigMap")]


def test_chart_wraps_the_same_dashboard_and_rules_when_enabled():
    result, docs = template("obs", "grok-system", "--set", "dashboards.enabled=true", "--set",
                            "dashboards.namespace=monitoring", "--set", "alerts.prometheusRule.enabled=true",
                            "--set", "alerts.prometheusRule.labels.release=kube-prometheus-stack")
    assert result.returncode == 0, result.stderr
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["grok-serve.json"]) == DASHBOARD
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == RULES


def test_readme_shows_the_picture_and_how_to_import_the_dashboard():
    readme = (ROOT / "README.md").read_text()
    picture = ROOT / "bench" / "figures" / "dashboard.png"
    assert "](bench/figures/dashboard.png)" in readme
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size < 150_000
    assert "charts/grok-operator/dashboards/grok-serve.json" in readme and "dashboards.enabled=true" in readme
    assert "alerts.prometheusRule.enabled=true" in readme


def rules_api(*rules: dict) -> dict:
    """/api/v1/rules' answer: the shipped rules, each evaluated fine unless `rules` says otherwise."""
    named = {r["name"]: r for r in rules}
    loaded = [{"name": r.alert, "query": r.expr, "type": "alerting", "health": "ok", "lastError": "",
               "state": "inactive", "lastEvaluation": "2026-12-08T02:00:00Z", **named.pop(r.alert, {})}
              for r in obs.RULES]
    return {"status": "success", "data": {"groups": [
        {"name": "grok-serve", "file": "grok-serve.rules.yaml", "interval": 1, "rules": loaded},
        {"name": "extra", "file": "extra.rules.yaml", "interval": 1, "rules": list(named.values())}]}}


def test_rule_check_passes_every_rule_evaluated_fine():
    assert obs.rule_problems(rules_api()) == []


@pytest.mark.parametrize(("rule", "why"), [
    # Loads (promtool and Prometheus accept it) but fails every evaluation.
    ({"name": "GrokHighErrorRatio", "health": "err",
      "lastError": "found duplicate series for the match group {pod=\"a\"} on the right hand-side of the "
                   "operation: many-to-many matching not allowed"}, "many-to-many"),
    ({"name": "GrokKVCacheNearlyFull", "health": "ok", "lastError": "query timed out"}, "query timed out"),
    ({"name": "GrokOperatorNoLeader", "health": "unknown", "lastEvaluation": "0001-01-01T00:00:00Z"},
     "not evaluated"),
    # Not one of the shipped rules, loaded from another file: every loaded rule counts.
    ({"name": "SomeoneElsesAlert", "query": "up == 0", "type": "alerting", "health": "err",
      "lastError": "bad data"}, "SomeoneElsesAlert"),
])
def test_rule_check_refuses_a_rule_that_does_not_evaluate(rule, why):
    problems = obs.rule_problems(rules_api(rule))
    assert len(problems) == 1 and rule["name"] in problems[0] and why in problems[0], problems


def test_rule_check_refuses_a_shipped_rule_not_loaded_and_an_error_answer():
    answer = rules_api()
    answer["data"]["groups"][0]["rules"].pop(0)
    problems = obs.rule_problems(answer)
    assert len(problems) == 1 and obs.RULES[0].alert in problems[0] and "not loaded" in problems[0], problems
    problems = obs.rule_problems({"status": "error", "errorType": "unavailable", "error": "not ready"})
    assert problems and "not ready" in problems[0]


def test_silent_means_neither_firing_nor_pending():
    def alert(name: str, state: str) -> dict:
        return {"labels": {"alertname": name, "severity": "warning"}, "state": state, "annotations": {},
                "activeAt": "2026-12-08T02:00:00Z", "value": "1e+00"}

    assert obs.not_silent([]) == []
    assert obs.not_silent([alert("GrokKVCacheNearlyFull", "inactive")]) == []
    assert obs.not_silent([alert("GrokTimeToFirstTokenP99High", "pending"),
                           alert("GrokHighErrorRatio", "firing"),
                           alert("GrokHighErrorRatio", "firing")]) == [
        "GrokHighErrorRatio (firing)", "GrokTimeToFirstTokenP99High (pending)"]
    # An alert the workload is known to hold (the demo's queue made on purpose) may be pending, never firing.
    queued = ("GrokTimeToFirstTokenP99High",)
    assert obs.not_silent([alert("GrokTimeToFirstTokenP99High", "pending")], may_pend=queued) == []
    assert obs.not_silent([alert("GrokTimeToFirstTokenP99High", "firing"),
                           alert("GrokKVCacheNearlyFull", "pending")], may_pend=queued) == [
        "GrokKVCacheNearlyFull (pending)", "GrokTimeToFirstTokenP99High (firing)"]


# Two series, {a="x"} and {a="y"}, matched on no label against themselves: many-to-many, refused only when
# evaluated.
TWO = 'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(1), "a", "y", "", "")'
MANY_TO_MANY = f"({TWO}) * on () ({TWO})"


def test_a_real_prometheus_refusing_a_rule_at_every_evaluation_is_caught(tmp_path):
    bad = tmp_path / "bad.rules.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"alert": "ManyToMany", "expr": MANY_TO_MANY}]}]}))
    promtool = subprocess.run([str(tools_dir() / "promtool"), "check", "rules", str(bad)],
                              capture_output=True, text=True, check=False)
    assert promtool.returncode == 0, promtool.stdout  # it loads: only evaluating it shows what is wrong
    (tmp_path / "prometheus").mkdir()
    prometheus = PrometheusServer(tmp_path / "prometheus", rule_files=[obs.RULES_PATH, bad])
    prometheus.start()
    try:
        def evaluated() -> tuple[list[str]] | None:
            problems = obs.rule_problems(obs.get(prometheus.url, "/api/v1/rules"))
            return None if any("not evaluated" in p for p in problems) else (problems,)

        (problems,) = wait(evaluated, 30, "every rule to be evaluated")
        assert len(problems) == 1 and "ManyToMany: health err" in problems[0], problems
        assert "many-to-many matching not allowed" in problems[0]
        # Each shipped rule's whole expression evaluates (no series: nothing is scraped); this one does not.
        assert [c.error for c in obs.check_rule_expressions(prometheus.url)] == [""] * len(obs.RULES)
        _, error = obs.instant(prometheus.url, MANY_TO_MANY)
        assert error.startswith("422: ") and "many-to-many" in error
        # Nothing scraped: no operator leads, so its alert is pending (for 5m), which is not silent.
        assert wait(lambda: obs.not_silent(obs.alerts(prometheus.url)), 30, "an alert") == [
            "GrokOperatorNoLeader (pending)"]
    finally:
        prometheus.stop()
