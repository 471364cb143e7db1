"""Every child a GrokDeployment's plan needs, in the order they are applied (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.manifests.front_door import front_door_closed, network_policy
from grok_operator.manifests.group import leader_worker_set
from grok_operator.manifests.router import router_children
from grok_operator.manifests.server import deployment
from grok_operator.manifests.services import pod_disruption_budget, servers_service, service, service_monitor
from grok_operator.plan.planner import Plan


def desired_children(
    spec: GrokDeploymentSpec, the_plan: Plan, monitor_labels: dict[str, str] | None,
    metrics_from: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """`monitor_labels`: None where the ServiceMonitor CRD is missing (the pods get scrape annotations
    instead), else the extra labels the ServiceMonitor needs for Prometheus to select it. `metrics_from`:
    who may scrape the servers where the front door is closed (NetworkPolicy peers; empty: anyone)."""
    workload = leader_worker_set if the_plan.multi_node else deployment
    children = [
        workload(spec, the_plan, scrape_annotations=monitor_labels is None),
        service(spec),
        servers_service(spec),
        pod_disruption_budget(spec),
        *router_children(spec),
    ]
    if monitor_labels is not None:
        children.append(service_monitor(spec, monitor_labels))
    if front_door_closed(spec):
        children.append(network_policy(spec, list(metrics_from)))
    return children
