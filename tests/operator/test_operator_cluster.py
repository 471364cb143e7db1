"""The operator on the simulated GPU cluster, driven through kubectl as users drive it."""

from __future__ import annotations

import signal
import subprocess

import pytest
import yaml

from grok_devcluster import DevCluster
from tests.operatorlib import OPERATOR_NAMESPACE, SERVICE_ACCOUNT, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


# These tests check what the operator writes and reports for full-size Grok-1 on simulated H100/H200 nodes,
# which cannot run here: their pods use an image the pod runner leaves to KWOK (Running and Ready, status
# only). Pods that really run are tested in tests/devcluster/test_pods_run.py.
STATUS_ONLY_IMAGE = "sim.local/grok-server:status-only"
STATUS_ONLY_ROUTER_IMAGE = "sim.local/grok-router:status-only"
SERVERS = "app.kubernetes.io/name=grok-server"


def grokd(name: str, **spec) -> dict:
    spec.setdefault("model", {"uri": "pvc://weights/grok-1", "quantization": "fp8"})
    spec["server"] = {"image": STATUS_ONLY_IMAGE, **(spec.get("server") or {})}
    spec["router"] = {"image": STATUS_ONLY_ROUTER_IMAGE, **(spec.get("router") or {})}
    return {
        "apiVersion": "serving.grok.dev/v1alpha1",
        "kind": "GrokDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def weights_claim() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "weights"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "400Gi"}}},
    }


def apply(cluster: DevCluster, ns: str, *manifests: dict) -> subprocess.CompletedProcess[str]:
    return cluster.apply(manifests, namespace=ns, check=False)


def get(cluster: DevCluster, ns: str, kind: str, name: str) -> dict | None:
    result = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return yaml.safe_load(result.stdout) if result.returncode == 0 else None


def conditions(cluster: DevCluster, ns: str, name: str) -> dict[str, dict]:
    body = get(cluster, ns, "grokdeployment", name) or {}
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def events(cluster: DevCluster, ns: str, name: str) -> list[dict]:
    items = cluster.get_json(
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.kind=GrokDeployment,involvedObject.name={name}",
    )["items"]
    return items


def wait_phase(cluster: DevCluster, ns: str, name: str, phase: str, timeout: float = 120) -> dict:
    def reached():
        body = get(cluster, ns, "grokdeployment", name)
        status = (body or {}).get("status") or {}
        gen = (body or {}).get("metadata", {}).get("generation")
        return body if status.get("phase") == phase and status.get("observedGeneration") == gen else None

    return wait_for(reached, timeout, message=f"{name} phase {phase}")


def container_image(deployment: dict | None) -> str | None:
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"] if deployment else None


def server_pods(cluster: DevCluster, ns: str, name: str) -> list[dict]:
    return cluster.get_json("pods", "-n", ns, "-l", f"{SERVERS},serving.grok.dev/deployment={name}")["items"]


def test_apply_places_tensor_parallel_pods_on_the_requested_gpus(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    assert apply(devcluster, ns, weights_claim(), grokd("grok", replicas=2)).returncode == 0
    body = wait_phase(devcluster, ns, "grok", "Ready")
    status = body["status"]
    assert status["plan"]["tensorParallelSize"] == 8
    assert status["readyReplicas"] == 2 and status["replicas"] == 2
    assert status["endpoint"] == f"grok.{ns}.svc:50051"
    pods = server_pods(devcluster, ns, "grok")
    assert len(pods) == 2
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2, "replicas spread over nodes"
    for pod in pods:
        node = devcluster.get_json("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    children = [("service", "grok"), ("poddisruptionbudget", "grok"), ("service", "grok-servers"),
                *((kind, "grok-router") for kind in ("deployment", "serviceaccount", "role", "rolebinding"))]
    for kind, name in children:
        child = get(devcluster, ns, kind, name)
        assert child is not None, f"{kind} {name}"
        assert child["metadata"]["ownerReferences"][0]["kind"] == "GrokDeployment"
    # The GrokDeployment's address is its router; the servers' own Service is headless (clients that bypass
    # the router balance over its pods themselves).
    front = get(devcluster, ns, "service", "grok")["spec"]
    assert front["selector"]["app.kubernetes.io/name"] == "grok-router"
    servers = get(devcluster, ns, "service", "grok-servers")["spec"]
    assert servers["clusterIP"] == "None" and servers["selector"]["app.kubernetes.io/name"] == "grok-server"
    assert status["httpEndpoint"] == f"http://grok.{ns}.svc:8080/v1"
    router = get(devcluster, ns, "deployment", "grok-router")["spec"]["template"]["spec"]
    assert router["serviceAccountName"] == "grok-router"
    assert f"{SERVERS},serving.grok.dev/deployment=grok" in router["containers"][0]["args"]
    # Least privilege: the router may read pods in its namespace, and nothing else.
    account = f"system:serviceaccount:{ns}:grok-router"
    for verb, what, where, allowed in (("watch", "pods", ns, "yes"), ("list", "pods", ns, "yes"),
                                       ("list", "pods", "default", "no"), ("get", "secrets", ns, "no"),
                                       ("delete", "pods", ns, "no")):
        answer = devcluster.kubectl("auth", "can-i", verb, what, "-n", where, "--as", account, check=False)
        assert answer.stdout.strip() == allowed, (verb, what, where, answer.stdout, answer.stderr)
    printed = devcluster.kubectl("get", "grokd", "grok", "-n", ns).stdout
    assert printed.split("\n")[0].split() == ["NAME", "REPLICAS", "READY", "TP", "MODEL", "PHASE", "AGE"]
    assert printed.split("\n")[1].split()[:6] == ["grok", "2", "2", "8", "pvc://weights/grok-1", "Ready"]
    assert any(e["reason"] == "Planned" for e in events(devcluster, ns, "grok"))


def test_update_rolls_out_and_scale_goes_through_the_scale_subresource(
    devcluster, k8s_namespace, grok_operator
):
    ns = k8s_namespace
    apply(devcluster, ns, weights_claim(), grokd("grok", replicas=1, gpu={"product": "NVIDIA-H200"}))
    wait_phase(devcluster, ns, "grok", "Ready")
    before = get(devcluster, ns, "deployment", "grok")

    apply(
        devcluster,
        ns,
        grokd("grok", replicas=1, gpu={"product": "NVIDIA-H200"}, server={"maxConcurrentRequests": 64}),
    )
    body = wait_phase(devcluster, ns, "grok", "Ready")
    after = get(devcluster, ns, "deployment", "grok")
    args = after["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-concurrent-requests") + 1] == "64"
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert body["status"]["observedGeneration"] == 2
    assert after["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    devcluster.kubectl("scale", "grokdeployment", "grok", "-n", ns, "--replicas=2")
    wait_for(
        lambda: (get(devcluster, ns, "deployment", "grok") or {}).get("spec", {}).get("replicas") == 2,
        message="Deployment scaled to 2",
    )
    body = wait_phase(devcluster, ns, "grok", "Ready")
    assert body["status"]["readyReplicas"] == 2
    scale = devcluster.get_json("grokdeployment", "grok", "-n", ns, "--subresource=scale")
    assert scale["status"]["replicas"] == 2
    assert (
        scale["status"]["selector"] == "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment=grok"
    )


def test_an_edit_the_api_server_refuses_is_reported_not_shown_as_applied(
    devcluster, k8s_namespace, grok_operator
):
    ns = k8s_namespace
    apply(devcluster, ns, weights_claim(), grokd("grok", replicas=1))
    wait_phase(devcluster, ns, "grok", "Ready")
    # The schema lets resources through as written; the API server refuses the Deployment that carries it.
    apply(devcluster, ns, grokd("grok", replicas=1, server={"resources": {"requests": {"cpu": "lots"}}}))
    wait_for(
        lambda: any(e["reason"] == "ReconcileFailed" for e in events(devcluster, ns, "grok")),
        60,
        message="a ReconcileFailed Event",
    )
    for pod in server_pods(devcluster, ns, "grok"):  # pod and Deployment events refresh the status
        devcluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", ns, "--wait=false")

    def failed_condition():
        body = get(devcluster, ns, "grokdeployment", "grok") or {}
        cond = conditions(devcluster, ns, "grok").get("Progressing") or {}
        return (body, cond) if cond.get("reason") == "ReconcileFailed" else None

    body, cond = wait_for(failed_condition, 60, message="Progressing=False ReconcileFailed")
    assert cond["status"] == "False" and "quantities must match" in cond["message"]
    wait_for(lambda: len(server_pods(devcluster, ns, "grok")) == 1, 60, message="the old pod replaced")
    body = get(devcluster, ns, "grokdeployment", "grok")
    assert body["status"]["observedGeneration"] == 1 < body["metadata"]["generation"]


def test_too_few_gpus_leaves_pods_pending_and_says_why(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    # bf16 Grok-1 on H200 takes 8 GPUs a replica; the session cluster has two H200 nodes: the third
    # replica has nowhere to go.
    apply(
        devcluster,
        ns,
        weights_claim(),
        grokd("grok", replicas=3, gpu={"product": "NVIDIA-H200"}, model={"uri": "pvc://weights/grok-1"}),
    )
    wait_for(
        lambda: conditions(devcluster, ns, "grok").get("Unschedulable", {}).get("status") == "True",
        message="Unschedulable condition",
    )
    cond = conditions(devcluster, ns, "grok")
    assert cond["Unschedulable"]["reason"] == "InsufficientGPUs"
    assert "Insufficient nvidia.com/gpu" in cond["Unschedulable"]["message"]
    assert cond["Degraded"]["status"] == "True"

    # Two pods bound, one per H200 node, and one that no node can take. (A bound pod is Pending too until it
    # runs, so the phase does not tell them apart.)
    def split():
        pods = server_pods(devcluster, ns, "grok")
        unbound = [p for p in pods if not p["spec"].get("nodeName")]
        refused = [
            c
            for p in unbound
            for c in p["status"].get("conditions") or []
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        ]
        return len(pods) == 3 and len(unbound) == 1 and len(refused) == 1

    wait_for(split, 120, message="two pods on nodes and one the scheduler could not place")
    warned = wait_for(
        lambda: [e for e in events(devcluster, ns, "grok") if e["reason"] == "InsufficientGPUs"],
        message="InsufficientGPUs event",
    )
    assert warned[0]["type"] == "Warning"


def test_schema_rejects_an_invalid_spec_with_the_api_servers_message(devcluster, k8s_namespace):
    bad = grokd("grok", parallelism={"tensor": "eight"})
    result = apply(devcluster, k8s_namespace, bad)
    assert result.returncode != 0
    assert "spec.parallelism.tensor must be auto or an integer from 1 to 64" in result.stderr
    result = apply(devcluster, k8s_namespace, grokd("grok", model={"uri": "ftp://weights"}))
    assert "spec.model.uri in body should match" in result.stderr
    # Only what vLLM accepts as --quantization: an int8 option once crash-looped every server pod.
    int8 = grokd("grok", model={"uri": "pvc://w/m", "quantization": "int8"})
    result = apply(devcluster, k8s_namespace, int8)
    assert 'spec.model.quantization: Unsupported value: "int8"' in result.stderr
    # Rollout values a Deployment would refuse are refused here, before the operator builds one.
    result = apply(devcluster, k8s_namespace, grokd("grok", rollout={"maxSurge": 0, "maxUnavailable": "0%"}))
    assert "rollout.maxSurge and rollout.maxUnavailable cannot both be 0" in result.stderr
    result = apply(devcluster, k8s_namespace, grokd("grok", rollout={"maxSurge": "abc"}))
    assert result.returncode != 0 and "maxSurge" in result.stderr
    result = apply(devcluster, k8s_namespace, grokd("grok", rollout={"maxUnavailable": -1}))
    assert result.returncode != 0 and "maxUnavailable" in result.stderr
    assert apply(devcluster, k8s_namespace, grokd("grok", rollout={"maxSurge": "25%"})).returncode == 0


def test_planner_refuses_what_cannot_fit_with_a_condition_and_an_event(
    devcluster, k8s_namespace, grok_operator
):
    ns = k8s_namespace
    apply(
        devcluster, ns, weights_claim(), grokd("grok", model={"uri": "pvc://weights/grok-1"},
                                              parallelism={"maxNodesPerReplica": 1})
    )  # bf16 on H100 needs two nodes a replica
    body = wait_phase(devcluster, ns, "grok", "Invalid")
    cond = {c["type"]: c for c in body["status"]["conditions"]}
    assert cond["PlanValid"]["status"] == "False"
    assert cond["PlanValid"]["reason"] == "TooManyNodesPerReplica"
    assert "needs 2 nodes" in cond["PlanValid"]["message"]
    warned = wait_for(
        lambda: [e for e in events(devcluster, ns, "grok") if e["reason"] == "TooManyNodesPerReplica"],
        message="planner event",
    )
    assert warned[0]["type"] == "Warning"
    assert get(devcluster, ns, "deployment", "grok") is None, "nothing is started for a spec that cannot work"
    # What grok-server would refuse at start, refused here first: fp8 on a GPU without fp8 tensor cores, and
    # engine arguments that force an attention backend dropping Grok-1's soft-cap (the server's words).
    from grok_common.attention import Device, refusal

    apply(devcluster, ns,
          grokd("a100", model={"uri": "pvc://weights/grok-1", "quantization": "fp8_per_block"},
                gpu={"product": "NVIDIA-A100-SXM4-80GB"}),
          grokd("flashinfer", server={"engineArgs": ["--engine-arg", "attention_backend=FLASHINFER"]}))
    for name, reason, says in (
        ("a100", "FP8Unsupported", "quantization fp8_per_block needs fp8 tensor cores, which "
                                   "NVIDIA-A100-SXM4-80GB (compute capability 8.0) does not have"),
        ("flashinfer", "AttentionBackendDropsSoftCap",
         "spec.server.engineArgs: " + refusal("FLASHINFER", Device("cuda", (9, 0)))),
    ):
        cond = {c["type"]: c for c in wait_phase(devcluster, ns, name, "Invalid")["status"]["conditions"]}
        assert (cond["PlanValid"]["status"], cond["PlanValid"]["reason"]) == ("False", reason)
        assert cond["PlanValid"]["message"].startswith(says)
        wait_for(lambda name=name, reason=reason: [e for e in events(devcluster, ns, name)
                                                   if e["reason"] == reason and e["type"] == "Warning"],
                 message=f"{reason} event")
        assert get(devcluster, ns, "deployment", name) is None


def test_drift_is_repaired(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    apply(devcluster, ns, weights_claim(), grokd("grok"))
    wait_phase(devcluster, ns, "grok", "Ready")
    uid = get(devcluster, ns, "service", "grok")["metadata"]["uid"]
    devcluster.kubectl("delete", "service", "grok", "-n", ns)
    wait_for(
        lambda: (
            (get(devcluster, ns, "service", "grok") or {}).get("metadata", {}).get("uid") not in (None, uid)
        ),
        message="Service recreated",
    )
    devcluster.kubectl("set", "image", "deployment/grok", "server=someone/else:latest", "-n", ns)
    wait_for(  # a read that fails (None) is "not yet", like any other
        lambda: container_image(get(devcluster, ns, "deployment", "grok")) == STATUS_ONLY_IMAGE,
        message="image restored",
    )
    devcluster.kubectl("scale", "deployment", "grok", "-n", ns, "--replicas=5")
    wait_for(
        lambda: (get(devcluster, ns, "deployment", "grok") or {}).get("spec", {}).get("replicas") == 1,
        message="replicas restored",
    )
    assert wait_for(
        lambda: [e for e in events(devcluster, ns, "grok") if e["reason"] == "DriftRepaired"],
        message="DriftRepaired event",
    )


def test_fetched_model_gets_a_cache_and_a_job_before_servers_start(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    apply(devcluster, ns, grokd("grok", model={"uri": "hf://hpcai-tech/grok-1", "quantization": "fp8"}))
    body = wait_phase(devcluster, ns, "grok", "Ready")
    cond = {c["type"]: c for c in body["status"]["conditions"]}
    assert cond["ModelReady"]["status"] == "True"
    jobs = devcluster.get_json("jobs", "-n", ns)["items"]
    claims = devcluster.get_json("pvc", "-n", ns)["items"]
    assert len(jobs) == 1 and len(claims) == 1
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "--uri",
        "hf://hpcai-tech/grok-1",
    ]
    volumes = get(devcluster, ns, "deployment", "grok")["spec"]["template"]["spec"]["volumes"]
    model = next(v for v in volumes if v["name"] == "model")
    assert model["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]
    # A second deployment of the same model reuses the cache: no second download.
    apply(devcluster, ns, grokd("grok-b", model={"uri": "hf://hpcai-tech/grok-1", "quantization": "fp8"}))
    wait_phase(devcluster, ns, "grok-b", "Ready")
    assert len(devcluster.get_json("jobs", "-n", ns)["items"]) == 1
    owners = {
        r["name"] for r in devcluster.get_json("jobs", "-n", ns)["items"][0]["metadata"]["ownerReferences"]
    }
    assert owners == {"grok", "grok-b"}
    # A new server image rolls out; the Job that filled the cache (its template cannot change) is left as is.
    job_image = jobs[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    apply(devcluster, ns, grokd("grok", model={"uri": "hf://hpcai-tech/grok-1", "quantization": "fp8"},
                                server={"image": "sim.local/grok-server:9.9.9"}))
    wait_for(
        lambda: container_image(get(devcluster, ns, "deployment", "grok")) == "sim.local/grok-server:9.9.9",
        60,
        message="the Deployment to get the new server image",
    )
    wait_phase(devcluster, ns, "grok", "Ready")
    job = devcluster.get_json("jobs", "-n", ns)["items"][0]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == job_image
    assert not [e for e in events(devcluster, ns, "grok") if e["reason"] == "ReconcileFailed"]


def test_missing_claim_is_reported_then_picked_up(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    apply(devcluster, ns, grokd("grok"))
    wait_phase(devcluster, ns, "grok", "Failed")
    cond = conditions(devcluster, ns, "grok")["ModelReady"]
    assert cond["reason"] == "ClaimNotFound"
    assert "PersistentVolumeClaim 'weights' not found" in cond["message"]
    apply(devcluster, ns, weights_claim())
    wait_phase(devcluster, ns, "grok", "Ready")


def test_delete_leaves_nothing_behind(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    apply(devcluster, ns, weights_claim(), grokd("grok"))
    wait_phase(devcluster, ns, "grok", "Ready")
    devcluster.kubectl("delete", "grokdeployment", "grok", "-n", ns, "--wait=true")

    def all_gone():
        left = devcluster.kubectl(
            "get",
            "deployments,services,pdb,pods,jobs",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=grok-operator",
            "-o",
            "name",
        ).stdout.split()
        return not left or None

    wait_for(all_gone, message="children garbage-collected")


def test_operator_restarted_mid_reconcile_resumes_without_duplicates(
    devcluster, k8s_namespace, operator_kubeconfig, grok_operator, tmp_path
):
    ns, count, allowed = k8s_namespace, 12, 6
    names = sorted(f"g{i}" for i in range(count))

    def deployment_names() -> list[str]:
        return sorted(d["metadata"]["name"] for d in devcluster.get_json("deployments", "-n", ns)["items"])

    def refused_by_quota() -> set[str]:
        items = devcluster.get_json("events", "-n", ns, "--field-selector", "reason=ReconcileFailed")["items"]
        return {e["involvedObject"]["name"] for e in items if "exceeded quota" in e.get("message", "")}

    def quota_counted() -> bool:
        body = get(devcluster, ns, "resourcequota", "some-deployments") or {}
        return "count/deployments.apps" in ((body.get("status") or {}).get("hard") or {})

    # "Mid-reconcile" is a state the test holds, not a moment it hopes to hit: a quota lets the first operator
    # create only some of the Deployments, so that it surely dies with work left, however fast it is.
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "some-deployments"},
        "spec": {"hard": {"count/deployments.apps": str(allowed)}},
    }
    assert apply(devcluster, ns, quota).returncode == 0
    # Until the quota controller has counted, admission refuses every Deployment.
    wait_for(quota_counted, 120, message="the quota's status")
    tiny = {"uri": "pvc://weights/grok-1", "profile": "grok-1-tiny", "maxModelLen": 1024}
    grok_operator.stop(signal.SIGKILL)  # the session operator dies; a new one takes its place
    first = second = None
    try:
        # One Deployment each (no router: the quota counts the servers' Deployments only).
        apply(devcluster, ns, weights_claim(),
              *[grokd(name, model=tiny, router={"enabled": False}) for name in names])
        first = OperatorProcess(devcluster, operator_kubeconfig, tmp_path / "first.log")
        first.wait_leading()  # the killed operator's Lease must expire first
        wait_for(
            lambda: len(deployment_names()) == allowed and len(refused_by_quota()) == count - allowed,
            240,
            message=f"the first operator to create {allowed} Deployments and be refused the rest",
        )
        assert first.stop(signal.SIGKILL) != 0  # killed mid-reconcile: half the children are missing
        assert len(deployment_names()) == allowed
        devcluster.kubectl("delete", "resourcequota", "some-deployments", "-n", ns)

        second = OperatorProcess(devcluster, operator_kubeconfig, tmp_path / "second.log")
        second.wait_leading()  # the dead leader's Lease must expire first
        for name in names:
            wait_phase(devcluster, ns, name, "Ready", timeout=180)
        assert deployment_names() == names
        services = sorted(s["metadata"]["name"] for s in devcluster.get_json("services", "-n", ns)["items"])
        assert services == sorted([*names, *(f"{n}-servers" for n in names)])  # each once: no duplicates
        replica_sets = devcluster.get_json("replicasets", "-n", ns)["items"]
        assert len(replica_sets) == count, "no spurious rollouts from the restart"
    finally:
        if first is not None:
            first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()  # a clean stop hands the Lease over at once
        # Hand the session fixture a working operator again.
        grok_operator.__init__(devcluster, operator_kubeconfig, grok_operator.log_path)
        grok_operator.wait_leading()


def test_two_replicas_only_one_acts(devcluster, operator_kubeconfig, grok_operator, tmp_path):
    standby = OperatorProcess(devcluster, operator_kubeconfig, tmp_path / "standby.log")
    try:
        assert standby.read_metric("grok_operator_leader") == 0
        assert grok_operator.read_metric("grok_operator_leader") == 1
        grok_operator.stop()  # a clean stop hands the Lease over at once
        standby.wait_leading()
        assert standby.read_metric("grok_operator_leader") == 1
    finally:
        standby.stop()
        grok_operator.__init__(devcluster, operator_kubeconfig, grok_operator.log_path)
        grok_operator.wait_leading()


def test_chart_rbac_is_enough_and_no_more(devcluster):
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"

    def can(*args: str) -> bool:
        result = devcluster.kubectl("auth", "can-i", *args, f"--as={account}", check=False)
        return result.stdout.strip() == "yes"

    for verb, resource in [
        ("watch", "grokdeployments.serving.grok.dev"),
        ("patch", "grokdeployments/status"),
        ("patch", "deployments.apps"),
        ("create", "services"),
        ("watch", "pods"),
        ("create", "jobs.batch"),
        ("create", "poddisruptionbudgets.policy"),
        ("create", "events"),
    ]:
        assert can(verb, resource, "-A"), f"{verb} {resource}"
    for verb, resource in [
        ("get", "secrets"),
        ("delete", "deployments.apps"),
        ("delete", "pods"),
        ("create", "pods"),
        ("list", "nodes"),
        ("create", "clusterroles"),
        ("delete", "grokdeployments.serving.grok.dev"),
        ("update", "configmaps"),
    ]:
        assert not can(verb, resource, "-A"), f"the operator must not {verb} {resource}"
    assert can("update", "leases.coordination.k8s.io", "-n", OPERATOR_NAMESPACE)
    assert not can("update", "leases.coordination.k8s.io", "-n", "default")
