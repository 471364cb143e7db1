"""A replica's server pod: arguments for grok-server, resources, probes, volumes; the Deployment of
single-node replicas.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

import copy
import math
from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec, gpu_resource
from grok_operator.api.spec import COMPILE_CACHE_PATH
from grok_operator.manifests.front_door import (
    UPSTREAM_TOKEN_FILE,
    UPSTREAM_TOKEN_MOUNT,
    front_door_closed,
    upstream_token_volume,
)
from grok_operator.manifests.meta import POD_SECURITY, labels, metadata
from grok_operator.manifests.model_cache import MODEL_MOUNT, model_path, model_volume
from grok_operator.manifests.node_cache import (
    load_format_args,
    node_cache_args,
    node_cache_mount,
    node_cache_on,
    node_cache_volume,
    with_model_preference,
)
from grok_operator.plan.planner import Plan

# Ready is seen at the first probe after the server turns SERVING: a 10 s period cost a start 5 s on average
# (bench/scale_from_zero.py read 20.0 s of model load for a server Ready in 14). A GET of /readyz is cheap.
STARTUP_PROBE_PERIOD = 2
READINESS_PROBE_PERIOD = 2

MAX_CONNECTION_AGE_GRACE_SECONDS = 3600


# The writable folders of a server container whose root filesystem is read-only.
WRITABLE_MOUNTS = (
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "home-cache", "mountPath": "/home/grok/.cache"},
    {"name": "home-config", "mountPath": "/home/grok/.config"},
)


def compile_cache_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """spec.server.compileCache as the pod's volume: a node's folder (the default), a claim (ReadWriteMany:
    one cache per cluster) or an emptyDir (a cache per pod, so in effect none)."""
    return {"name": "compile-cache", **copy.deepcopy(spec.server.compile_cache)}


def server_args(spec: GrokDeploymentSpec, plan: Plan) -> list[str]:
    s = spec.server
    args = [
        "--model",
        model_path(spec),
        "--served-model-name",
        spec.name,
        "--tensor-parallel-size",
        str(plan.tensor_parallel_size),
        "--max-model-len",
        str(spec.max_model_len),
        # The pod's own address (downward API): what a Service, Prometheus and probes reach, and never
        # every interface of a host shared with other pods (the simulated cluster's nodes are such hosts).
        "--host",
        "$(POD_IP)",
        "--port",
        str(s.grpc_port),
        "--metrics-host",
        "$(POD_IP)",
        "--metrics-port",
        str(s.metrics_port),
        "--max-concurrent-requests",
        str(s.max_concurrent_requests),
        "--gpu-memory-utilization",
        str(s.gpu_memory_utilization),
        "--drain-grace-seconds",
        str(s.drain_seconds),
        # Clients that bypass the router (headless Service, dns:/// round_robin) reconnect now and then and
        # so find replicas added since; a connection's calls finish first (the grace outlasts generations).
        "--max-connection-age-seconds",
        str(s.max_connection_age_seconds),
        "--max-connection-age-grace-seconds",
        str(MAX_CONNECTION_AGE_GRACE_SECONDS),
        # vLLM's compile caches, on the spec.server.compileCache volume (a folder not writable: the server
        # starts without the cache and says why).
        "--compile-cache-dir",
        COMPILE_CACHE_PATH,
    ]
    if front_door_closed(spec):  # only the router, which holds this credential, may call
        args += ["--auth-token-file", UPSTREAM_TOKEN_FILE]
    if node_cache_on(spec, plan):  # the node's copy of the model, made once per node and loaded from there
        args += node_cache_args(spec)
    args += load_format_args(spec)
    if spec.quantization != "none":
        args += ["--quantization", spec.quantization]
    if spec.dtype != "auto":
        args += ["--dtype", spec.dtype]
    return args + list(s.engine_args)


def server_resources(spec: GrokDeploymentSpec, plan: Plan) -> dict[str, Any]:
    tp = plan.tensor_parallel_size
    gpu = gpu_resource(spec)
    # Host memory: safetensors are memory-mapped while loading; give each rank room for its shard.
    memory_gib = max(16, math.ceil(plan.weight_gib_per_gpu * tp * 0.25) + 8 * tp)
    default = {
        "requests": {"cpu": str(4 * tp), "memory": f"{memory_gib}Gi", gpu: str(tp)},
        "limits": {gpu: str(tp)},
    }
    user = spec.server.resources
    merged = {k: {**default.get(k, {}), **(user.get(k) or {})} for k in ("requests", "limits")}
    # The GPU count is the plan's, whatever else the user sets.
    merged["requests"][gpu] = merged["limits"][gpu] = str(tp)
    return merged


def http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def server_pod_template(spec: GrokDeploymentSpec, plan: Plan, scrape_annotations: bool = True,
                        args: list[str] | None = None) -> dict[str, Any]:
    """The server pod (one replica's, or a multi-node group's leader): the planned GPUs, probes, drain."""
    s = spec.server
    grpc_port, metrics_port = s.grpc_port, s.metrics_port
    tp = plan.tensor_parallel_size
    drain = s.drain_seconds
    startup_timeout = s.startup_timeout_seconds
    pod_labels = labels(spec)
    annotations = {}
    if scrape_annotations:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics_port),
            "prometheus.io/path": "/metrics",
        }
    node_selector = {
        f"{gpu_resource(spec).split('/')[0]}/gpu.product": spec.gpu_product_name,
        **s.node_selector,
    }
    tolerations = [
        {"key": gpu_resource(spec), "operator": "Exists", "effect": "NoSchedule"},
        *s.tolerations,
    ]
    pod_spec: dict[str, Any] = {
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        # Replicas on different nodes: a node failure takes out one replica, not all.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": spec.selector_labels},
            }
        ],
        # Drain (health NOT_SERVING, in-flight requests finish) needs the grace period, plus a margin.
        "terminationGracePeriodSeconds": drain + 15,
        "containers": [
            {
                "name": "server",
                "image": s.image,
                "imagePullPolicy": s.image_pull_policy,
                "args": args if args is not None else server_args(spec, plan),
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    # Across nodes, vLLM's ranks announce this address to the others (not a guess).
                    *([{"name": "VLLM_HOST_IP", "value": "$(POD_IP)"}] if plan.multi_node else []),
                    *s.env,
                ],
                "ports": [
                    {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
                ],
                "resources": server_resources(spec, plan),
                # On the plain-HTTP metrics port, so probes work with TLS on the gRPC port too: /readyz is
                # 200 only while serving (not loading, not draining), /healthz unless the engine failed.
                "startupProbe": http_probe(
                    "/readyz", STARTUP_PROBE_PERIOD, max(1, startup_timeout // STARTUP_PROBE_PERIOD)
                ),
                "readinessProbe": http_probe("/readyz", READINESS_PROBE_PERIOD, 3),
                "livenessProbe": http_probe("/healthz", 10, 6),
                # A read-only image: what the server writes goes to the volumes below (the image's HOME holds
                # vLLM's, Triton's and Hugging Face's caches and vLLM's config folder).
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True},
                "volumeMounts": [
                    {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "compile-cache", "mountPath": COMPILE_CACHE_PATH},
                    *WRITABLE_MOUNTS,
                    *([UPSTREAM_TOKEN_MOUNT] if front_door_closed(spec) else []),
                    *([node_cache_mount()] if node_cache_on(spec, plan) else []),
                ],
            }
        ],
        "securityContext": dict(POD_SECURITY),
        "volumes": [
            model_volume(spec),
            # Tensor-parallel ranks exchange activations through shared memory.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(2, 4 * tp)}Gi"}},
            compile_cache_volume(spec),
            *({"name": m["name"], "emptyDir": {}} for m in WRITABLE_MOUNTS),
            *([upstream_token_volume(spec)] if front_door_closed(spec) else []),
            *([node_cache_volume(spec)] if node_cache_on(spec, plan) else []),
        ],
        # The servers never call the Kubernetes API: no token in their pods.
        "automountServiceAccountToken": False,
    }
    affinity = with_model_preference(spec, s.affinity) if node_cache_on(spec, plan) else s.affinity
    for key, value in (("affinity", affinity), ("priorityClassName", s.priority_class_name),
                       ("serviceAccountName", s.service_account_name)):
        if value:
            pod_spec[key] = value
    return {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec}


def deployment(spec: GrokDeploymentSpec, plan: Plan, scrape_annotations: bool = True) -> dict[str, Any]:
    startup_timeout = spec.server.startup_timeout_seconds
    rollout = spec.rollout
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": spec.selector_labels},
            # Never below serving capacity: a new replica must be Ready before an old one goes.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": rollout.max_surge,
                    "maxUnavailable": rollout.max_unavailable,
                },
            },
            "progressDeadlineSeconds": startup_timeout + 600,
            "revisionHistoryLimit": 3,
            "template": server_pod_template(spec, plan, scrape_annotations),
        },
    }
