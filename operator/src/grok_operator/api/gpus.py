"""The GPU products the planner and the simulated cluster know, as GPU feature discovery labels them."""

from __future__ import annotations

from dataclasses import dataclass

from grok_common.attention import Device
from grok_common.quantization import runs_fp8

GIB = 1024**3


@dataclass(frozen=True)
class GPUProduct:
    product: str  # value of the node label `<vendor>/gpu.product`
    memory_mib: int  # usable memory as the device plugin reports it (`<vendor>/gpu.memory`)
    resource: str = "nvidia.com/gpu"  # extended resource a pod requests
    instance_type: str = ""  # a typical 8-GPU cloud machine carrying it
    # NVIDIA's compute capability (developer.nvidia.com/cuda-gpus); None: not NVIDIA, or not known
    compute_capability: tuple[int, int] | None = None
    # FP8 Tensor Core TFLOPS, dense (NVIDIA's datasheets give twice this, "with sparsity"): 0 where the
    # datasheet lists no FP8 (A100), None where not verified. docs/resource.md cites the source of each.
    fp8_tensor_tflops: int | None = None

    @property
    def fp8(self) -> bool:
        """Native fp8 tensor cores: NVIDIA from compute capability 8.9 (Ada, Hopper, Blackwell); AMD's
        CDNA3 (MI300X) has them. A product of unknown capability is given the benefit of the doubt."""
        return self.compute_capability is None or runs_fp8(self.compute_capability)

    @property
    def attention_device(self) -> Device:
        """The device grok_common.attention decides for (vLLM's platform and GPU family)."""
        if self.resource == "amd.com/gpu":
            return Device("rocm")
        return Device("cuda", self.compute_capability)

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    @property
    def label_prefix(self) -> str:
        return self.resource.rsplit("/", 1)[0]


GPU_PRODUCTS: dict[str, GPUProduct] = {
    p.product: p
    for p in (
        GPUProduct("NVIDIA-A100-SXM4-40GB", 40960, instance_type="p4d.24xlarge", compute_capability=(8, 0),
                   fp8_tensor_tflops=0),
        GPUProduct("NVIDIA-A100-SXM4-80GB", 81920, instance_type="p4de.24xlarge", compute_capability=(8, 0),
                   fp8_tensor_tflops=0),
        GPUProduct("NVIDIA-H100-80GB-HBM3", 81559, instance_type="p5.48xlarge", compute_capability=(9, 0),
                   fp8_tensor_tflops=1979),
        GPUProduct("NVIDIA-H200", 143771, instance_type="p5e.48xlarge", compute_capability=(9, 0),
                   fp8_tensor_tflops=1979),
        GPUProduct("NVIDIA-B200", 183359, instance_type="p6-b200.48xlarge", compute_capability=(10, 0),
                   fp8_tensor_tflops=4500),
        GPUProduct("NVIDIA-L40S", 46068, instance_type="g6e.48xlarge", compute_capability=(8, 9),
                   fp8_tensor_tflops=733),
        GPUProduct("AMD-Instinct-MI300X", 196592, resource="amd.com/gpu", instance_type="ND96isr_MI300X_v5"),
    )
}


def gpu_product(name: str) -> GPUProduct:
    """Looks a product up by its label value; the error lists the known ones."""
    try:
        return GPU_PRODUCTS[name]
    except KeyError:
        known = ", ".join(sorted(GPU_PRODUCTS))
        raise ValueError(f"unknown GPU product {name!r}; known products: {known}") from None
