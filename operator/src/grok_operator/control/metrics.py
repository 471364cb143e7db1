"""The operator's own Prometheus metrics (served by `grok-operator --metrics-port`)."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("grok_operator_reconciles_total", "Reconciliations, by trigger", ["trigger"])
RECONCILE_ERRORS = Counter(
    "grok_operator_reconcile_errors_total", "Reconciliations that failed, by trigger", ["trigger"]
)
RECONCILE_DURATION = Histogram(
    "grok_operator_reconcile_duration_seconds",
    "Time to reconcile one GrokDeployment",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DRIFT_REPAIRS = Counter(
    "grok_operator_drift_repairs_total", "Children restored after deletion or edit", ["kind"]
)
SCALING_DECISIONS = Counter(
    "grok_operator_scaling_decisions_total", "Autoscaler decisions that changed replicas", ["direction"]
)
LEADER = Gauge("grok_operator_leader", "1 while this replica holds the leader Lease and acts")
