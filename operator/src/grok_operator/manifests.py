"""Children of a GrokDeployment, as manifests (pure functions of the spec and its plan).

Everything here is applied with server-side apply, so each builder states the whole desired object
and nothing else: fields it leaves out are not fought over.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from grok_operator.api.spec import COMPILE_CACHE_PATH
from grok_operator.planner import Plan, weight_bytes
from grok_operator.resource import (
    API_VERSION,
    INSTANCE_LABEL,
    KIND,
    MANAGED_BY,
    MODEL_LABEL,
    GrokDeploymentSpec,
    gpu_resource,
)

MODEL_MOUNT = "/models"
# The images run as this non-root user; fsGroup lets it write the model cache volume.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Ready is seen at the first probe after the server turns SERVING: a 10 s period cost a start 5 s on average
# (bench/scale_from_zero.py read 20.0 s of model load for a server Ready in 14). A GET of /readyz is cheap.
STARTUP_PROBE_PERIOD = 2
READINESS_PROBE_PERIOD = 2
MAX_CONNECTION_AGE_GRACE_SECONDS = 3600
ROUTER_GRPC_PORT = 50051


def labels(spec: GrokDeploymentSpec, component: str = "server") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "grok-server" if component == "server" else f"grok-{component}",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "grok-serve",
        INSTANCE_LABEL: spec.name,
    }


def owner_reference(spec: GrokDeploymentSpec, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _metadata(spec: GrokDeploymentSpec, name: str, component: str = "server") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels(spec, component),
        "ownerReferences": [owner_reference(spec)],
    }


def cache_claim_name(spec: GrokDeploymentSpec) -> str:
    return f"grok-model-{spec.model.cache_key}"


def fetch_job_name(spec: GrokDeploymentSpec) -> str:
    return f"grok-fetch-{spec.model.cache_key}"


def model_path(spec: GrokDeploymentSpec) -> str:
    if spec.model.scheme == "pvc":
        return f"{MODEL_MOUNT}/{spec.model.path}".rstrip("/")
    return f"{MODEL_MOUNT}/model"  # where grok-fetch leaves a loadable checkpoint in the cache volume


def _model_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
    claim = spec.model.location if spec.model.scheme == "pvc" else cache_claim_name(spec)
    return {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def _compile_cache_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
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
    if spec.quantization != "none":
        args += ["--quantization", spec.quantization]
    if spec.dtype != "auto":
        args += ["--dtype", spec.dtype]
    return args + list(s.engine_args)


def _resources(spec: GrokDeploymentSpec, plan: Plan) -> dict[str, Any]:
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


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
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
                "resources": _resources(spec, plan),
                # On the plain-HTTP metrics port, so probes work with TLS on the gRPC port too: /readyz is
                # 200 only while serving (not loading, not draining), /healthz unless the engine failed.
                "startupProbe": _http_probe(
                    "/readyz", STARTUP_PROBE_PERIOD, max(1, startup_timeout // STARTUP_PROBE_PERIOD)
                ),
                "readinessProbe": _http_probe("/readyz", READINESS_PROBE_PERIOD, 3),
                "livenessProbe": _http_probe("/healthz", 10, 6),
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                    {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "compile-cache", "mountPath": COMPILE_CACHE_PATH},
                ],
            }
        ],
        "securityContext": dict(POD_SECURITY),
        "volumes": [
            _model_volume(spec),
            # Tensor-parallel ranks exchange activations through shared memory.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(2, 4 * tp)}Gi"}},
            _compile_cache_volume(spec),
        ],
    }
    for key, value in (("affinity", s.affinity), ("priorityClassName", s.priority_class_name),
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
        "metadata": _metadata(spec, spec.name),
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


# -- multi-node replicas: one LeaderWorkerSet group per replica -------------------------------------------

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
MASTER_PORT = 29501  # vLLM's rendezvous on the leader (torch.distributed TCP store)
WORKER_NAME = "grok-server-worker"


def _group_flags(plan: Plan, node_rank: str) -> list[str]:
    return [
        "--pipeline-parallel-size", str(plan.pipeline_parallel_size),
        "--nnodes", str(plan.nodes_per_replica),
        "--node-rank", node_rank,
        # LeaderWorkerSet's webhook gives every pod of a group the leader's address and its own index.
        "--master-addr", "$(LWS_LEADER_ADDRESS)",
        "--master-port", str(MASTER_PORT),
    ]


def leader_args(spec: GrokDeploymentSpec, plan: Plan) -> list[str]:
    """The group's leader: grok-server as node rank 0 (gRPC, metrics, probes), the first pipeline stage."""
    base = server_args(spec, plan)
    extra = list(spec.server.engine_args)
    own = base[: len(base) - len(extra)] if extra else base
    return own + _group_flags(plan, "0") + extra


# grok-server-worker's engine flags (it refuses serving ones): the part of engineArgs workers share, as every
# rank must build the same engine. (--model and the parallel sizes come from the plan, for all of them.)
WORKER_VALUE_FLAGS = frozenset({"--tokenizer", "--kv-cache-memory-bytes", "--gpu-memory-utilization",
                                "--max-num-seqs", "--engine-arg", "--served-model-name", "--dtype",
                                "--max-model-len", "--quantization", "--compile-cache-dir",
                                "--engine-worker"})
WORKER_SWITCHES = frozenset({"--enforce-eager"})


def engine_flags(args: list[str]) -> list[str]:
    """The engine flags among grok-server arguments (each with its value), for the workers."""
    kept: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        name = flag.split("=", 1)[0]
        takes_value = "=" not in flag and i + 1 < len(args) and not args[i + 1].startswith("--")
        if name in WORKER_SWITCHES or (name in WORKER_VALUE_FLAGS and "=" in flag):
            kept.append(flag)
        elif name in WORKER_VALUE_FLAGS and takes_value:
            kept += [flag, args[i + 1]]
        i += 2 if takes_value and name not in WORKER_SWITCHES else 1
    return kept


def worker_args(spec: GrokDeploymentSpec, plan: Plan) -> list[str]:
    """A worker: the engine's ranks of one node, headless (no API), joining the leader's rendezvous; the
    same engine flags as the leader (the serving ones are the leader's alone)."""
    args = ["--model", model_path(spec), "--tensor-parallel-size", str(plan.tensor_parallel_size),
            "--max-model-len", str(spec.max_model_len),
            "--gpu-memory-utilization", str(spec.server.gpu_memory_utilization),
            "--compile-cache-dir", COMPILE_CACHE_PATH]  # the same volume as the leader's (the pod template's)
    if spec.quantization != "none":
        args += ["--quantization", spec.quantization]
    if spec.dtype != "auto":
        args += ["--dtype", spec.dtype]
    startup = spec.server.startup_timeout_seconds
    return (args + _group_flags(plan, "$(LWS_WORKER_INDEX)") + ["--leader-wait-seconds", str(startup)]
            + engine_flags(list(spec.server.engine_args)))


def _worker_template(spec: GrokDeploymentSpec, plan: Plan) -> dict[str, Any]:
    template = copy.deepcopy(server_pod_template(spec, plan, scrape_annotations=False))
    template["metadata"]["labels"]["app.kubernetes.io/name"] = WORKER_NAME  # not selected by the Services
    container = template["spec"]["containers"][0]
    container["name"] = "worker"
    container["command"] = [WORKER_NAME]
    container["args"] = worker_args(spec, plan)
    for key in ("ports", "startupProbe", "readinessProbe", "livenessProbe"):
        container.pop(key, None)  # the leader speaks for the group: API, metrics and probes are its
    # (The worker waits for the leader's rendezvous itself, up to --leader-wait-seconds: no init container.)
    return template


def leader_worker_set_name(spec: GrokDeploymentSpec) -> str:
    """Not the GrokDeployment's name: LWS makes a headless Service named like the LeaderWorkerSet for its
    pods' DNS (LWS_LEADER_ADDRESS), and `<name>` is the router's Service."""
    return f"{spec.name}-group"


def leader_worker_set(spec: GrokDeploymentSpec, plan: Plan,
                      scrape_annotations: bool = True) -> dict[str, Any]:
    """A replica that spans nodes: a LeaderWorkerSet group of `nodes_per_replica` pods (the leader is node
    rank 0 and serves; the workers are the other stages), failing and restarting as a whole, replaced
    group by group on rollouts."""
    meta = _metadata(spec, leader_worker_set_name(spec))
    topology = spec.parallelism.topology_key
    if topology:
        meta["annotations"] = {"leaderworkerset.sigs.k8s.io/exclusive-topology": topology}
    rollout = spec.rollout
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {
                    "maxSurge": rollout.max_surge,
                    "maxUnavailable": rollout.max_unavailable,
                },
            },
            "leaderWorkerTemplate": {
                "size": plan.nodes_per_replica,
                # A group whose pod fails is recreated whole (vLLM cannot re-admit one rank), but not while
                # it is still starting: a slow first load must not loop the group.
                "restartPolicy": "RecreateGroupAfterStart",
                "leaderTemplate": server_pod_template(spec, plan, scrape_annotations,
                                                      leader_args(spec, plan)),
                "workerTemplate": _worker_template(spec, plan),
            },
        },
    }


def _grpc_service_port(port: int) -> dict[str, Any]:
    return {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c"}


def service(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """The GrokDeployment's address (status.endpoint): its router, or its servers when the router is off."""
    if not spec.router_enabled:
        return _server_service(spec, spec.name, headless=False)
    http_port = spec.router.http_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name, "router"),
        "spec": {
            "selector": spec.router_selector_labels,
            "ports": [
                _grpc_service_port(spec.server.grpc_port),
                {"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP",
                 "appProtocol": "http"},
            ],
        },
    }


def servers_service_name(spec: GrokDeploymentSpec) -> str:
    return f"{spec.name}-servers"


def servers_service(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """Headless: DNS answers with every Ready server pod, for clients that balance calls themselves
    (`dns:///<name>-servers.<namespace>.svc:50051` with round_robin) and bypass the router."""
    return _server_service(spec, servers_service_name(spec), headless=True)


def _server_service(spec: GrokDeploymentSpec, name: str, headless: bool) -> dict[str, Any]:
    s = spec.server
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, name),
        "spec": {
            "selector": spec.selector_labels,
            "ports": [
                _grpc_service_port(s.grpc_port),
                {
                    "name": "metrics",
                    "port": s.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }
    if headless:
        body["spec"]["clusterIP"] = "None"
    return body


def router_name(spec: GrokDeploymentSpec) -> str:
    return f"{spec.name}-router"


def router_service_account(spec: GrokDeploymentSpec) -> dict[str, Any]:
    meta = _metadata(spec, router_name(spec), "router")
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def router_role(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """The router watches its servers' pods (Ready, deleted) in its namespace: read-only, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(spec, router_name(spec), "router"),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def router_role_binding(spec: GrokDeploymentSpec) -> dict[str, Any]:
    name = router_name(spec)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(spec, name, "router"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}],
    }


def router_args(spec: GrokDeploymentSpec) -> list[str]:
    r = spec.router
    return [
        "--host", "$(POD_IP)",
        "--port", str(spec.server.grpc_port),
        "--http-port", str(r.http_port),
        "--model-name", spec.name,  # the servers' --served-model-name
        "--namespace", spec.namespace,
        "--selector", spec.selector,
        "--prefix-blocks", str(r.prefix_blocks),
        "--balance", str(r.balance),
        "--max-attempts", str(r.max_attempts),
        "--hold-timeout-seconds", str(r.hold_timeout_seconds),
        "--max-held", str(r.max_held_requests),
        # Calls in flight through a router that stops go on for as long as the servers would let them.
        "--drain-grace-seconds", str(spec.server.drain_seconds),
    ]


def router_deployment(spec: GrokDeploymentSpec) -> dict[str, Any]:
    r = spec.router
    grpc_port, http_port = spec.server.grpc_port, r.http_port
    name = router_name(spec)
    pod_labels = {**labels(spec, "router"), **spec.router_selector_labels}
    drain = spec.server.drain_seconds
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2,
             "timeoutSeconds": 5}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "terminationGracePeriodSeconds": drain + 15,
        "containers": [{
            "name": "router",
            "image": r.image,
            "imagePullPolicy": r.image_pull_policy,
            "args": router_args(spec),
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [
                {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
                {"name": "http", "containerPort": http_port, "protocol": "TCP"},
            ],
            "resources": r.resources or {"requests": {"cpu": "500m", "memory": "256Mi"},
                                                "limits": {"memory": "1Gi"}},
            "readinessProbe": probe,
            "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10,
                              "failureThreshold": 6},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
        }],
        "securityContext": dict(POD_SECURITY),
        # Router replicas on different nodes: losing a node must not take the front door with it.
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": spec.router_selector_labels},
        }],
    }
    for key, value in (("nodeSelector", r.node_selector), ("tolerations", r.tolerations)):
        if value:
            pod_spec[key] = value
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, name, "router"),
        "spec": {
            "replicas": r.replicas,
            "selector": {"matchLabels": spec.router_selector_labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(http_port),
                    "prometheus.io/path": "/metrics"}},
                "spec": pod_spec,
            },
        },
    }


def router_children(spec: GrokDeploymentSpec) -> list[dict[str, Any]]:
    if not spec.router_enabled:
        return []
    return [router_service_account(spec), router_role(spec), router_role_binding(spec),
            router_deployment(spec)]


def pod_disruption_budget(spec: GrokDeploymentSpec) -> dict[str, Any]:
    # Voluntary disruptions (node drains) take at most one replica at a time.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": spec.selector_labels},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def service_monitor(spec: GrokDeploymentSpec, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = _metadata(spec, spec.name)
    meta["labels"] = {**(extra_labels or {}), **meta["labels"]}  # ours win: selectors depend on them
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {INSTANCE_LABEL: spec.name}},
            # Series carry serving_grok_dev_deployment: the autoscaler's queries select on it.
            "podTargetLabels": [INSTANCE_LABEL],
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def _shared_metadata(spec: GrokDeploymentSpec, name: str, component: str) -> dict[str, Any]:
    """Cache and fetch Job are shared by every GrokDeployment of the same model in the namespace: each
    adds itself as a (non-controller) owner, so they are collected when the last one goes."""
    meta = _metadata(spec, name, component)
    meta["labels"] = {
        k: v for k, v in meta["labels"].items() if k not in (INSTANCE_LABEL, "app.kubernetes.io/instance")
    }
    meta["labels"][MODEL_LABEL] = spec.model.cache_key
    meta["ownerReferences"] = [owner_reference(spec, controller=False)]
    return meta


def cache_size_gib(spec: GrokDeploymentSpec) -> int:
    # Published checkpoints are bf16 (vLLM quantizes to fp8 while loading); xAI's original is int8 shards,
    # converted to bf16 beside them.
    stored = weight_bytes(spec.shape, "none", "auto") / 1024**3
    if spec.model.format == "xai":
        stored += weight_bytes(spec.shape, "int8", "auto") / 1024**3
    return max(1, math.ceil(stored * 1.2))


def model_cache_claim(spec: GrokDeploymentSpec) -> dict[str, Any]:
    cache = spec.model_spec.cache
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _shared_metadata(spec, cache_claim_name(spec), "model-cache"),
        "spec": {
            # ReadWriteMany so replicas on every node mount the one copy (read-only).
            "accessModes": [cache.access_mode],
            "resources": {"requests": {"storage": cache.size or f"{cache_size_gib(spec)}Gi"}},
        },
    }
    if cache.storage_class_name:
        claim["spec"]["storageClassName"] = cache.storage_class_name
    return claim


def fetch_job(spec: GrokDeploymentSpec) -> dict[str, Any]:
    """Downloads the weights once into the cache volume (and converts xAI's ckpt-0 when format is xai)."""
    secret = spec.model_spec.secret_ref.get("name")
    container: dict[str, Any] = {
        "name": "fetch",
        "image": spec.server.image,
        "imagePullPolicy": spec.server.image_pull_policy,
        "command": ["grok-fetch"],
        "args": [
            "--uri",
            spec.model.uri,
            "--revision",
            spec.model.revision,
            "--format",
            spec.model.format,
            "--out",
            MODEL_MOUNT,
        ],
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}],
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
        # grok-fetch's last line says why it failed: kept in the pod's status for the operator's condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _shared_metadata(spec, fetch_job_name(spec), "model-fetch"),
        "spec": {
            "backoffLimit": 4,  # retries resume: grok-fetch skips files already complete
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "grok-model-fetch",
                        "app.kubernetes.io/managed-by": MANAGED_BY,
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": dict(POD_SECURITY),
                    "containers": [container],
                    "volumes": [
                        {"name": "model", "persistentVolumeClaim": {"claimName": cache_claim_name(spec)}}
                    ],
                },
            },
        },
    }
