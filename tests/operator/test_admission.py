"""What grok-server would refuse at start is refused at admission, with the server's words (pure)."""

import pytest

from grok_common.attention import Device, refusal
from grok_common.quantization import NAMES
from grok_operator.plan.admission import admit

FORCE_FLASHINFER = ["--engine-arg", "attention_backend=FLASHINFER"]


def body(product="NVIDIA-H100-80GB-HBM3", engine_args=None, quantization="fp8_per_tensor"):
    return {
        "metadata": {"name": "grok", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": {"uri": "pvc://weights/grok-1", "quantization": quantization},
                 "gpu": {"product": product}, "server": {"engineArgs": engine_args or []}},
    }


def refused(b):
    admission = admit(b)
    assert admission.plan is None
    return admission.refusal


@pytest.mark.parametrize(("product", "device"), [
    ("NVIDIA-H100-80GB-HBM3", Device("cuda", (9, 0))),   # XQA decode
    ("NVIDIA-B200", Device("cuda", (10, 0))),            # TRTLLM-gen
    ("AMD-Instinct-MI300X", Device("rocm")),
])
def test_forcing_a_backend_that_drops_the_soft_cap_is_refused_with_the_servers_message(product, device):
    reason, message = refused(body(product, FORCE_FLASHINFER))
    assert reason == "AttentionBackendDropsSoftCap"
    # grok-server logs "refusing to start: " + refusal(...) on that GPU: the same words.
    assert message == "spec.server.engineArgs: " + refusal("FLASHINFER", device)


@pytest.mark.parametrize("engine_args", [
    ["--engine-arg=attention_config={\"backend\": \"FLASHINFER\"}"],
    ["--engine-arg", "attention_config={\"backend_per_kind\": {\"full_attention\": \"FLEX_ATTENTION\"}}"],
    ["--engine-arg", "attention_backend=TRITON_ATTN", "--engine-arg", "attention_backend=TURBOQUANT"],
])
def test_every_way_engine_args_name_a_backend_is_read(engine_args):
    reason, _ = refused(body("NVIDIA-H100-80GB-HBM3", engine_args))
    assert reason == "AttentionBackendDropsSoftCap"


@pytest.mark.parametrize(("product", "engine_args"), [
    ("NVIDIA-H100-80GB-HBM3", []),
    ("NVIDIA-H100-80GB-HBM3", ["--engine-arg", "attention_backend=TRITON_ATTN"]),
    ("NVIDIA-B200", ["--engine-arg", "attention_config={\"backend\": \"FLASHINFER\", "
                                     "\"use_trtllm_attention\": false}"]),
    ("NVIDIA-L40S", FORCE_FLASHINFER),  # Ada: FlashInfer's native kernels only, which apply the cap
    ("NVIDIA-A100-SXM4-80GB", ["--engine-arg", "attention_backend=FLASH_ATTN"]),
])
def test_backends_that_apply_the_cap_are_admitted(product, engine_args):
    quantization = "none" if product.startswith("NVIDIA-A100") else "fp8_per_tensor"
    admission = admit(body(product, engine_args, quantization))
    assert admission.refusal is None and admission.plan is not None


def with_env(b, *env):
    b["spec"]["server"]["env"] = list(env)
    return b


@pytest.mark.parametrize(("product", "device"), [
    ("NVIDIA-H100-80GB-HBM3", Device("cuda", (9, 0))),
    ("NVIDIA-B200", Device("cuda", (10, 0))),
])
def test_vllm_attention_backend_in_env_naming_a_backend_that_drops_the_cap_is_refused(product, device):
    """vLLM 0.32 ignores the variable, but whoever set it expects FlashInfer: refused with grok-server's
    words (tests/server/test_start_refusals.py), not started on another backend."""
    env = {"name": "VLLM_ATTENTION_BACKEND", "value": "flashinfer"}
    reason, message = refused(with_env(body(product), env))
    assert reason == "AttentionBackendDropsSoftCap"
    assert message == "spec.server.env: VLLM_ATTENTION_BACKEND=flashinfer: " + refusal("FLASHINFER", device)


@pytest.mark.parametrize("env", [
    [{"name": "VLLM_ATTENTION_BACKEND", "value": "TRITON_ATTN"}],
    [{"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"},
     {"name": "VLLM_ATTENTION_BACKEND", "value": "FLASH_ATTN"}],  # the later entry is the container's
    # A ConfigMap's value cannot be read at admission: grok-server checks it at start.
    [{"name": "VLLM_ATTENTION_BACKEND", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
    # ... and when it comes after a literal one, it is the container's value, not the literal.
    [{"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"},
     {"name": "VLLM_ATTENTION_BACKEND", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
    [{"name": "OTHER", "value": "FLASHINFER"}],
])
def test_other_environments_are_admitted(env):
    admission = admit(with_env(body(), *env))
    assert admission.refusal is None and admission.plan is not None


def test_malformed_engine_args_are_refused_with_what_is_wrong():
    reason, message = refused(body(engine_args=["--engine-arg", "no-equals-sign"]))
    assert reason == "InvalidEngineArgs"
    assert message == "spec.server.engineArgs: expected KEY=VALUE, got 'no-equals-sign'"
    reason, message = refused(body(engine_args=["--engine-arg"]))
    assert reason == "InvalidEngineArgs" and "without KEY=VALUE" in message


def test_quantization_names_are_vllms_current_ones_and_fp8_is_read_as_fp8_per_tensor():
    assert admit(body(quantization="fp8")).spec.quantization == "fp8_per_tensor"
    for name in NAMES:
        assert admit(body(quantization=name)).spec.quantization == name
    reason, message = refused(body(quantization="int4"))
    assert (reason, message) == ("InvalidSpec", "unknown quantization 'int4'; known: none, fp8_per_tensor, "
                                                "fp8_per_channel, fp8_per_block")


def with_model(b, **model):
    b["spec"]["model"].update(model)
    return b


@pytest.mark.parametrize(("fmt", "uri", "words"), [
    ("runai_streamer", "pvc://weights/grok-1", "needs the Python package runai-model-streamer"),
    ("fastsafetensors", "pvc://weights/grok-1", "needs the Python package fastsafetensors"),
    ("sharded_state", "hf://xai-org/grok-1", "saved pre-split"),
])
def test_a_load_format_the_platform_cannot_run_is_refused_with_why(fmt, uri, words):
    b = with_model(body(), loadFormat=fmt, uri=uri)
    reason, message = refused(b)
    assert reason == "LoadFormatUnsupported" and message.startswith("spec.model.loadFormat: ")
    assert words in message


def test_fastsafetensors_needs_cuda_and_a_custom_image_is_left_to_grok_server():
    b = with_model(body("AMD-Instinct-MI300X"), loadFormat="fastsafetensors")
    b["spec"]["server"]["image"] = "registry.example/grok-server-fst:1"
    assert "needs CUDA GPUs" in refused(b)[1]
    for fmt in ("runai_streamer", "fastsafetensors", "auto", "safetensors"):
        b = with_model(body(), loadFormat=fmt)
        b["spec"]["server"]["image"] = "registry.example/grok-server-fst:1"  # grok-server checks its modules
        assert admit(b).plan is not None, fmt
    assert admit(with_model(body(), loadFormat="sharded_state")).plan is not None  # a pvc:// folder
