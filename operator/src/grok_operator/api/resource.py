"""The GrokDeployment resource: its API coordinates and a typed view of its (defaulted) spec."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from grok_common.quantization import canonical
from grok_operator.api.gpus import GPU_PRODUCTS, GPUProduct
from grok_operator.api.models import ModelShape, model_shape
from grok_operator.api.spec import (
    DEFAULT_REPLICAS,
    AutoscalingSpec,
    GPUSpec,
    ModelSpec,
    ParallelismSpec,
    RolloutSpec,
    RouterSpec,
    ServerSpec,
    parse,
)

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
    """A GrokDeployment read and checked: its identity, the typed spec blocks (api.spec), and what the
    operator derives from them once (the model's location and shape, the GPU product, the parallel sizes)."""

    name: str
    namespace: str
    uid: str
    generation: int
    model: ModelSource
    shape: ModelShape
    quantization: str  # grok_common.quantization's current name (a deprecated one translated)
    gpu: GPUProduct | None  # None: a product the planner does not know
    model_spec: ModelSpec
    gpu_spec: GPUSpec
    replicas: int
    server: ServerSpec = field(default_factory=ServerSpec)
    router: RouterSpec = field(default_factory=RouterSpec)
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    parallelism: ParallelismSpec = field(default_factory=ParallelismSpec)
    autoscaling: AutoscalingSpec | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> GrokDeploymentSpec:
        """Reads a GrokDeployment as the API server stored it (CRD defaults normally applied).

        Raises ValueError with a user-facing message for what the schema cannot check.
        """
        meta, spec = body["metadata"], body.get("spec") or {}
        model = parse(ModelSpec, spec.get("model"), "spec.model")
        gpu = parse(GPUSpec, spec.get("gpu"), "spec.gpu")
        autoscaling = spec.get("autoscaling")
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 1)),
            model=ModelSource.parse(model.uri, model.revision, model.format),
            shape=model_shape({"profile": model.profile, "shape": model.shape}),
            quantization=canonical(model.quantization),
            gpu=GPU_PRODUCTS.get(gpu.product),
            model_spec=model,
            gpu_spec=gpu,
            replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
            server=parse(ServerSpec, spec.get("server"), "spec.server"),
            router=parse(RouterSpec, spec.get("router"), "spec.router"),
            rollout=parse(RolloutSpec, spec.get("rollout"), "spec.rollout"),
            parallelism=parse(ParallelismSpec, spec.get("parallelism"), "spec.parallelism"),
            autoscaling=(None if autoscaling is None
                         else parse(AutoscalingSpec, autoscaling, "spec.autoscaling")),
            labels=dict(meta.get("labels") or {}),
        )

    @property
    def dtype(self) -> str:
        return self.model_spec.dtype

    @property
    def max_model_len(self) -> int:
        return self.model_spec.max_model_len

    @property
    def tensor_parallel(self) -> int | None:
        """None: the planner chooses."""
        tensor = self.parallelism.tensor
        return None if tensor == "auto" else int(tensor)

    @property
    def gpu_product_name(self) -> str:
        return self.gpu_spec.product

    @property
    def gpus_per_node(self) -> int:
        return self.gpu_spec.per_node

    @property
    def selector_labels(self) -> dict[str, str]:
        return {INSTANCE_LABEL: self.name, "app.kubernetes.io/name": "grok-server"}

    @property
    def router_enabled(self) -> bool:
        return self.router.enabled

    @property
    def router_selector_labels(self) -> dict[str, str]:
        return {INSTANCE_LABEL: self.name, "app.kubernetes.io/name": "grok-router"}

    @property
    def selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector_labels.items()))


def gpu_resource(spec: GrokDeploymentSpec) -> str:
    """Extended resource the pods request (amd.com/gpu for AMD products, nvidia.com/gpu otherwise)."""
    return spec.gpu.resource if spec.gpu else "nvidia.com/gpu"
