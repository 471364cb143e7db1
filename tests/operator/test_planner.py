"""The capacity planner: Grok-1's real sizing cases, refusals that explain themselves, and properties."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grok_common.attention import describe, engine_backend_args
from grok_common.quantization import NAMES, canonical
from grok_operator.api.gpus import GPU_PRODUCTS, gpu_product
from grok_operator.api.models import GROK_1, GROK_1_TINY, model_shape
from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.plan.admission import plan_request
from grok_operator.plan.planner import PlanError, PlanRequest, plan, weight_bytes

H100, H200 = gpu_product("NVIDIA-H100-80GB-HBM3"), gpu_product("NVIDIA-H200")


def test_a_request_with_only_shape_and_gpu_is_what_a_spec_without_those_fields_plans():
    """The planner's defaults are the spec's (CRD) defaults: a test's bare PlanRequest sizes what a user's
    GrokDeployment that sets none of them gets."""
    spec = GrokDeploymentSpec.from_body({"metadata": {"name": "g"},
                                         "spec": {"model": {"uri": "pvc://weights/grok-1"}}})
    assert plan_request(spec) == PlanRequest(spec.shape, H100)


def test_grok1_parameter_count_and_kv_cache_match_the_published_model():
    assert 314e9 < GROK_1.parameters < 317e9
    assert GROK_1.kv_bytes_per_token(2, 1) == 256 * 1024  # 64 layers x 2 x 8 heads x 128 x 2 bytes
    assert 630e9 < weight_bytes(GROK_1, "none", "auto") < 635e9  # bf16 ≈ 633 GB
    assert 315e9 < weight_bytes(GROK_1, "fp8", "auto") < 320e9  # fp8 ≈ 317 GB


def test_fp8_on_h100_needs_tensor_parallel_8():
    p = plan(PlanRequest(GROK_1, H100, quantization="fp8"))
    assert p.tensor_parallel_size == 8 and p.gpus_per_replica == 8
    assert 36 < p.weight_gib_per_gpu < 38  # ≈40 GB per GPU
    assert p.kv_cache_gib_per_gpu > 25
    assert p.max_concurrent_sequences >= 100  # 8K-token sequences


def test_bf16_on_h100_spans_two_nodes_tensor_8_by_pipeline_2():
    p = plan(PlanRequest(GROK_1, H100))
    assert (p.tensor_parallel_size, p.pipeline_parallel_size, p.nodes_per_replica) == (8, 2, 2)
    assert p.gpus_per_replica == 16 and p.multi_node
    assert 36 < p.weight_gib_per_gpu < 38  # half the layers, split 8 ways
    assert p.max_concurrent_sequences >= 100  # each GPU holds KV for its stage's 32 layers only
    status = p.to_status()
    assert status["pipelineParallelSize"] == 2 and status["nodesPerReplica"] == 2


def test_bf16_on_h100_on_one_node_only_is_refused_with_the_reason_and_the_way_out():
    with pytest.raises(PlanError) as err:
        plan(PlanRequest(GROK_1, H100, pipeline=1))
    assert err.value.reason == "InsufficientGPUMemory"
    message = str(err.value)
    assert "631 GB" in message or "633 GB" in message
    assert "needs 16 GPUs per replica (2 nodes of 8" in message
    assert "fp8" in message


@pytest.mark.parametrize("quantization", ["fp8", "fp8_per_tensor", "fp8_per_channel", "fp8_per_block"])
@pytest.mark.parametrize("product", ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB"])
def test_fp8_on_a_gpu_without_fp8_tensor_cores_is_refused_with_what_bf16_takes(product, quantization):
    with pytest.raises(PlanError) as err:
        plan(PlanRequest(GROK_1, gpu_product(product), quantization=quantization))
    assert err.value.reason == "FP8Unsupported"
    message = str(err.value)
    assert message.startswith(
        f"quantization {canonical(quantization)} needs fp8 tensor cores, which {product} (compute capability "
        "8.0) does not have: NVIDIA added them with compute capability 8.9 (NVIDIA-H100-80GB-HBM3, "
        "NVIDIA-H200, NVIDIA-B200, NVIDIA-L40S")
    gpus, stages = (16, 2) if product == "NVIDIA-A100-SXM4-80GB" else (24, 3)
    bf16 = f"in bf16 (quantization none) a replica takes {gpus} of them (tensor parallel 8 x pipeline"
    assert f"{bf16} {stages}" in message


def test_fp8_runs_from_compute_capability_8_9_and_refusals_offer_it_only_there():
    # NVIDIA: H100/H200 9.0, B200 10.0 and L40S 8.9 have fp8 tensor cores; A100 (8.0) has none.
    assert {p.product for p in GPU_PRODUCTS.values() if not p.fp8} == {
        "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"}
    with pytest.raises(PlanError) as on_a100:
        plan(PlanRequest(GROK_1, gpu_product("NVIDIA-A100-SXM4-80GB"), pipeline=1))
    assert "fp8" not in str(on_a100.value)  # bf16 that does not fit: fp8 is no way out there
    with pytest.raises(PlanError) as on_h100:
        plan(PlanRequest(GROK_1, H100, pipeline=1))
    assert "use quantization fp8_per_tensor, " in str(on_h100.value)


@pytest.mark.parametrize(("product", "quantization", "nodes", "tensor"), [
    ("NVIDIA-A100-SXM4-40GB", "none", 3, 8),  # 22 of 64 layers on the largest stage: 25 GiB per GPU
    ("NVIDIA-L40S", "none", 3, 8),
    ("NVIDIA-L40S", "fp8", 2, 8),
    ("NVIDIA-A100-SXM4-80GB", "none", 2, 8),
    ("NVIDIA-H200", "none", 1, 8),
])
def test_multi_node_rows_of_the_sizing_table(product, quantization, nodes, tensor):
    p = plan(PlanRequest(GROK_1, gpu_product(product), quantization=quantization))
    assert (p.nodes_per_replica, p.tensor_parallel_size) == (nodes, tensor)


def test_more_nodes_than_allowed_is_refused_with_the_figure():
    with pytest.raises(PlanError) as err:
        plan(PlanRequest(GROK_1, gpu_product("NVIDIA-A100-SXM4-40GB"), max_nodes_per_replica=2))
    assert err.value.reason == "TooManyNodesPerReplica"
    assert "needs 3 nodes" in str(err.value) and "maxNodesPerReplica 2" in str(err.value)
    fixed = plan(PlanRequest(GROK_1, H100, tensor_parallel=8, pipeline=4))
    assert fixed.nodes_per_replica == 4 and fixed.gpus_per_replica == 32
    with pytest.raises(PlanError, match="exceeds the model's 64 layers"):
        plan(PlanRequest(GROK_1, H100, pipeline=65))


def test_bf16_on_h200_fits_on_eight():
    p = plan(PlanRequest(GROK_1, H200))
    assert p.tensor_parallel_size == 8
    assert p.weight_gib_per_gpu == pytest.approx(73.5, abs=0.5)


def test_tiny_model_needs_one_gpu():
    assert plan(PlanRequest(GROK_1_TINY, H100, max_model_len=1024)).tensor_parallel_size == 1


def test_explicit_tensor_parallel_is_checked_not_chosen():
    assert plan(PlanRequest(GROK_1, H200, tensor_parallel=8)).tensor_parallel_size == 8
    with pytest.raises(
        PlanError, match=r"tensor parallel size 3 does not divide .* valid sizes: \[1, 2, 4, 8\]"
    ):
        plan(PlanRequest(GROK_1, H200, tensor_parallel=3))
    with pytest.raises(PlanError, match="at tensor parallel 4 the weights take") as err:
        plan(PlanRequest(GROK_1, H100, quantization="fp8", tensor_parallel=4, pipeline=1))
    assert err.value.reason == "InsufficientGPUMemory"
    with pytest.raises(PlanError, match="needs 16 GPUs on one node, but nodes have 8"):
        plan(PlanRequest(GROK_1, H200, tensor_parallel=16))


def test_context_longer_than_the_model_is_refused():
    with pytest.raises(PlanError, match="maxModelLen 16384 exceeds the model's context of 8192"):
        plan(PlanRequest(GROK_1, H200, max_model_len=16384))


def test_a_longer_context_needs_more_kv_cache_per_sequence():
    short = plan(PlanRequest(GROK_1, H100, quantization="fp8", max_model_len=2048))
    full = plan(PlanRequest(GROK_1, H100, quantization="fp8", max_model_len=8192))
    assert short.max_concurrent_sequences == pytest.approx(4 * full.max_concurrent_sequences, rel=0.05)


def test_custom_shape_and_unknown_profile():
    shape = model_shape(
        {
            "profile": "custom",
            "shape": {"layers": 2, "hiddenSize": 256, "heads": 8, "kvHeads": 8, "vocabSize": 1000},
        }
    )
    assert shape.head_dim == 32
    with pytest.raises(ValueError, match="missing heads"):
        model_shape(
            {"profile": "custom", "shape": {"layers": 2, "hiddenSize": 256, "kvHeads": 8, "vocabSize": 9}}
        )
    with pytest.raises(ValueError, match="unknown model profile 'grok-2'"):
        model_shape({"profile": "grok-2"})
    # hiddenSize below heads without headDim: a head dimension of 0 would divide by zero in the planner.
    def custom(**shape):
        return model_shape({"profile": "custom", "shape": {"layers": 2, "vocabSize": 9, **shape}})

    with pytest.raises(ValueError, match="give headDim"):
        custom(hiddenSize=2, heads=4, kvHeads=1)
    with pytest.raises(ValueError, match="multiple of kvHeads"):
        custom(hiddenSize=64, heads=4, kvHeads=3)


# No per-example deadline: planning time depends on the machine, not on what the property checks.
@settings(deadline=None)
@given(
    product=st.sampled_from(sorted(GPU_PRODUCTS)),
    quantization=st.sampled_from([*NAMES, "fp8"]),
    max_model_len=st.integers(16, 8192),
    utilization=st.floats(0.5, 0.95),
)
def test_a_chosen_plan_always_fits_and_is_the_smallest(product, quantization, max_model_len, utilization):
    req = PlanRequest(
        GROK_1,
        gpu_product(product),
        quantization=quantization,
        max_model_len=max_model_len,
        gpu_memory_utilization=utilization,
    )
    try:
        p = plan(req)
    except PlanError as err:
        assert err.reason in ("InsufficientGPUMemory", "TooManyNodesPerReplica") or (
            err.reason == "FP8Unsupported" and not gpu_product(product).fp8 and quantization != "none")
        return
    usable = p.gpu_memory_gib * utilization - 4.0
    assert GROK_1.valid_tensor_parallel(p.tensor_parallel_size)
    assert p.tensor_parallel_size <= 8 and 1 <= p.nodes_per_replica <= 4
    assert p.weight_gib_per_gpu + p.kv_cache_gib_per_gpu == pytest.approx(usable)
    assert p.max_concurrent_sequences >= 4
    # The smallest: no fewer nodes would do, and on its number of nodes no smaller tensor size.
    for fewer in range(1, p.nodes_per_replica):
        for tp in (1, 2, 4, 8):
            with pytest.raises(PlanError):
                plan(PlanRequest(**{**req.__dict__, "tensor_parallel": tp, "pipeline": fewer}))
    for smaller in (t for t in (1, 2, 4) if t < p.tensor_parallel_size):
        with pytest.raises(PlanError):
            plan(PlanRequest(**{**req.__dict__, "tensor_parallel": smaller, "pipeline": p.nodes_per_replica}))


def test_the_tiny_profiles_are_the_shapes_the_generator_writes():
    from grok_operator.api.models import GROK_1_SMALL
    from grok_server.checkpoints.tiny import parameter_count

    assert GROK_1_TINY.parameters == parameter_count("tiny")
    assert GROK_1_SMALL.parameters == parameter_count("small")


def _doc_table(header: str) -> list[list[str]]:
    """The cells of the docs/resource.md table whose header row starts with `header`."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "resource.md").read_text()
    block = text[text.index("\n" + header) + 1:].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_the_readmes_sizing_table_is_what_the_planner_and_the_attention_rule_say():
    table = "\n".join("| " + " | ".join(row) + " |" for row in _doc_table("| GPU | quantization |"))
    rows = re.findall(r"^\| (NVIDIA-\S+|AMD-\S+)(?: \(`amd.com/gpu`\))? \| (\S+)[^|]* \| ([^|]+) \|(.*)\|$",
                      table, re.M)
    assert len(rows) >= 12
    for product, quantization, layout, rest in rows:
        gpu = gpu_product(product)
        if layout.startswith("refused"):
            with pytest.raises(PlanError, match="needs fp8 tensor cores"):
                plan(PlanRequest(GROK_1, gpu, quantization=quantization))
            continue
        p = plan(PlanRequest(GROK_1, gpu, quantization=quantization))
        nodes = f" \N{MULTIPLICATION SIGN} {p.nodes_per_replica} nodes" if p.multi_node else ""
        assert layout.startswith(f"{p.tensor_parallel_size}{nodes}"), (product, quantization, layout)
        weights, kv, sequences, backend = (cell.strip() for cell in rest.split("|")[:4])
        assert (weights, kv, sequences) == (f"{p.weight_gib_per_gpu:.1f}", f"{p.kv_cache_gib_per_gpu:.1f}",
                                            str(p.max_concurrent_sequences)), (product, quantization)
        device = gpu.attention_device
        assert backend == describe(engine_backend_args({}, device)["attention_backend"], device), product


def test_the_fp8_table_cites_what_the_planner_decides_with():
    """docs/resource.md's per-product fp8 figures are gpus.py's, and a datasheet FP8 figure goes with
    compute capability 8.9+ (what the planner decides on) for every NVIDIA product."""
    rows = _doc_table("| GPU product | compute capability |")
    assert sorted(row[0].split()[0] for row in rows) == sorted(GPU_PRODUCTS)
    for product, capability, tflops, _sources in rows:
        gpu = GPU_PRODUCTS[product.split()[0]]
        if gpu.compute_capability is None:
            assert (capability, tflops, gpu.fp8_tensor_tflops) == ("n/a", "not verified", None), product
            continue
        assert capability == "{}.{}".format(*gpu.compute_capability), product
        assert gpu.fp8_tensor_tflops is not None, product
        if gpu.fp8_tensor_tflops == 0:
            assert tflops == "none" and not gpu.fp8, product
        else:
            dense = gpu.fp8_tensor_tflops
            assert tflops == f"{dense:,} ({2 * dense:,})" and gpu.fp8, product
