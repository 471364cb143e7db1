"""kopf handlers, registered by importing this module: GrokDeployments and their children are watched and
reconciled on change (control/grokdeployments.py, control/children.py), autoscaled by a loop each
(control/autoscaling.py), from in-memory indexes (control/indexes.py)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from grok_operator.control import autoscaling, children, grokdeployments, indexes  # noqa: F401 (registers)
from grok_operator.control.state import kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf's own chatter stays out of the resources' Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    # Leader election is ours (a Lease, see leader.py); kopf's peering would freeze equal-priority replicas.
    settings.peering.standalone = True
    kube()


