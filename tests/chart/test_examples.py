"""examples/: each one valid against the CRD (the API server's own validation), planned without error,
documented; the autoscaler examples target the scale subresource; and the tiny CPU demo reconciled to
Ready by the operator running with the chart's RBAC."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import grpc
import pytest
import yaml
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import DevCluster
from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.plan.admission import plan_request
from grok_operator.plan.planner import plan
from tests.chart.conftest import CRD_NAME, CRDS, EXAMPLES
from tests.operatorlib import bind_weights, wait_for

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
GROKD = ("serving.grok.dev/v1alpha1", "GrokDeployment")
# Kinds whose CRDs the simulated cluster does not have: checked structurally instead.
EXTERNAL_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(docs: list[dict], api_version: str, kind: str) -> list[dict]:
    return [d for d in docs if (d["apiVersion"], d["kind"]) == (api_version, kind)]


def crd_version() -> dict:
    (crd,) = load(CRDS / "grokdeployments.serving.grok.dev.yaml")
    return crd["spec"]["versions"][0]


def spec_of(name: str) -> dict:
    (grokd,) = of_kind(load(EXAMPLES / name), *GROKD)
    return grokd["spec"]


def test_the_examples_the_issue_asks_for_exist_and_are_described():
    names = {p.name for p in EXAMPLE_FILES}
    assert names >= {
        "grok-1-fp8-h100.yaml",
        "grok-1-bf16-h200.yaml",
        "grok-1-tiny-cpu.yaml",
        "grok-1-autoscaled.yaml",
        "grok-1-hpa.yaml",
        "grok-1-keda.yaml",
    }
    readme = (EXAMPLES / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"{name} is not described in examples/README.md"


def test_examples_say_what_they_promise():
    fp8 = spec_of("grok-1-fp8-h100.yaml")
    assert fp8["model"]["uri"] == "hf://hpcai-tech/grok-1"
    assert fp8["model"]["quantization"] == "fp8_per_tensor"
    assert fp8["gpu"]["product"] == "NVIDIA-H100-80GB-HBM3"
    bf16 = spec_of("grok-1-bf16-h200.yaml")
    assert bf16["model"]["quantization"] == "none" and bf16["gpu"]["product"] == "NVIDIA-H200"
    tiny = spec_of("grok-1-tiny-cpu.yaml")
    assert tiny["model"]["uri"].startswith("pvc://")
    assert tiny["model"]["profile"] == "grok-1-tiny" and tiny["model"]["maxModelLen"] == 1024
    # The demo cluster (hack/demo.py) has H100 nodes.
    assert tiny["gpu"]["product"] == "NVIDIA-H100-80GB-HBM3"
    auto = spec_of("grok-1-autoscaled.yaml")["autoscaling"]
    assert auto["metric"] == "waitingRequestsPerReplica"
    assert auto["minReplicas"] <= auto["maxReplicas"] and auto["target"] > 0
    assert {"scaleUpStabilizationSeconds", "scaleDownStabilizationSeconds"} <= set(auto)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_plans_on_its_gpus(path):
    """What the operator would do with it: a plan, not a PlanError (model too large, bad TP, ...)."""
    grokds = of_kind(load(path), *GROKD)
    assert grokds, f"{path.name} has no GrokDeployment"
    for body in grokds:
        result = plan(plan_request(GrokDeploymentSpec.from_body(copy.deepcopy(body))))
        tensor = body["spec"].get("parallelism", {}).get("tensor", "auto")
        if tensor != "auto":
            assert result.tensor_parallel_size == tensor
        assert result.max_concurrent_sequences >= 4


@pytest.mark.parametrize("name", ["grok-1-hpa.yaml", "grok-1-keda.yaml"])
def test_external_autoscalers_target_the_scale_subresource(name):
    docs = load(EXAMPLES / name)
    (grokd,) = of_kind(docs, *GROKD)
    assert "autoscaling" not in grokd["spec"], "one autoscaler only: HPA/KEDA, not also spec.autoscaling"
    scalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) == 1
    assert scalers[0]["spec"]["scaleTargetRef"] == {
        "apiVersion": "serving.grok.dev/v1alpha1",
        "kind": "GrokDeployment",
        "name": grokd["metadata"]["name"],
    }
    scale = crd_version()["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["labelSelectorPath"] == ".status.selector"


def test_keda_example_queries_the_servers_own_metric_for_its_deployment():
    docs = load(EXAMPLES / "grok-1-keda.yaml")
    (grokd,) = of_kind(docs, *GROKD)
    (scaled,) = of_kind(docs, "keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert re.match(r"^https?://", meta["serverAddress"])
    assert isinstance(meta["threshold"], str) and float(meta["threshold"]) > 0  # KEDA metadata is strings
    name = grokd["metadata"]["name"]
    # The series and the label the operator's own autoscaler queries (grok_operator.scale.prometheus).
    assert re.fullmatch(
        r'sum\(grok_requests_waiting\{namespace="[a-z0-9-]+",serving_grok_dev_deployment="'
        + re.escape(name)
        + r'"\}\)',
        meta["query"],
    ), meta["query"]


@pytest.mark.cluster
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_passes_server_side_dry_run(devcluster, k8s_namespace, grok_crd, path):
    docs = [d for d in load(path) if (d["apiVersion"], d["kind"]) not in EXTERNAL_KINDS]
    result = devcluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        k8s_namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout


@pytest.mark.cluster
def test_server_side_dry_run_refuses_an_invalid_example(devcluster, k8s_namespace, grok_crd):
    """The check above is the CRD's: a wrong value in an example fails it, with the schema's message."""

    def refused(change) -> str:
        (body,) = of_kind(load(EXAMPLES / "grok-1-autoscaled.yaml"), *GROKD)
        change(body["spec"])
        result = devcluster.kubectl(
            "apply",
            "--dry-run=server",
            "-n",
            k8s_namespace,
            "-f",
            "-",
            input=yaml.safe_dump(body),
            check=False,
        )
        assert result.returncode != 0
        return result.stderr

    # The OpenAPI schema (enums, ranges) ...
    assert 'spec.model.quantization: Unsupported value: "fp4"' in refused(
        lambda spec: spec["model"].update(quantization="fp4")
    )
    # ... and its CEL rules.
    assert "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" in refused(
        lambda spec: spec["autoscaling"].update(minReplicas=9)
    )
    # Limits are per tenant, and tenants are who the keys name; tenant names are the Secret's prefixes.
    assert "router.limits needs router.auth" in refused(
        lambda spec: spec.setdefault("router", {}).update(limits={"default": {"requestsPerSecond": 1}}))
    assert "a tenant name is lowercase letters, digits and '-'" in refused(
        lambda spec: spec.setdefault("router", {}).update(auth={"secretName": "keys"},
                                                         limits={"tenants": {"Team A": {}}}))
    assert "spec.router.auth.secretName: Required value" in refused(
        lambda spec: spec.setdefault("router", {}).update(auth={}))
    assert "spec.router.tls.secretName: Required value" in refused(
        lambda spec: spec.setdefault("router", {}).update(tls={}))


def ready(cluster: DevCluster, ns: str, name: str) -> dict | None:
    body = cluster.get_json("grokdeployment", name, "-n", ns)
    status = body.get("status") or {}
    done = (
        status.get("phase") == "Ready" and status.get("observedGeneration") == body["metadata"]["generation"]
    )
    return body if done else None


@pytest.mark.cluster
def test_operator_with_the_charts_rbac_serves_the_tiny_example(
    devcluster, k8s_namespace, grok_operator, tiny_grok_checkpoint
):
    """The operator process, authenticated as the chart's ServiceAccount with exactly the chart's RBAC
    (the `grok_operator` fixture), reconciles the demo's GrokDeployment, applied as the file is, to Ready:
    its pod runs a real grok-server (the pod runner) on the tiny checkpoint the example's claim holds."""
    ns = k8s_namespace
    example = EXAMPLES / "grok-1-tiny-cpu.yaml"
    claim = next(d for d in yaml.safe_load_all(example.read_text()) if d["kind"] == "PersistentVolumeClaim")
    # What the example's comment asks: the checkpoint in the bound volume's folder, under tiny/.
    bind_weights(devcluster, ns, claim["metadata"]["name"], tiny_grok_checkpoint, claim["spec"])
    applied = devcluster.kubectl("apply", "-n", ns, "-f", str(example), check=False)
    assert applied.returncode == 0, applied.stderr

    body = wait_for(lambda: ready(devcluster, ns, "grok-1-tiny"), timeout=600, interval=1,
                    message="grok-1-tiny Ready")
    status = body["status"]
    assert status["plan"]["tensorParallelSize"] == 1
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"grok-1-tiny.{ns}.svc:50051"
    (pod,) = devcluster.get_json("pods", "-n", ns, "-l",
                                 "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment=grok-1-tiny")["items"]
    node = devcluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "grok-1-tiny-weights"
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "1024"
    printed = devcluster.kubectl("get", "grokd", "grok-1-tiny", "-n", ns).stdout.splitlines()[1].split()
    assert printed[:6] == ["grok-1-tiny", "1", "1", "1", "pvc://grok-1-tiny-weights/tiny", "Ready"]
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        info = pb_grpc.GenerationServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert (info.model, info.max_model_len) == ("grok-1-tiny", 1024)


def test_every_quantization_the_crd_offers_is_one_vllm_accepts():
    # The value goes to grok-server --quantization and on to vLLM: one it does not know crash-loops the pods.
    import typing

    from vllm.model_executor.layers.quantization import QuantizationMethods

    crd = yaml.safe_load((CRDS / f"{CRD_NAME}.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    offered = spec["properties"]["model"]["properties"]["quantization"]["enum"]
    # grok_common.quantization's names, and the deprecated ones it translates (the operator passes on only
    # its own names: test_manifests).
    from grok_common.quantization import DEPRECATED, NAMES

    assert set(offered) == set(NAMES) | set(DEPRECATED)
    assert set(NAMES) - {"none"} <= set(typing.get_args(QuantizationMethods))
