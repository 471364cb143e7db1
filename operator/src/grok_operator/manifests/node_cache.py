"""The node's copy of the model (spec.model.nodeCache) in a server pod: the hostPath folder, grok-server's
flags, and the preference for nodes that already hold the model (pure).

The operator labels a node `<NODE_LABEL_PREFIX>/<namespace and model key, hashed>: "true"` when a Ready
replica there reports that it loaded the node's copy (its start-up report; the servers have no API access).
Replicas PREFER such nodes,
they do not require them: no node holds the model before the first replica copies it, a required affinity
would keep every new model (and every scale-up past the labelled nodes) Pending, and a miss costs one copy
from the shared cache, never a failure. A label can outlive the copy (evicted to make room for another model);
the cost is again one copy. (OME's agent fills nodes ahead of the pods, so its required affinity can hold;
ours fills them with the pods.)
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.api.spec import NODE_CACHE_PATH, quantity_bytes
from grok_operator.plan.planner import Plan

NODE_LABEL_PREFIX = "models.grok.dev"
NODE_CACHE_MOUNT = NODE_CACHE_PATH  # where the server sees the node's folder, whatever its path on the node
PREFERENCE_WEIGHT = 100


def node_cache_on(spec: GrokDeploymentSpec, plan: Plan) -> bool:
    """Single-node replicas only: a multi-node group's workers load from the shared cache (each node would
    need its own copy before the group can start; not done yet)."""
    return spec.model_spec.node_cache.enabled and not plan.multi_node


def node_label(spec: GrokDeploymentSpec) -> str:
    """The label of nodes holding this model, revision and format (the model cache's key) of this namespace:
    nodes are cluster-wide, and the same uri in another namespace is another claim or another fetch, so
    another copy on the node."""
    key = hashlib.sha256(f"{spec.namespace}/{spec.model.cache_key}".encode()).hexdigest()[:16]
    return f"{NODE_LABEL_PREFIX}/{key}"


def node_cache_volume(spec: GrokDeploymentSpec) -> dict[str, Any]:
    return {"name": "node-cache",
            "hostPath": {"path": spec.model_spec.node_cache.path, "type": "DirectoryOrCreate"}}


def node_cache_mount() -> dict[str, Any]:
    return {"name": "node-cache", "mountPath": NODE_CACHE_MOUNT}


def node_cache_args(spec: GrokDeploymentSpec) -> list[str]:
    cache = spec.model_spec.node_cache
    args = ["--node-cache-dir", NODE_CACHE_MOUNT]
    if cache.max_size:
        args += ["--node-cache-max-bytes", str(quantity_bytes(cache.max_size))]
    if cache.verify != "full":
        args += ["--node-cache-verify", cache.verify]
    return args


def load_format_args(spec: GrokDeploymentSpec) -> list[str]:
    fmt = spec.model_spec.load_format
    return [] if fmt == "auto" else ["--engine-arg", f"load_format={fmt}"]


def with_model_preference(spec: GrokDeploymentSpec, affinity: dict[str, Any]) -> dict[str, Any]:
    """The pod's affinity (the user's, kept whole) plus a preference for nodes holding the model."""
    merged = copy.deepcopy(affinity)
    preferred = merged.setdefault("nodeAffinity", {}).setdefault(
        "preferredDuringSchedulingIgnoredDuringExecution", [])
    preferred.append({"weight": PREFERENCE_WEIGHT, "preference": {"matchExpressions": [
        {"key": node_label(spec), "operator": "In", "values": ["true"]}]}})
    return merged
