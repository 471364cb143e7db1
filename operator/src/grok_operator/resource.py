"""The GrokDeployment resource: its API coordinates and a typed view of its (defaulted) spec."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from grok_common.quantization import canonical
from grok_operator.gpus import GPU_PRODUCTS, GPUProduct
from grok_operator.models import ModelShape, model_shape
from grok_operator.planner import PlanRequest

GROUP = "serving.grok.dev"
VERSION = "v1alpha1"
PLURAL = "grokdeployments"
KIND = "GrokDeployment"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

# Label that ties every child to its GrokDeployment (the scale subresource's selector uses it too).
INSTANCE_LABEL = f"{GROUP}/deployment"
MODEL_LABEL = f"{GROUP}/model"  # on the model cache and fetch Job, shared by deployments of one model
MANAGED_BY = "grok-operator"

# Where vLLM's compile caches live (spec.server.compileCache): shared per node by default, as the artifacts
# depend on the node's GPU product and a node's local disk is the fastest to read them back from.
COMPILE_CACHE_PATH = "/var/cache/grok-serve/compile"
COMPILE_CACHE_SOURCES = ("hostPath", "persistentVolumeClaim", "emptyDir")
DEFAULT_COMPILE_CACHE: dict[str, Any] = {
    "hostPath": {"path": COMPILE_CACHE_PATH, "type": "DirectoryOrCreate"},
}


def compile_cache_source(server: dict[str, Any]) -> dict[str, Any]:
    """spec.server.compileCache, checked as the CRD checks it (exactly one volume source), with defaults."""
    given = server.get("compileCache")
    if given is None:
        return copy.deepcopy(DEFAULT_COMPILE_CACHE)
    named = [k for k in COMPILE_CACHE_SOURCES if given.get(k) is not None]
    if len(named) != 1:
        raise ValueError("spec.server.compileCache must name exactly one of hostPath, persistentVolumeClaim "
                         f"or emptyDir, not {sorted(given) or 'none'}")
    (kind,) = named
    source = dict(given[kind])
    if kind == "hostPath":
        if not str(source.get("path", "")).startswith("/"):
            raise ValueError("spec.server.compileCache.hostPath.path must be an absolute path")
        source.setdefault("type", "DirectoryOrCreate")
    elif kind == "persistentVolumeClaim" and not source.get("claimName"):
        raise ValueError("spec.server.compileCache.persistentVolumeClaim.claimName is required")
    return {kind: source}


@dataclass(frozen=True)
class ModelSource:
    scheme: str  # hf, pvc or s3
    location: str  # org/name, claim, or bucket/prefix
    path: str = ""  # inside the claim, for pvc://
    revision: str = "main"
    format: str = "hf"

    @classmethod
    def parse(cls, uri: str, revision: str = "main", fmt: str = "hf") -> ModelSource:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("hf", "pvc", "s3") or not rest:
            raise ValueError(
                f"model uri {uri!r} must look like hf://org/name, pvc://claim/path or s3://bucket/prefix"
            )
        if scheme == "pvc":
            claim, _, path = rest.partition("/")
            return cls(scheme, claim, path.strip("/"), revision, fmt)
        return cls(scheme, rest.strip("/"), "", revision, fmt)

    @property
    def uri(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{self.location}{tail}"

    @property
    def needs_fetch(self) -> bool:
        return self.scheme in ("hf", "s3")

    @property
    def cache_key(self) -> str:
        """Names the cache volume and fetch Job: one per model, revision and format in a namespace."""
        return hashlib.sha256(f"{self.uri}@{self.revision}#{self.format}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class GrokDeploymentSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    model: ModelSource
    shape: ModelShape
    quantization: str
    dtype: str
    max_model_len: int
    tensor_parallel: int | None
    gpu: GPUProduct | None  # None: a product the planner does not know
    gpu_product_name: str
    gpu_memory_gib: float | None
    gpus_per_node: int
    replicas: int
    server: dict[str, Any]
    rollout: dict[str, Any]
    model_spec: dict[str, Any]
    autoscaling: dict[str, Any] | None = None
    router: dict[str, Any] = field(default_factory=dict)
    parallelism: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    compile_cache: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_COMPILE_CACHE))

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> GrokDeploymentSpec:
        """Reads a GrokDeployment as the API server stored it (CRD defaults already applied).

        Raises ValueError with a user-facing message for what the schema cannot check.
        """
        meta, spec = body["metadata"], body.get("spec") or {}
        model = spec.get("model") or {}
        tensor = (spec.get("parallelism") or {}).get("tensor", "auto")
        gpu = spec.get("gpu") or {}
        product = gpu.get("product", "NVIDIA-H100-80GB-HBM3")
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 1)),
            model=ModelSource.parse(
                model.get("uri", ""), model.get("revision", "main"), model.get("format", "hf")
            ),
            shape=model_shape(model),
            quantization=canonical(model.get("quantization", "none")),
            dtype=model.get("dtype", "auto"),
            max_model_len=int(model.get("maxModelLen", 8192)),
            tensor_parallel=None if tensor == "auto" else int(tensor),
            gpu=GPU_PRODUCTS.get(product),
            gpu_product_name=product,
            gpu_memory_gib=gpu.get("memoryGiB"),
            gpus_per_node=int(gpu.get("perNode", 8)),
            replicas=int(spec.get("replicas", 1)),
            server=spec.get("server") or {},
            rollout=spec.get("rollout") or {},
            model_spec=model,
            autoscaling=spec.get("autoscaling"),
            router=spec.get("router") or {},
            parallelism=spec.get("parallelism") or {},
            labels=dict(meta.get("labels") or {}),
            compile_cache=compile_cache_source(spec.get("server") or {}),
        )

    def plan_request(self) -> PlanRequest:
        pipeline = self.parallelism.get("pipeline", "auto")
        gpu = self.gpu
        if gpu is None:
            if self.gpu_memory_gib is None:
                known = ", ".join(sorted(GPU_PRODUCTS))
                raise ValueError(
                    f"unknown GPU product {self.gpu_product_name!r}: set spec.gpu.memoryGiB to plan "
                    f"for it, or use one of {known}"
                )
            gpu = GPUProduct(self.gpu_product_name, int(self.gpu_memory_gib * 1024))
        return PlanRequest(
            shape=self.shape,
            gpu=gpu,
            quantization=self.quantization,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            tensor_parallel=self.tensor_parallel,
            gpus_per_node=self.gpus_per_node,
            gpu_memory_utilization=float(self.server.get("gpuMemoryUtilization", 0.9)),
            gpu_memory_gib=self.gpu_memory_gib,
            min_sequences=int(self.server.get("minConcurrentSequences", 4)),
            pipeline=None if pipeline == "auto" else int(pipeline),
            max_nodes_per_replica=int(self.parallelism.get("maxNodesPerReplica", 4)),
        )

    @property
    def selector_labels(self) -> dict[str, str]:
        return {INSTANCE_LABEL: self.name, "app.kubernetes.io/name": "grok-server"}

    @property
    def router_enabled(self) -> bool:
        return bool(self.router.get("enabled", True))

    @property
    def router_selector_labels(self) -> dict[str, str]:
        return {INSTANCE_LABEL: self.name, "app.kubernetes.io/name": "grok-router"}

    @property
    def selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector_labels.items()))


def gpu_resource(spec: GrokDeploymentSpec) -> str:
    """Extended resource the pods request (amd.com/gpu for AMD products, nvidia.com/gpu otherwise)."""
    return spec.gpu.resource if spec.gpu else "nvidia.com/gpu"
