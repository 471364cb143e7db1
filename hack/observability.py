"""The Grafana dashboard and the Prometheus alert rules the chart ships, as code (reviewed here, generated
into charts/grok-operator/dashboards/grok-serve.json and charts/grok-operator/alerts/grok-serve.rules.yaml):

    .venv/bin/python hack/observability.py          # writes both files
    .venv/bin/python hack/observability.py --check  # exits 1 if the committed files are not what this makes

Every query names only metrics the product exports (grok-server's `grok_*`, the router's `grok_router_*`, the
operator's `grok_operator_*`), selected by the labels the operator's scrape set-ups give them: `namespace` and
`serving_grok_dev_deployment` (the pod label serving.grok.dev/deployment) on servers and routers,
`grokdeployment_namespace` and `grokdeployment` on the operator's per-GrokDeployment series. The demo
(hack/demo.py) evaluates every one of them against its real Prometheus (check_queries below).

A query over a counter whose labelled series appear only once something happens (refusals, retries, errors)
adds the same rate times 0 of a series that always exists (`A or B * 0`): it reads 0, not "no data", while
nothing happened.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_PATH = ROOT / "charts" / "grok-operator" / "dashboards" / "grok-serve.json"
RULES_PATH = ROOT / "charts" / "grok-operator" / "alerts" / "grok-serve.rules.yaml"

# Server and router series of the chosen GrokDeployment; the operator's series of it.
S = 'namespace="$namespace", serving_grok_dev_deployment="$deployment"'
OP = 'grokdeployment_namespace="$namespace", grokdeployment="$deployment"'
W = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What lists the namespaces and GrokDeployments: servers (even without a router) and routers (even at zero).
SOURCES = '{__name__=~"grok_server_ready|grok_router_replicas"'
VARIABLES = (
    ("namespace", "Namespace", f"label_values({SOURCES}}}, namespace)"),
    ("deployment", "GrokDeployment",
     f'label_values({SOURCES}, namespace="$namespace"}}, serving_grok_dev_deployment)'),
)


def rate(series: str, window: str = W) -> str:
    return f"rate({series}[{window}])"


def quantiles(histogram: str, selector: str, what: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99),
              by: str = "") -> list[tuple[str, str]]:
    by_le = f"{by}, le" if by else "le"
    return [(f"histogram_quantile({q}, sum by ({by_le}) ({rate(f'{histogram}_bucket{{{selector}}}')}))",
             f"{what} p{round(q * 100)}") for q in qs]


def zero_unless(counter: str, selector: str, only: str, by: str = "") -> str:
    """The rate of `counter`'s series matching `only`, 0 where there are none (see the module's docstring)."""
    grouping = f" by ({by})" if by else ""
    return (f"sum{grouping} ({rate(f'{counter}{{{selector}, {only}}}')} "
            f"or {rate(f'{counter}{{{selector}}}')} * 0)")


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 8


ROWS: list[tuple[str, list[Panel]]] = [
    ("Traffic", [
        Panel("Requests/s by outcome (router)",
              [(f"sum by (code) ({rate(f'grok_router_requests_total{{{S}}}')})", "{{code}}")], "reqps",
              "Calls the router finished, by gRPC status code (OK, RESOURCE_EXHAUSTED: every replica full, "
              "UNAVAILABLE: no Ready replica after holding, ...)."),
        Panel("Requests/s by outcome (servers)",
              [(f"sum by (method, code) ({rate(f'grok_requests_total{{{S}}}')})", "{{method}} {{code}}")],
              "reqps", "RPCs the servers finished, by method and gRPC status code."),
        Panel("Tokens/s in and out",
              [(f"sum({rate(f'grok_prompt_tokens_total{{{S}}}')})", "in (prompt)"),
               (f"sum({rate(f'grok_generation_tokens_total{{{S}}}')})", "out (generated)"),
               (f"sum by (pod) ({rate(f'grok_generation_tokens_total{{{S}}}')})", "out {{pod}}")],
              "short", "Prompt tokens prefilled and tokens generated per second, in all and per replica."),
    ]),
    ("Latency", [
        Panel("Time to first token", quantiles("grok_time_to_first_token_seconds", S, "TTFT"), "s",
              "From a request's admission by a server to its first token (queueing in the engine included)."),
        Panel("Inter-token latency", quantiles("grok_inter_token_latency_seconds", S, "ITL"), "s",
              "Time between consecutive tokens of a request."),
        Panel("Request duration",
              [*quantiles("grok_request_duration_seconds", S, "server", (0.5, 0.99)),
               *quantiles("grok_router_request_duration_seconds", S, "through the router", (0.99,))], "s",
              "Admission to end at the servers; arrival to end at the router (holding and retries "
              "included)."),
    ]),
    ("Saturation", [
        Panel("Waiting and running",
              [(f"sum by (pod) (grok_requests_waiting{{{S}}})", "waiting {{pod}}"),
               (f"sum by (pod) (grok_requests_running{{{S}}})", "running {{pod}}")], "short",
              "Requests queued in each engine, and in its running batch (what the autoscaler scales on)."),
        Panel("KV-cache usage", [(f"max by (pod) (grok_kv_cache_usage_ratio{{{S}}})", "{{pod}}")],
              "percentunit", "Fraction of each replica's KV cache in use; near 1 the engine preempts."),
        Panel("Admission: in flight, limit and refusals",
              [(f"sum(grok_requests_in_flight{{{S}}})", "in flight"),
               (f"sum(grok_max_concurrent_requests{{{S}}})", "limit (maxConcurrentRequests)"),
               (zero_unless("grok_requests_total", S, 'code="RESOURCE_EXHAUSTED"'), "servers refused/s"),
               (zero_unless("grok_router_requests_total", S, 'code="RESOURCE_EXHAUSTED"'),
                "router refused/s (every replica full)")], "short",
              "Requests admitted and not finished against the admission limit; refusals per second."),
    ]),
    ("Replicas", [
        Panel("Replicas: desired, ready, starting",
              [(f"max by (kind) (grok_operator_grokdeployment_replicas{{{OP}}})", "{{kind}}"),
               (f"count(grok_server_ready{{{S}}}) - sum(grok_server_ready{{{S}}})",
                "starting (scraped, not Ready)"),
               (f"max by (state) (grok_router_replicas{{{S}}})", "router sees: {{state}}")], "short",
              "The operator's desired, current and ready replicas; servers scraped but not yet Ready; the "
              "replicas the router knows of and routes to."),
        Panel("Autoscaler: state and decisions",
              [(f"max by (status, reason) (grok_operator_grokdeployment_condition{{{OP}, "
                f'type="AutoscalingActive"}})', "AutoscalingActive {{status}}: {{reason}}"),
               (f"sum by (direction) (increase(grok_operator_scaling_decisions_total{{{OP}}}[{W}]))",
                "scaled {{direction}}")], "short",
              "AutoscalingActive's reason (Evaluating, ScaledToZero, or why it holds: MetricMissing, "
              "MetricStale, PrometheusUnreachable) and the scalings; the last one's reason is in "
              "status.lastScale (kubectl describe grokd)."),
        Panel("Phase and scale to zero",
              [(f"max by (phase) (grok_operator_grokdeployment_phase{{{OP}}})", "{{phase}}"),
               (f"max(grok_router_requests_held{{{S}}})", "requests held (waiting for a replica)")], "short",
              "The GrokDeployment's phase (ScaledToZero at zero) and the calls the router holds meanwhile."),
        Panel("Last start-up, exec to Ready",
              [(f"max by (pod) (grok_server_startup_seconds{{{S}}})", "{{pod}}")],
              "s", "Each replica's last start, once it turned Ready."),
        Panel("Last start-up by phase",
              [(f"max by (phase) (grok_server_startup_phase_seconds{{{S}}})", "{{phase}}")], "s",
              "Where the slowest replica's start went (weights, compile, cuda_graphs, warmup, ...): the same "
              "phases as status.lastStartup.", kind="bargauge"),
        Panel("Compile cache at start",
              [(f"sum by (result) (grok_server_compile_cache{{{S}}})", "{{result}}")],
              "short", "Replicas whose start found the compile cache (hit), filled it (miss) or had none "
              "(off).", kind="bargauge"),
    ]),
    ("Router", [
        Panel("Balance: calls/s per replica",
              [(f"sum by (replica) ({rate(f'grok_router_upstream_requests_total{{{S}}}')})", "{{replica}}")],
              "reqps", "Attempts the router sent to each replica."),
        Panel("Balance: in flight per replica",
              [(f"max by (replica) (grok_router_replica_in_flight{{{S}}})", "{{replica}}")], "short",
              "The router's calls in flight on each Ready replica."),
        Panel("Prefix-hit ratio and routing decisions",
              [(zero_unless("grok_router_routing_decisions_total", S, 'reason="affinity"') + " / "
                f"sum({rate(f'grok_router_routing_decisions_total{{{S}}}')})", "prefix hits (affinity)"),
               (f"sum by (reason) ({rate(f'grok_router_routing_decisions_total{{{S}}}')})", "{{reason}}/s")],
              "short", "The share of calls sent to their prompt prefix's replica; decisions per second by "
              "reason (affinity, affinity_overloaded, load)."),
        Panel("Retries/s", [(f"sum({rate(f'grok_router_retries_total{{{S}}}')} "
                             f"or {rate(f'grok_router_requests_total{{{S}}}')} * 0)", "retries")],
              "reqps", "Calls sent again to another replica after a failed attempt."),
        Panel("Held calls",
              [(f"max(grok_router_requests_held{{{S}}})", "held now"),
               (f"max(grok_router_oldest_held_seconds{{{S}}})", "oldest held (s)"),
               (f"sum({rate(f'grok_router_held_total{{{S}}}')})", "held/s")], "short",
              "Calls waiting for a Ready replica (at zero, or while every replica restarts)."),
        Panel("Router's own added latency",
              quantiles("grok_router_overhead_seconds", S, "overhead", (0.5, 0.99)),
              "s", "Time a call spends in the router before its attempt goes out."),
    ]),
    ("Operator", [
        Panel("Reconciles/s",
              [(f"sum by (trigger) ({rate('grok_operator_reconciles_total')})", "{{trigger}}")],
              "short", "Reconciliations by trigger (all GrokDeployments)."),
        Panel("Reconcile errors/s",
              [("sum by (trigger) (rate(grok_operator_reconcile_errors_total[" + W + "]) or "
                "rate(grok_operator_reconciles_total[" + W + "]) * 0)", "{{trigger}}")], "short",
              "Reconciliations that failed; the operator's log says why."),
        Panel("Reconcile duration",
              [("histogram_quantile(" + str(q) + ", sum by (le) ("
                + rate("grok_operator_reconcile_duration_seconds_bucket") + "))",
                f"p{round(q * 100)}") for q in (0.5, 0.99)], "s", "Time to reconcile one GrokDeployment."),
        Panel("Leader", [("sum(grok_operator_leader)", "replicas leading (should be 1)"),
                         ("max by (pod, instance) (grok_operator_leader)", "{{pod}} {{instance}}")], "short",
              "1 for the operator replica that holds the leader Lease; a follower takes over within ~15 s."),
    ]),
]


def dashboard() -> dict:
    panels: list[dict] = []
    ids = iter(range(1, 1000))
    y = 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": next(ids), "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        x = 0
        for p in row:
            if x + p.width > 24:
                x, y = 0, y + 8
            panel: dict = {
                "type": p.kind,
                "title": p.title,
                "description": p.description,
                "id": next(ids),
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend,
                     **({"instant": True, "format": "time_series"} if p.kind == "bargauge" else {})}
                    for i, (expr, legend) in enumerate(p.targets)
                ],
            }
            # Every field Grafana's schema requires of the panel's options (the bar gauge's at its defaults).
            legend = {"displayMode": "list", "placement": "bottom", "showLegend": p.kind == "timeseries",
                      "calcs": []}
            if p.kind == "timeseries":
                panel["options"] = {"legend": legend, "tooltip": {"mode": "multi", "sort": "none"}}
            else:
                panel["options"] = {"orientation": "horizontal", "displayMode": "gradient",
                                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                                      "values": False},
                                    "valueMode": "color", "namePlacement": "auto", "showUnfilled": True,
                                    "sizing": "auto", "minVizWidth": 8, "minVizHeight": 16,
                                    "maxVizHeight": 300, "legend": legend}
            panels.append(panel)
            x += p.width
        y += 8
    # No "current" (Grafana picks the first value) and no "definition" (not in Grafana's schema: its UI
    # derives it from the query).
    templating = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                   "hide": 0, "refresh": 1, "options": []}]
    for name, label, query in VARIABLES:
        templating.append({"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
                           "query": {"query": query, "refId": f"{name}-values"},
                           "hide": 0, "refresh": 2, "sort": 1, "includeAll": False,
                           "multi": False, "options": []})
    return {
        "title": "grok-serve",
        "uid": "grok-serve",
        "description": "Grok-1 serving: traffic, latency, saturation, replicas, router and operator "
                       "(generated by hack/observability.py; every query is checked against the demo's "
                       "Prometheus).",
        "tags": ["grok-serve", "llm", "vllm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": "30s",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": templating},
        "panels": panels,
    }


# -- alert rules --------------------------------------------------------------------------------------------

D = "namespace, serving_grok_dev_deployment"
G = "grokdeployment_namespace, grokdeployment"
ERROR_CODES = "INTERNAL|UNAVAILABLE|UNKNOWN|DEADLINE_EXCEEDED|DATA_LOSS"
HOLDING_REASONS = "PrometheusNotConfigured|PrometheusUnreachable|PrometheusError|MetricMissing|MetricStale"


@dataclass
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    # Queries the alert is made of that must each return a series on a healthy workload (the measured
    # quantity before its threshold, the series a label filter picks from): proof that the alert can see.
    parts: list[str] = field(default_factory=list)


HELD = f"max by ({D}) (grok_router_requests_held)"
READY_SEEN = f'max by ({D}) (grok_router_replicas{{state="ready"}})'
ERROR_RATIO = (f'sum by ({D}) (rate(grok_router_requests_total{{code=~"{ERROR_CODES}"}}[5m]) '
               "or rate(grok_router_requests_total[5m]) * 0) / "
               f"sum by ({D}) (rate(grok_router_requests_total[5m]))")
TTFT_P99 = f"histogram_quantile(0.99, sum by ({D}, le) (rate(grok_time_to_first_token_seconds_bucket[5m])))"
KV_USAGE = f"max by ({D}, pod) (grok_kv_cache_usage_ratio)"
AUTOSCALING = (f"max by ({G}, status, reason) "
               '(grok_operator_grokdeployment_condition{type="AutoscalingActive"})')
DEGRADED = f'max by ({G}, status, reason) (grok_operator_grokdeployment_condition{{type="Degraded"}})'
LEADERS = "sum(grok_operator_leader)"

RULES = [
    Rule("GrokNoReadyReplicaWhileRequestsHeld",
         f"{HELD} > 0 and on ({D}) {READY_SEEN} == 0", "10m", "critical",
         "{{ $labels.namespace }}/{{ $labels.serving_grok_dev_deployment }}: calls held for 10 minutes "
         "with no Ready replica",
         "The router holds calls and has had no Ready replica to send them to for 10 minutes: a start from "
         "zero that takes this long, or every replica failing. Look at `kubectl describe grokd` (Ready, "
         "Degraded, Unschedulable; status.lastStartup for where a start goes), the server pods' events and "
         "`kubectl logs --previous`, and the router's grok_router_replicas{state}.",
         [HELD, READY_SEEN]),
    Rule("GrokHighErrorRatio", f"{ERROR_RATIO} > 0.05", "10m", "warning",
         "{{ $labels.namespace }}/{{ $labels.serving_grok_dev_deployment }}: "
         "{{ $value | humanizePercentage }} of calls fail",
         "More than 5% of the calls through the router ended INTERNAL, UNAVAILABLE, UNKNOWN, "
         "DEADLINE_EXCEEDED or DATA_LOSS over 5 minutes, for 10 minutes. Look at the dashboard's Traffic row "
         "(which codes, router or servers), the Router row's retries, and the server pods' logs (engine "
         "failures are INTERNAL).",
         [ERROR_RATIO]),
    Rule("GrokTimeToFirstTokenP99High", f"{TTFT_P99} > 5", "15m", "warning",
         "{{ $labels.namespace }}/{{ $labels.serving_grok_dev_deployment }}: TTFT p99 {{ $value | "
         "humanizeDuration }} for 15 minutes",
         "The 99th percentile of time to first token (admission to first token, queueing included) has been "
         "above 5 s for 15 minutes. Look at the Saturation row: waiting requests (scale out; is the "
         "autoscaler at maxReplicas or holding?), KV-cache usage (long prompts preempting), and the Router "
         "row's balance.",
         [TTFT_P99]),
    Rule("GrokKVCacheNearlyFull", f"{KV_USAGE} > 0.95", "15m", "warning",
         "{{ $labels.pod }}: KV cache {{ $value | humanizePercentage }} full for 15 minutes",
         "The replica's KV cache has stayed above 95%: the engine preempts and recomputes sequences, and "
         "latency grows. Look at the Saturation row (running vs waiting), lower server.maxConcurrentRequests "
         "or model.maxModelLen, or scale out (autoscaling.metric kvCacheUsage).",
         [KV_USAGE]),
    Rule("GrokAutoscalerHoldingOnMissingMetrics",
         AUTOSCALING.replace("}", f', status="False", reason=~"{HOLDING_REASONS}"}}') + " == 1",
         "10m", "warning",
         "{{ $labels.grokdeployment_namespace }}/{{ $labels.grokdeployment }}: the autoscaler holds its "
         "replicas ({{ $labels.reason }})",
         "AutoscalingActive has been False for 10 minutes because the operator cannot read the metric it "
         "scales on: replicas are held where they are (never scaled on missing data). The reason says which: "
         "PrometheusNotConfigured (the chart's prometheusURL), PrometheusUnreachable/PrometheusError, "
         "MetricMissing (are the server pods scraped, with the serving_grok_dev_deployment label?), "
         "MetricStale (scrapes failing). Look at `kubectl describe grokd` for the message.",
         [AUTOSCALING]),
    Rule("GrokReplicaCrashLooping",
         DEGRADED.replace("}", ', status="True", reason="PodsFailing"}') + " == 1", "5m", "critical",
         "{{ $labels.grokdeployment_namespace }}/{{ $labels.grokdeployment }}: server pods failing",
         "Degraded=True with reason PodsFailing for 5 minutes: a server pod crash-loops or cannot pull its "
         "image. Look at `kubectl describe grokd`, which names the pod and the kubelet's reason; "
         "`kubectl logs POD --previous` shows the crash (out of GPU memory, a bad engine argument, weights "
         "that do not load).",
         [DEGRADED]),
    Rule("GrokOperatorNoLeader", f"({LEADERS} or vector(0)) < 1", "5m", "critical",
         "No grok-operator replica leads",
         "No operator replica has held the leader Lease for 5 minutes (or none is scraped): GrokDeployments "
         "are neither reconciled nor autoscaled. Look at the operator pods (`kubectl get pods -n <chart "
         "namespace>`), their logs, and the Lease (`kubectl get lease -n <chart namespace>`); make sure "
         "Prometheus scrapes the operator's metrics Service (chart value metrics.serviceMonitor.enabled).",
         [LEADERS]),
]


def rules() -> dict:
    return {"groups": [{"name": "grok-serve", "rules": [
        {"alert": r.alert, "expr": r.expr, "for": r.for_, "labels": {"severity": r.severity},
         "annotations": {"summary": r.summary, "description": r.description}} for r in RULES]}]}


def rule(alert: str) -> Rule:
    return next(r for r in RULES if r.alert == alert)


def shortened(alert: str, for_: str = "3s") -> dict:
    """A rules file with one of the rules, its `for` shortened and labelled so: the demo sees it fire in
    seconds where the shipped rule would wait minutes (pending meanwhile)."""
    r = rule(alert)
    return {"groups": [{"name": "grok-serve-proof", "rules": [
        {"alert": r.alert, "expr": r.expr, "for": for_,
         "labels": {"severity": r.severity, "proof": f"the shipped rule with for: {for_}"},
         "annotations": {"summary": r.summary, "description": r.description}}]}]}


def rendered() -> dict[Path, str]:
    header = ("# Generated by hack/observability.py (edit that, then run it); promtool check rules passes.\n"
              "# Prometheus alert rules for grok-serve; the chart wraps them in a PrometheusRule "
              "(alerts.prometheusRule.enabled).\n")
    return {
        DASHBOARD_PATH: json.dumps(dashboard(), indent=2) + "\n",
        RULES_PATH: header + yaml.safe_dump(rules(), sort_keys=False, width=10_000),
    }


# -- checking queries against a real Prometheus -----------------------------------------------------------

METRIC = re.compile(r"\b(grok_[a-z_]+)\b")


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def fill(expr: str, namespace: str, deployment: str, window: str) -> str:
    return expr.replace("$namespace", namespace).replace("$deployment", deployment).replace(W, window)


def panel_queries() -> list[tuple[str, str]]:
    """(where, PromQL with variables) of every panel target and variable of the dashboard."""
    found = []
    for row, panels in ROWS:
        for p in panels:
            found += [(f"{row} / {p.title} / {legend}", expr) for expr, legend in p.targets]
    for name, _, query in VARIABLES:
        selector = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        assert selector, query
        found.append((f"variable ${name}", selector[1]))
    return found


@dataclass
class QueryCheck:
    where: str
    query: str
    series: int
    error: str = ""
    values: list[float] = field(default_factory=list)


def instant(prometheus_url: str, query: str) -> tuple[list[dict], str]:
    address = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(address, timeout=30) as answer:
            return json.load(answer)["data"]["result"], ""
    except urllib.error.HTTPError as err:  # 400: the query does not parse
        return [], f"{err.code}: {json.load(err).get('error')}"


def check_queries(
    prometheus_url: str, namespace: str, deployment: str, window: str = "2m"
) -> list[QueryCheck]:
    """Every panel target and variable (filled in), and every part of every alert rule, evaluated now."""
    checks = []
    parts = [(f"rule {r.alert} / part {i + 1}", q) for r in RULES for i, q in enumerate(r.parts)]
    queries = panel_queries() + parts
    for where, query in queries:
        filled = fill(query, namespace, deployment, window)
        result, error = instant(prometheus_url, filled)
        values = [float(s["value"][1]) for s in result]
        checks.append(QueryCheck(where, filled, len(result), error, values))
    return checks


def check_rule_expressions(prometheus_url: str) -> list[QueryCheck]:
    """Every alert rule's whole expression, evaluated now: it must evaluate (an error, e.g. many-to-many
    matching, fails), while no series is what a silent alert answers."""
    checks = []
    for r in RULES:
        result, error = instant(prometheus_url, r.expr)
        checks.append(QueryCheck(f"rule {r.alert}", r.expr, len(result), error,
                                 [float(s["value"][1]) for s in result]))
    return checks


def get(prometheus_url: str, path: str) -> dict:
    """An API answer, its error answers (4xx, 5xx with a JSON body) included."""
    try:
        with urllib.request.urlopen(f"{prometheus_url}{path}", timeout=30) as answer:
            return dict(json.load(answer))
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return dict(json.loads(body))
        except ValueError:  # a proxy's or a crashed server's page: still an error answer, not a crash here
            return {"status": "error", "errorType": f"HTTP {err.code}",
                    "error": body[:200].decode(errors="replace")}


def rule_problems(answer: dict) -> list[str]:
    """What is wrong with the rules as Prometheus evaluates them (its /api/v1/rules answer): a shipped rule
    not loaded, or any loaded rule not yet evaluated, or whose last evaluation failed (health "err",
    lastError).
    Prometheus loads a rule that parses, then fails it at every evaluation when it cannot be computed
    (many-to-many matching, a timeout): the alert would never fire."""
    if answer.get("status") != "success":
        return [f"/api/v1/rules: {answer.get('errorType')}: {answer.get('error')}"]
    problems = []
    loaded = set()
    for group in answer["data"]["groups"]:
        for r in group["rules"]:
            loaded.add(r["name"])
            where = f"{group['file']}: {r['name']}"
            if r.get("health") == "unknown":
                problems.append(f"{where}: not evaluated yet")
            elif r.get("health") != "ok" or r.get("lastError"):
                problems.append(f"{where}: health {r.get('health')}: {r.get('lastError') or '-'}")
    problems += [f"{r.alert}: not loaded" for r in RULES if r.alert not in loaded]
    return problems


def not_silent(alerts: list[dict], may_pend: Collection[str] = ()) -> list[str]:
    """The alerts that are not silent: firing, or pending (their expression holds and only `for` keeps them
    from firing), but for those in `may_pend` pending (a condition the workload is known to hold)."""
    return sorted({f"{a['labels']['alertname']} ({a['state']})" for a in alerts
                   if a["state"] == "firing"
                   or (a["state"] == "pending" and a["labels"]["alertname"] not in may_pend)})


def series_names(prometheus_url: str) -> set[str]:
    """The metric names of every series Prometheus holds."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/label/__name__/values", timeout=30) as answer:
        return set(json.load(answer)["data"])


def scraped_names(prometheus_url: str) -> set[str]:
    """Every metric name the scraped targets expose: the series Prometheus holds, and the metric families in
    their scrapes' metadata (# HELP/# TYPE), which include labelled counters that nothing has counted yet
    (no series until something is refused, retried or fails), with the sample names of their types."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/metadata", timeout=30) as answer:
        metadata = json.load(answer)["data"]
    names = series_names(prometheus_url)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count")}
    for family, entries in metadata.items():
        names.add(family)
        for entry in entries:
            names |= {family.removesuffix("_total") + s for s in suffixes.get(entry["type"], ())}
    return names


def every_metric_named() -> set[str]:
    names = set()
    for _, query in panel_queries():
        names |= metric_names(query)
    for r in RULES:
        names |= metric_names(r.expr)
    return names


def alerts(prometheus_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/alerts", timeout=30) as answer:
        return list(json.load(answer)["data"]["alerts"])


def summary(checks: list[QueryCheck]) -> str:
    empty = [c for c in checks if not c.series or c.error]
    numbers = sum(1 for c in checks if any(not math.isnan(v) for v in c.values))
    return (f"{len(checks) - len(empty)} of {len(checks)} queries returned series ({numbers} with a number, "
            f"the rest NaN: a quantile of no requests in the window)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run .venv/bin/python hack/observability.py): "
              + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
