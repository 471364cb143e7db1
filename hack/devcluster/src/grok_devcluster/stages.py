"""KWOK stages of the simulated cluster (pure): how KWOK plays nodes and the pods the pod runner leaves to it.

Giving kwokctl any Stage replaces all of its default ones, so this is the whole set: nodes turn Ready and keep
a heartbeat; a pod KWOK simulates turns Running and Ready at once (status only, nothing runs), a Job's pod
completes, a deleted pod goes. Every pod stage skips the pods the runner runs (`images.kwok_exclusion_key`),
so the two never write the same pod's status.
"""

from __future__ import annotations

from typing import Any

from grok_devcluster import images

_API = "kwok.x-k8s.io/v1alpha1"

_NODE_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
addresses:
- type: Hostname
  address: localhost
- type: InternalIP
  address: 127.0.0.1
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
phase: Running
"""

_POD_RUNNING = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }},
                 finishedAt: {{ $now | Quote }}}
{{ end }}
hostIP: "127.0.0.1"
hostIPs: [{ip: "127.0.0.1"}]
{{ with PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" )
     ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
podIP: {{ . | Quote }}
podIPs: [{ip: {{ . | Quote }}}]
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""

_POD_SUCCEEDED = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }},
                 finishedAt: {{ $now | Quote }}}
{{ end }}
phase: Succeeded
"""


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


_NOT_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def _stage(name: str, kind: str, expressions: list[dict[str, Any]], nxt: dict[str, Any],
           delay_ms: int = 0, jitter_ms: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": nxt,
    }
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": jitter_ms}
    return {"apiVersion": _API, "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def stages(runner: bool = True) -> list[dict[str, Any]]:
    """Every stage of the cluster; with `runner`, the pod stages leave the runner's pods alone."""
    skip_runner = [_expr(images.kwok_exclusion_key(), "NotIn", "true")] if runner else []
    return [
        _stage("node-ready", "Node", [_expr(_NOT_READY, "NotIn", "True")], {"statusTemplate": _NODE_STATUS}),
        # Leases keep nodes alive; this only refreshes the status now and then, as a kubelet does.
        _stage("node-heartbeat", "Node",
               [_expr(".status.phase", "In", "Running"), _expr(_NOT_READY, "In", "True")],
               {"statusTemplate": _NODE_STATUS}, delay_ms=60_000, jitter_ms=90_000),
        _stage("pod-running", "Pod",
               [_expr(".metadata.deletionTimestamp", "DoesNotExist"), _expr(".status.phase", "In", "Pending"),
                _expr(_NOT_READY, "NotIn", "True"), *skip_runner],
               {"statusTemplate": _POD_RUNNING}),
        _stage("pod-succeeded", "Pod",
               [_expr(".metadata.deletionTimestamp", "DoesNotExist"), _expr(".status.phase", "In", "Running"),
                _expr(".metadata.ownerReferences.[].kind", "In", "Job"), *skip_runner],
               {"statusTemplate": _POD_SUCCEEDED}),
        _stage("pod-deleted", "Pod", [_expr(".metadata.deletionTimestamp", "Exists"), *skip_runner],
               {"delete": True}),
    ]
