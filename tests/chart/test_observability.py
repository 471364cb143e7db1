"""The dashboard and alert rules the chart ships (hack/observability.py makes them), offline: the committed
files are what the code makes, the dashboard has the shape Grafana requires, promtool accepts the rules, the
chart wraps both only when asked, and every metric they name is one the product exports. That every query
returns data on a real workload is proven by the demo (tests/e2e/test_demo.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

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
# What Grafana (schemaVersion 39) requires of a dashboard it imports, and of the parts used here.
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
