"""The GrokDeployment's spec, typed: one frozen dataclass per block of the CRD, each default written once.

The CRD (charts/grok-operator/crds/) fills the same defaults in the API server, so what the operator reads is
normally complete; these defaults serve what the API server did not fill (an object stored before a field
existed, a unit test's body). tests/operator/test_api.py checks both sides field by field: every CRD default
equals the field's here, and every CRD property has a field (and the other way round).

`parse(Block, data, "spec.block")` reads a block; a value of the wrong type raises ValueError naming it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, TypeVar

Block = TypeVar("Block")
_MISSING: Any = dataclasses.MISSING


def _field(json_name: str, default: Any = _MISSING, kind: type | str = str, factory: Any = _MISSING) -> Any:
    """A spec field: its name in the resource (camelCase), its default, and the kind of value it takes."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"json": json_name, "kind": kind})


@dataclass(frozen=True)
class ModelCache:
    """spec.model.cache: the volume hf:// and s3:// models are fetched into."""

    storage_class_name: str | None = _field("storageClassName", None)
    size: str | None = _field("size", None)  # None: sized from the weights
    access_mode: str = _field("accessMode", "ReadWriteMany")


# Where a node keeps its copies of models (spec.model.nodeCache): a folder of the node's own disk.
NODE_CACHE_PATH = "/var/cache/grok-serve/models"


@dataclass(frozen=True)
class NodeCache:
    """spec.model.nodeCache: each node's copy of the model, made by the first replica there (from the shared
    cache), loaded by every replica there."""

    enabled: bool = _field("enabled", True, bool)
    path: str = _field("path", NODE_CACHE_PATH, "absolutePath")  # a hostPath: the node's folder for copies
    max_size: str | None = _field("maxSize", None, "quantity")  # None: bounded by the disk's free space
    verify: str = _field("verify", "full", "full|sizes")  # each start checks sizes and sha256, or sizes only


@dataclass(frozen=True)
class ModelSpec:
    uri: str = _field("uri")
    revision: str = _field("revision", "main")
    format: str = _field("format", "hf")
    quantization: str = _field("quantization", "none")
    dtype: str = _field("dtype", "auto")
    max_model_len: int = _field("maxModelLen", 8192, int)
    profile: str = _field("profile", "grok-1")
    shape: dict[str, Any] = _field("shape", kind=dict, factory=dict)
    cache: ModelCache = _field("cache", kind=ModelCache, factory=ModelCache)
    node_cache: NodeCache = _field("nodeCache", kind=NodeCache, factory=NodeCache)
    load_format: str = _field("loadFormat", "auto")  # vLLM's --load-format (grok_common.load_formats)
    secret_ref: dict[str, Any] = _field("secretRef", kind=dict, factory=dict)


@dataclass(frozen=True)
class ParallelismSpec:
    tensor: int | str = _field("tensor", "auto", "int|auto")
    pipeline: int | str = _field("pipeline", "auto", "int|auto")
    max_nodes_per_replica: int = _field("maxNodesPerReplica", 4, int)
    topology_key: str | None = _field("topologyKey", None)


@dataclass(frozen=True)
class GPUSpec:
    product: str = _field("product", "NVIDIA-H100-80GB-HBM3")
    memory_gib: float | None = _field("memoryGiB", None, float)
    per_node: int = _field("perNode", 8, int)


@dataclass(frozen=True)
class AutoscalingSpec:
    max_replicas: int = _field("maxReplicas", kind=int)
    min_replicas: int = _field("minReplicas", 1, int)
    scale_to_zero_after_seconds: float = _field("scaleToZeroAfterSeconds", 900, float)
    metric: str = _field("metric", "waitingRequestsPerReplica")
    target: float = _field("target", 4, float)
    tolerance: float = _field("tolerance", 0.1, float)
    scale_up_stabilization_seconds: float = _field("scaleUpStabilizationSeconds", 30, float)
    scale_down_stabilization_seconds: float = _field("scaleDownStabilizationSeconds", 300, float)
    max_scale_up_step: int = _field("maxScaleUpStep", 2, int)
    max_scale_down_step: int = _field("maxScaleDownStep", 1, int)


# Where vLLM's compile caches live (spec.server.compileCache): shared per node by default, as the artifacts
# depend on the node's GPU product and a node's local disk is the fastest to read them back from.
COMPILE_CACHE_PATH = "/var/cache/grok-serve/compile"
COMPILE_CACHE_SOURCES = ("hostPath", "persistentVolumeClaim", "emptyDir")
DEFAULT_COMPILE_CACHE: dict[str, Any] = {
    "hostPath": {"path": COMPILE_CACHE_PATH, "type": "DirectoryOrCreate"},
}


def _compile_cache_default() -> dict[str, Any]:
    return {"hostPath": dict(DEFAULT_COMPILE_CACHE["hostPath"])}


@dataclass(frozen=True)
class ServerSpec:
    image: str = _field("image", "grok-serve/server:0.1.0")
    image_pull_policy: str = _field("imagePullPolicy", "IfNotPresent")
    grpc_port: int = _field("grpcPort", 50051, int)
    metrics_port: int = _field("metricsPort", 9090, int)
    max_concurrent_requests: int = _field("maxConcurrentRequests", 256, int)
    gpu_memory_utilization: float = _field("gpuMemoryUtilization", 0.9, float)
    min_concurrent_sequences: int = _field("minConcurrentSequences", 4, int)
    startup_timeout_seconds: int = _field("startupTimeoutSeconds", 1800, int)
    drain_seconds: int = _field("drainSeconds", 120, int)
    max_connection_age_seconds: int = _field("maxConnectionAgeSeconds", 300, int)
    engine_args: list[str] = _field("engineArgs", kind=list, factory=list)
    env: list[dict[str, Any]] = _field("env", kind=list, factory=list)
    resources: dict[str, Any] = _field("resources", kind=dict, factory=dict)
    node_selector: dict[str, str] = _field("nodeSelector", kind=dict, factory=dict)
    tolerations: list[dict[str, Any]] = _field("tolerations", kind=list, factory=list)
    affinity: dict[str, Any] = _field("affinity", kind=dict, factory=dict)
    priority_class_name: str | None = _field("priorityClassName", None)
    service_account_name: str | None = _field("serviceAccountName", None)
    compile_cache: dict[str, Any] = _field("compileCache", kind="compileCache",
                                           factory=_compile_cache_default)


@dataclass(frozen=True)
class RouterAuth:
    """spec.router.auth: the Secret of API keys (data key: tenant[.anything]; value: the key)."""

    secret_name: str = _field("secretName")


@dataclass(frozen=True)
class RouterTLS:
    """spec.router.tls: the kubernetes.io/tls Secret (tls.crt, tls.key) the router serves both ports with."""

    secret_name: str = _field("secretName")


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; None: unlimited."""

    requests_per_second: float | None = _field("requestsPerSecond", None, float)
    generated_tokens_per_minute: int | None = _field("generatedTokensPerMinute", None, int)
    concurrent_requests: int | None = _field("concurrentRequests", None, int)


@dataclass(frozen=True)
class RouterLimits:
    """spec.router.limits: a default for every tenant, and tenants by name."""

    default: TenantLimits = _field("default", kind=TenantLimits, factory=TenantLimits)
    tenants: dict[str, TenantLimits] = _field("tenants", kind=(dict, TenantLimits), factory=dict)


@dataclass(frozen=True)
class RouterSpec:
    enabled: bool = _field("enabled", True, bool)
    replicas: int = _field("replicas", 1, int)
    image: str = _field("image", "grok-serve/router:0.1.0")
    image_pull_policy: str = _field("imagePullPolicy", "IfNotPresent")
    http_port: int = _field("httpPort", 8080, int)
    prefix_blocks: int = _field("prefixBlocks", 8, int)
    balance: float = _field("balance", 0.5, float)
    max_attempts: int = _field("maxAttempts", 3, int)
    hold_timeout_seconds: int = _field("holdTimeoutSeconds", 1800, int)
    max_held_requests: int = _field("maxHeldRequests", 1024, int)
    auth: RouterAuth | None = _field("auth", None, RouterAuth)
    limits: RouterLimits | None = _field("limits", None, RouterLimits)
    tls: RouterTLS | None = _field("tls", None, RouterTLS)
    resources: dict[str, Any] = _field("resources", kind=dict, factory=dict)
    node_selector: dict[str, str] = _field("nodeSelector", kind=dict, factory=dict)
    tolerations: list[dict[str, Any]] = _field("tolerations", kind=list, factory=list)

    def __post_init__(self) -> None:
        # The front door's settings act in the router: without it nothing would check keys, enforce limits
        # or serve TLS, and the servers would ask for a token that no one holds.
        given = [name for name in ("auth", "limits", "tls") if getattr(self, name) is not None]
        if given and not self.enabled:
            fields = " and ".join(f"spec.router.{name}" for name in given)
            raise ValueError(f"{fields} need the router, and spec.router.enabled is false: enable the router "
                             "or remove them")


@dataclass(frozen=True)
class RolloutSpec:
    max_surge: int | str = _field("maxSurge", 1, "int|percent")
    max_unavailable: int | str = _field("maxUnavailable", 0, "int|percent")


# The blocks of spec, by their name in the resource (spec.replicas is the one plain field: default 1).
BLOCKS: dict[str, type] = {
    "model": ModelSpec, "parallelism": ParallelismSpec, "gpu": GPUSpec, "autoscaling": AutoscalingSpec,
    "server": ServerSpec, "router": RouterSpec, "rollout": RolloutSpec,
}
DEFAULT_REPLICAS = 1


def compile_cache_source(given: dict[str, Any] | None,
                         path: str = "spec.server.compileCache") -> dict[str, Any]:
    """spec.server.compileCache, checked as the CRD checks it (exactly one volume source), with defaults."""
    if given is None:
        return _compile_cache_default()
    named = [k for k in COMPILE_CACHE_SOURCES if given.get(k) is not None]
    if len(named) != 1:
        raise ValueError(f"{path} must name exactly one of hostPath, persistentVolumeClaim or emptyDir, not "
                         f"{sorted(given) or 'none'}")
    (kind,) = named
    source = dict(given[kind])
    if kind == "hostPath":
        if not str(source.get("path", "")).startswith("/"):
            raise ValueError(f"{path}.hostPath.path must be an absolute path")
        source.setdefault("type", DEFAULT_COMPILE_CACHE["hostPath"]["type"])
    elif kind == "persistentVolumeClaim" and not source.get("claimName"):
        raise ValueError(f"{path}.persistentVolumeClaim.claimName is required")
    return {kind: source}


_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?)?")
_UNITS = {"": 1, **{u: 1000 ** (i + 1) for i, u in enumerate("KMGTPE")},
          **{f"{u}i": 1024 ** (i + 1) for i, u in enumerate("KMGTPE")}}


def quantity_bytes(text: str, path: str = "quantity") -> int:
    """A Kubernetes quantity of bytes ("500Gi", "2T", "1000000") as a number; ValueError naming `path`."""
    m = _QUANTITY.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{path} must be a quantity of bytes such as 500Gi or 2T, not {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _value(kind: type | str, value: Any, path: str) -> Any:
    def wrong(expected: str) -> ValueError:
        return ValueError(f"{path} must be {expected}, not {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise wrong("a number")
        try:
            number = float(value)
        except ValueError:
            raise wrong("a number") from None
        if kind is int:
            if number != int(number):
                raise wrong("an integer")
            return int(number)
        return number
    if kind == "int|auto":
        if value == "auto":
            return value
        if isinstance(value, bool) or not str(value).isdigit():
            raise wrong("auto or an integer")
        return int(value)
    if kind == "int|percent":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
            return value
        raise wrong("an integer or a percentage")
    if kind == "compileCache":
        return compile_cache_source(value, path)
    if kind == "quantity":
        if quantity_bytes(str(value), path) < 1:  # grok-server refuses a bound of 0 bytes (_positive)
            raise wrong("at least one byte")
        return str(value)
    if kind == "full|sizes":
        if value not in ("full", "sizes"):
            raise wrong("full or sizes")
        return str(value)
    if kind == "absolutePath":
        if not str(value).startswith("/"):
            raise wrong("an absolute path")
        return str(value)
    if kind is dict:
        if not isinstance(value, dict):
            raise wrong("an object")
        return dict(value)
    if kind is list:
        if not isinstance(value, list):
            raise wrong("a list")
        return list(value)
    if isinstance(kind, tuple):  # (dict, Block): an object of blocks by name
        if not isinstance(value, dict):
            raise wrong("an object")
        return {str(k): _value(kind[1], v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise wrong("an object")
        return parse(kind, value, path)
    return str(value)


def parse(block: type[Block], data: dict[str, Any] | None, path: str) -> Block:
    """A block of the spec from the resource's JSON; absent or null fields take the defaults above."""
    data = data or {}
    values = {}
    for f in dataclasses.fields(block):  # type: ignore[arg-type]
        name = f.metadata["json"]
        if data.get(name) is None:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise ValueError(f"{path}.{name} is required")
            continue
        values[f.name] = _value(f.metadata["kind"], data[name], f"{path}.{name}")
    return block(**values)


def dump(block: Any) -> dict[str, Any]:
    """A block's set fields by their names in the resource (parse's other way; None fields left out)."""
    return {f.metadata["json"]: value for f in dataclasses.fields(block)
            if (value := getattr(block, f.name)) is not None}
