"""Multi-node replicas: one LeaderWorkerSet group per replica (the leader serves; the workers are the other
pipeline stages), failing and restarting as a whole.

Pure functions of the spec and its plan; applied with server-side apply, so each states the whole desired
object and nothing else."""

from __future__ import annotations

import copy
from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.api.spec import COMPILE_CACHE_PATH
from grok_operator.manifests.meta import metadata
from grok_operator.manifests.model_cache import model_path
from grok_operator.manifests.server import server_args, server_pod_template
from grok_operator.plan.planner import Plan

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"

MASTER_PORT = 29501  # vLLM's rendezvous on the leader (torch.distributed TCP store)
WORKER_NAME = "grok-server-worker"


def group_flags(plan: Plan, node_rank: str) -> list[str]:
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
    return own + group_flags(plan, "0") + extra

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
    return (args + group_flags(plan, "$(LWS_WORKER_INDEX)") + ["--leader-wait-seconds", str(startup)]
            + engine_flags(list(spec.server.engine_args)))


def worker_template(spec: GrokDeploymentSpec, plan: Plan) -> dict[str, Any]:
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
    meta = metadata(spec, leader_worker_set_name(spec))
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
                "workerTemplate": worker_template(spec, plan),
            },
        },
    }
