"""Children of a GrokDeployment as the operator builds them (pure functions)."""

import copy
import dataclasses

import pytest

from grok_operator.api.resource import INSTANCE_LABEL, GrokDeploymentSpec, ModelSource
from grok_operator.control.reconcile import ReconcileResult, is_subset
from grok_operator.manifests.children import desired_children
from grok_operator.manifests.group import WORKER_SWITCHES, WORKER_VALUE_FLAGS, engine_flags
from grok_operator.manifests.model_cache import cache_claim_name, cache_size_gib, fetch_job, model_cache_claim
from grok_operator.manifests.router import router_deployment, router_role
from grok_operator.manifests.server import deployment, server_args
from grok_operator.manifests.services import servers_service, service
from grok_operator.observe.children import failing_pod_messages, model_state, unschedulable_messages
from grok_operator.observe.status import Observed, conditions_and_phase, merge_conditions
from grok_operator.plan.admission import plan_request
from grok_operator.plan.planner import plan


def body(**spec):
    return {
        "metadata": {"name": "grok", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": {"model": {"uri": "pvc://weights/grok-1", "quantization": "fp8"}, **spec},
    }


def built(**spec):
    s = GrokDeploymentSpec.from_body(body(**spec))
    return s, plan(plan_request(s))


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_server_pods_request_the_planned_gpus_on_the_requested_product():
    spec, p = built(replicas=2)
    d = deployment(spec, p)
    pod = d["spec"]["template"]["spec"]
    assert container(d)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    args = container(d)["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert args[args.index("--model") + 1] == "/models/grok-1"
    # vLLM's current name: `fp8` on bf16 weights is deprecated there (mapped to fp8_per_tensor).
    assert args[args.index("--quantization") + 1] == "fp8_per_tensor"
    assert d["spec"]["replicas"] == 2
    assert d["metadata"]["ownerReferences"][0] == {
        "apiVersion": "serving.grok.dev/v1alpha1",
        "kind": "GrokDeployment",
        "name": "grok",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_pods_are_built_to_load_slowly_drain_and_share_memory():
    spec, p = built(server={"startupTimeoutSeconds": 1200, "drainSeconds": 90})
    d = deployment(spec, p)
    c, pod = container(d), d["spec"]["template"]["spec"]
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] == 1200
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # not ready while loading or draining
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 90
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_server_args_are_what_grok_server_accepts():
    # The pod's args go to the image's entrypoint, grok-server: parse them with its own parser, so that a flag
    # renamed on either side fails here rather than crash-looping every server pod.
    from grok_server.server.config import parse_args

    spec, p = built(
        model={"uri": "pvc://weights/grok-1", "quantization": "fp8", "dtype": "bfloat16"},
        server={"drainSeconds": 90, "maxConcurrentRequests": 64,
                "engineArgs": ["--engine-arg", "max_num_batched_tokens=4096"]},
    )
    d = deployment(spec, p)
    cfg = parse_args(container(d)["args"])
    assert cfg.model == "/models/grok-1" and cfg.served_model_name == "grok"
    assert cfg.tensor_parallel_size == 8 and cfg.quantization == "fp8_per_tensor" and cfg.dtype == "bfloat16"
    assert cfg.drain_grace_seconds == 90 < d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert cfg.max_concurrent_requests == 64 and cfg.port == 50051 and cfg.metrics_port == 9090
    assert cfg.engine_args == {"max_num_batched_tokens": 4096}
    assert str(cfg.compile_cache_dir) == "/var/cache/grok-serve/compile"


def test_user_passthrough_is_merged_but_cannot_change_the_gpu_count():
    spec, p = built(
        server={
            "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "900Gi"}},
            "nodeSelector": {"pool": "serving"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "inference",
        }
    )
    d = deployment(spec, p)
    pod = d["spec"]["template"]["spec"]
    assert container(d)["resources"]["limits"] == {"nvidia.com/gpu": "8", "memory": "900Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "serving"}
    assert {"key": "dedicated", "operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "inference"


def _compile_cache(template):
    pod = template["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "compile-cache"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "compile-cache"]
    args = pod["containers"][0]["args"]
    return volume, mount["mountPath"], args[args.index("--compile-cache-dir") + 1]


def test_the_compile_cache_is_a_folder_of_the_node_by_default():
    spec, p = built()
    volume, mounted, flag = _compile_cache(deployment(spec, p)["spec"]["template"])
    assert volume == {"name": "compile-cache",
                      "hostPath": {"path": "/var/cache/grok-serve/compile", "type": "DirectoryOrCreate"}}
    assert mounted == flag == "/var/cache/grok-serve/compile"


@pytest.mark.parametrize("source", [
    {"persistentVolumeClaim": {"claimName": "compile-rwx"}},  # one cache per cluster
    {"emptyDir": {}},  # a cache per pod: in effect off
    {"hostPath": {"path": "/mnt/nvme/grok-compile", "type": "Directory"}},
])
def test_the_compile_cache_volume_is_the_one_the_spec_names(source):
    spec, p = built(server={"compileCache": source})
    volume, mounted, flag = _compile_cache(deployment(spec, p)["spec"]["template"])
    assert volume == {"name": "compile-cache", **source}
    assert mounted == flag == "/var/cache/grok-serve/compile"  # in the pod, always the same folder


def test_a_host_path_compile_cache_without_a_type_may_be_created():
    spec, p = built(server={"compileCache": {"hostPath": {"path": "/srv/cc"}}})
    volume, _, _ = _compile_cache(deployment(spec, p)["spec"]["template"])
    assert volume["hostPath"] == {"path": "/srv/cc", "type": "DirectoryOrCreate"}


@pytest.mark.parametrize("source, words", [
    ({"hostPath": {"path": "/a"}, "emptyDir": {}}, "exactly one"),
    ({}, "exactly one"),
    ({"hostPath": {"path": "relative"}}, "absolute"),
    ({"persistentVolumeClaim": {}}, "claimName"),
])
def test_a_compile_cache_the_crd_would_refuse_is_an_invalid_spec(source, words):
    from grok_operator.plan.admission import admit

    error = admit(body(server={"compileCache": source})).refusal
    assert error is not None and error[0] == "InvalidSpec" and words in error[1]


def test_the_crd_defaults_the_compile_cache_as_the_operator_does():
    from pathlib import Path

    import yaml

    from grok_operator.api.spec import DEFAULT_COMPILE_CACHE

    crd = yaml.safe_load((Path(__file__).parents[2] / "charts/grok-operator/crds/"
                          "grokdeployments.serving.grok.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    cache = schema["properties"]["spec"]["properties"]["server"]["properties"]["compileCache"]
    assert cache["default"] == DEFAULT_COMPILE_CACHE
    assert set(cache["properties"]) == {"hostPath", "persistentVolumeClaim", "emptyDir"}
    assert "exactly one" in cache["x-kubernetes-validations"][0]["message"]
    assert "lastStartup" in schema["properties"]["status"]["properties"]


def test_fetched_models_share_one_cache_volume_and_job_per_model():
    a = GrokDeploymentSpec.from_body(body(model={"uri": "hf://hpcai-tech/grok-1", "quantization": "fp8"}))
    b_body = body(model={"uri": "hf://hpcai-tech/grok-1", "quantization": "fp8"})
    b_body["metadata"]["name"] = "other"
    b = GrokDeploymentSpec.from_body(b_body)
    assert cache_claim_name(a) == cache_claim_name(b)
    job = fetch_job(a)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["--uri", "hf://hpcai-tech/grok-1"]
    assert job["metadata"]["ownerReferences"][0]["controller"] is False
    claim = model_cache_claim(a)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == f"{cache_size_gib(a)}Gi"
    assert 700 < cache_size_gib(a) < 720  # the published bf16 checkpoint (≈633 GB) plus room
    d = deployment(a, plan(plan_request(a)))
    vol = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"]["claimName"] == cache_claim_name(a)


def test_model_uri_parsing():
    assert ModelSource.parse("pvc://claim/a/b/").path == "a/b"
    assert ModelSource.parse("s3://bucket/prefix").needs_fetch
    with pytest.raises(ValueError, match="must look like"):
        ModelSource.parse("https://example/x")


def test_unknown_gpu_product_needs_its_memory():
    spec = GrokDeploymentSpec.from_body(body(gpu={"product": "NVIDIA-RTX-PRO-6000"}))
    with pytest.raises(
        ValueError, match=r"unknown GPU product 'NVIDIA-RTX-PRO-6000': set spec.gpu.memoryGiB"
    ):
        plan_request(spec)
    spec = GrokDeploymentSpec.from_body(body(gpu={"product": "NVIDIA-RTX-PRO-6000", "memoryGiB": 96}))
    assert plan(plan_request(spec)).gpu_memory_gib == 96


def test_drift_detection_tolerates_server_defaults_but_not_edits():
    desired = {
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"image": "a", "ports": [{"containerPort": 1}]}]}},
        }
    }
    live = {
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {"containers": [{"image": "a", "ports": [{"containerPort": 1, "protocol": "TCP"}]}]}
            },
        }
    }
    assert is_subset(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "b"
    assert not is_subset(desired, live)


def test_drift_detection_knows_the_api_server_drops_empty_maps_and_lists():
    # With a ServiceMonitor the pod template has no scrape annotations: {} is stored as nothing at all.
    spec, p = built()
    desired = deployment(spec, p, scrape_annotations=False)
    live = copy.deepcopy(desired)
    del live["spec"]["template"]["metadata"]["annotations"]
    assert is_subset(desired, live)
    assert is_subset({"args": []}, {}) and not is_subset({"args": ["x"]}, {})


def test_status_tells_why_pods_wait():
    pods = [
        {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/5 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            }
        }
    ]
    _, p = built(replicas=2)
    observed = Observed(
        desired_replicas=2,
        plan=p,
        replicas=2,
        ready_replicas=1,
        updated_replicas=2,
        unschedulable=unschedulable_messages(pods),
    )
    conditions, phase = conditions_and_phase(observed)
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Unschedulable"]["status"] == "True"
    assert by_type["Unschedulable"]["reason"] == "InsufficientGPUs"
    assert "Insufficient nvidia.com/gpu" in by_type["Unschedulable"]["message"]
    assert by_type["Degraded"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False"
    assert phase == "Degraded"


def test_phases():
    _, p = built()
    assert (
        conditions_and_phase(Observed(1, plan=p, replicas=1, ready_replicas=1, updated_replicas=1))[1]
        == "Ready"
    )
    assert conditions_and_phase(Observed(1, plan=p, model_state="Fetching"))[1] == "Fetching"
    assert conditions_and_phase(Observed(0, plan=p))[1] == "ScaledToZero"
    assert conditions_and_phase(Observed(1, plan_error=("InsufficientGPUMemory", "no")))[1] == "Invalid"
    assert (
        conditions_and_phase(Observed(2, plan=p, replicas=2, ready_replicas=1, updated_replicas=2))[1]
        == "Progressing"
    )


def test_a_failed_fetch_says_grok_fetchs_own_reason_from_its_last_pod():
    job = {"metadata": {"name": "grok-fetch-1"}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}}

    def pod(finished: str, message: str) -> dict:
        return {"status": {"containerStatuses": [{"name": "fetch", "state": {"terminated": {
            "exitCode": 2, "finishedAt": finished, "message": message}}}]}}

    pods = [pod("2026-12-02T00:00:09Z", "botocore noise\ngrok-fetch: error: NoSuchBucket (the last try)\n"),
            pod("2026-12-02T00:00:01Z", "grok-fetch: error: an older try")]
    state, message = model_state(job, pods)
    assert state == "FetchFailed"
    assert message == ("fetch Job grok-fetch-1 failed: Job has reached the specified backoff limit; its last "
                       "pod: grok-fetch: error: NoSuchBucket (the last try)")
    assert model_state(job, [])[1] == ("fetch Job grok-fetch-1 failed: Job has reached the specified "
                                       "backoff limit")
    assert len(model_state(job, [pod("2026-12-02T00:00:09Z", "e" * 5000)])[1]) < 600  # a condition, not a log


def test_the_fetch_job_keeps_its_logs_tail_as_the_termination_message():
    spec, _ = built(model={"uri": "s3://bucket/grok-1"})
    (fetch,) = fetch_job(spec)["spec"]["template"]["spec"]["containers"]
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_fetch_job_states():
    job = {"metadata": {"name": "grok-fetch-1"}, "status": {}}
    assert model_state(job)[0] == "Fetching"
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}
    assert model_state(job) == ("FetchFailed", "fetch Job grok-fetch-1 failed: BackoffLimitExceeded")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert model_state(job)[0] == "Ready"


def test_condition_timestamps_move_only_on_change():
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}]
    same = merge_conditions(old, [{"type": "Ready", "status": "True"}], 2, timestamp="t1")
    flipped = merge_conditions(old, [{"type": "Ready", "status": "False"}], 2, timestamp="t1")
    assert same[0]["lastTransitionTime"] == "t0"
    assert flipped[0]["lastTransitionTime"] == "t1"


def test_an_invalid_edit_keeps_reporting_what_still_serves():
    # A bad edit leaves the running Deployment alone; the status must not claim it went to 0 replicas, and
    # the scale subresource's selector (what HPA and KEDA read) must stay.
    old = {"replicas": 2, "readyReplicas": 2, "selector": "a=b", "endpoint": "grok.ml.svc:50051"}
    live = {"metadata": {"generation": 4}, "status": {"observedGeneration": 4, "replicas": 2,
                                                     "readyReplicas": 2, "updatedReplicas": 2}}
    status = ReconcileResult(None, None, ("InsufficientGPUMemory", "does not fit")).status(old, 5, [], live)
    assert status["phase"] == "Invalid"
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["selector"] == "a=b" and status["endpoint"] == "grok.ml.svc:50051"


def test_degraded_means_something_is_wrong_not_that_something_is_starting():
    _, p = built()

    def degraded(o):
        conds, phase = conditions_and_phase(o)
        return next(c for c in conds if c["type"] == "Degraded"), phase

    cond, phase = degraded(Observed(1, plan=p, model_state="Fetching", model_message="fetching"))
    assert cond["status"] == "False" and phase == "Fetching"  # a first download is not a fault
    cond, phase = degraded(Observed(2, plan=p, replicas=2, ready_replicas=1, updated_replicas=2))
    assert cond["status"] == "False" and phase == "Progressing"  # loading
    crash = Observed(2, plan=p, replicas=2, ready_replicas=1, updated_replicas=2,
                     failing_pods=["pod grok-1: container server CrashLoopBackOff: back-off 5m0s"])
    cond, phase = degraded(crash)
    assert cond["status"] == "True" and cond["reason"] == "PodsFailing"
    assert "CrashLoopBackOff" in cond["message"]
    assert phase == "Degraded"
    stalled = Observed(2, plan=p, replicas=2, ready_replicas=1, updated_replicas=2,
                       stalled="ReplicaSet grok-abc has timed out progressing.")
    cond, phase = degraded(stalled)
    assert cond["status"] == "True" and cond["reason"] == "ProgressDeadlineExceeded" and phase == "Degraded"


def test_failing_pods_are_named_with_the_kubelets_reason():
    def pod(name, reason, message=None):
        waiting = {"reason": reason, **({"message": message} if message else {})}
        return {"metadata": {"name": name},
                "status": {"containerStatuses": [{"name": "server", "state": {"waiting": waiting}}]}}

    pods = [
        pod("a", "CrashLoopBackOff", "back-off"),
        pod("b", "ContainerCreating"),
        pod("c", "ImagePullBackOff", "no such image"),
    ]
    assert failing_pod_messages(pods) == [
        "pod a: container server CrashLoopBackOff: back-off",
        "pod c: container server ImagePullBackOff: no such image",
    ]


def test_failing_pods_are_named_from_the_operators_pod_index():
    """The status is computed from the operator's pod index, not from whole pods: the index must carry what
    naming a failing pod needs (a real crash loop raised KeyError 'metadata' on every pod event)."""
    from types import SimpleNamespace

    from grok_operator.control.indexes import server_pods

    status = {"containerStatuses": [{"name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
    entry = server_pods(namespace="ns", labels={"serving.grok.dev/deployment": "grok"},
                        meta=SimpleNamespace(name="grok-5d9-x", creation_timestamp="2026-12-01T00:00:00Z"),
                        status=status)
    assert failing_pod_messages(list(entry.values())) == ["pod grok-5d9-x: container server CrashLoopBackOff"]


def test_server_service_monitors_carry_the_labels_prometheus_selects_on():
    # kube-prometheus-stack selects ServiceMonitors by label (release: <name>): without it, nothing is
    # scraped and the autoscaler never gets a metric.
    spec, p = built()
    children = desired_children(spec, p, monitor_labels={"release": "kps"})
    monitor = next(c for c in children if c["kind"] == "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["metadata"]["labels"]["serving.grok.dev/deployment"] == "grok"  # ours stay
    assert "ServiceMonitor" not in {c["kind"] for c in desired_children(spec, p, monitor_labels=None)}


def test_the_router_fronts_the_deployment_with_least_privilege():
    spec, the_plan = built(router={"holdTimeoutSeconds": 600, "prefixBlocks": 4})
    kinds = [(c["kind"], c["metadata"]["name"]) for c in desired_children(spec, the_plan, None)]
    assert {("Deployment", "grok-router"), ("ServiceAccount", "grok-router"), ("Role", "grok-router"),
            ("RoleBinding", "grok-router"), ("Service", "grok"), ("Service", "grok-servers")} <= set(kinds)
    (rule,) = router_role(spec)["rules"]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    router = router_deployment(spec)
    pod = router["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "grok-router" and "nvidia.com/gpu" not in str(pod)
    args = pod["containers"][0]["args"]
    assert args[args.index("--selector") + 1] == spec.selector  # the server pods, not the routers
    assert args[args.index("--namespace") + 1] == "ml"
    assert args[args.index("--host") + 1] == "$(POD_IP)"
    assert args[args.index("--hold-timeout-seconds") + 1] == "600"
    assert args[args.index("--prefix-blocks") + 1] == "4"
    assert args[args.index("--model-name") + 1] == "grok"  # the servers' --served-model-name
    front = service(spec)["spec"]
    assert front["selector"] == spec.router_selector_labels
    assert [p["name"] for p in front["ports"]] == ["grpc", "http"]
    servers = servers_service(spec)["spec"]
    assert servers["clusterIP"] == "None" and servers["selector"] == spec.selector_labels


def test_without_the_router_the_service_selects_the_servers():
    spec, the_plan = built(router={"enabled": False})
    kinds = {c["kind"] for c in desired_children(spec, the_plan, None)}
    assert not kinds & {"Role", "RoleBinding", "ServiceAccount"}
    front = service(spec)["spec"]
    assert front["selector"] == spec.selector_labels and "clusterIP" not in front


def test_servers_age_their_connections_for_clients_that_bypass_the_router():
    spec, the_plan = built(server={"maxConnectionAgeSeconds": 120})
    args = server_args(spec, the_plan)
    assert args[args.index("--max-connection-age-seconds") + 1] == "120"
    assert int(args[args.index("--max-connection-age-grace-seconds") + 1]) >= 3600


def test_a_multi_node_plan_is_a_leader_worker_set_of_whole_groups():
    spec, the_plan = built(model={"uri": "pvc://weights/grok-1"}, replicas=2,
                           parallelism={"topologyKey": "cloud.example/rack"})  # bf16 on H100: 8 x 2
    assert the_plan.multi_node and the_plan.nodes_per_replica == 2
    children = {c["kind"]: c for c in desired_children(spec, the_plan, None)}
    assert "Deployment" not in children or children["Deployment"]["metadata"]["name"] != "grok"
    lws = children["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["spec"]["replicas"] == 2
    exclusive = "leaderworkerset.sigs.k8s.io/exclusive-topology"
    assert lws["metadata"]["annotations"] == {exclusive: "cloud.example/rack"}
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupAfterStart"
    rolling = lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": 0}
    leader, worker = group["leaderTemplate"], group["workerTemplate"]
    # The Services, the router and the scale subresource select leaders only.
    assert leader["metadata"]["labels"]["app.kubernetes.io/name"] == "grok-server"
    assert worker["metadata"]["labels"]["app.kubernetes.io/name"] != "grok-server"
    assert worker["metadata"]["labels"]["app.kubernetes.io/component"] == "server"  # in status and Degraded
    for template in (leader, worker):
        pod = template["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"  # every pod: one node's worth, same product
        assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    lead = leader["spec"]["containers"][0]
    args = lead["args"]
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--node-rank") + 1] == "0"
    assert args[args.index("--master-addr") + 1] == "$(LWS_LEADER_ADDRESS)"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert "readinessProbe" in lead and {p["name"] for p in lead["ports"]} == {"grpc", "metrics"}
    work = worker["spec"]["containers"][0]
    assert work["args"][work["args"].index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)"
    assert "ports" not in work and "readinessProbe" not in work and "livenessProbe" not in work
    assert work["command"] == ["grok-server-worker"] and "--leader-wait-seconds" in work["args"]
    assert {"name": "VLLM_HOST_IP", "value": "$(POD_IP)"} in work["env"]
    # Every rank of the group compiles: leader and workers use the node's compile cache alike.
    for template in (leader, worker):
        volume, mounted, flag = _compile_cache(template)
        assert "hostPath" in volume and mounted == flag == "/var/cache/grok-serve/compile"


def test_workers_get_the_engine_flags_of_engine_args_and_never_the_serving_ones():
    args = ["--enforce-eager", "--host", "0.0.0.0", "--kv-cache-memory-bytes", "268435456",
            "--max-concurrent-requests", "8", "--engine-arg", "enable_prefix_caching=true",
            "--max-num-seqs=4", "--no-warmup", "--tokenizer", "/t", "--dtype", "float32", "--max-model-len",
            "512", "--quantization=fp8"]
    # Every rank must agree on the engine: whatever engineArgs changes of it reaches the workers too.
    assert engine_flags(args) == ["--enforce-eager", "--kv-cache-memory-bytes", "268435456",
                                            "--engine-arg", "enable_prefix_caching=true", "--max-num-seqs=4",
                                            "--tokenizer", "/t", "--dtype", "float32", "--max-model-len",
                                            "512", "--quantization=fp8"]


def test_the_worker_flags_are_the_engine_flags_grok_server_worker_accepts():
    from grok_server.server.config import build_worker_parser

    planned = {"--model", "--tensor-parallel-size", "--pipeline-parallel-size"}
    accepted = {option for action in build_worker_parser()._actions
                if action.container.title == "model and engine" for option in action.option_strings
                if option.startswith("--") and option not in ("--tp", "--pp")}
    switches = {o for a in build_worker_parser()._actions if a.nargs == 0 for o in a.option_strings}
    assert accepted - planned - switches == WORKER_VALUE_FLAGS
    assert accepted & switches == WORKER_SWITCHES


def test_the_leader_worker_sets_own_service_name_is_none_of_ours():
    """LWS makes a headless Service named like the LeaderWorkerSet (its pods' DNS: LWS_LEADER_ADDRESS); one
    of the operator's Services by that name is refused (two controller owners) or, made first, taken by LWS
    as its headless Service, and the group's leader address does not resolve on a cluster."""
    spec, the_plan = built(model={"uri": "pvc://weights/grok-1"})
    children = desired_children(spec, the_plan, None)
    (lws,) = [c for c in children if c["kind"] == "LeaderWorkerSet"]
    services = {c["metadata"]["name"] for c in children if c["kind"] == "Service"}
    assert lws["metadata"]["name"] not in services
    assert lws["metadata"]["labels"][INSTANCE_LABEL] == spec.name  # how the operator finds it


def test_a_single_node_plan_stays_a_deployment():
    spec, the_plan = built()
    kinds = {c["kind"] for c in desired_children(spec, the_plan, None)}
    assert "Deployment" in kinds and "LeaderWorkerSet" not in kinds


def test_without_the_leader_worker_set_api_nothing_is_half_made():
    _, the_plan = built(model={"uri": "pvc://weights/grok-1"})
    blocked = ("LeaderWorkerSetMissing", "the plan needs 2 nodes ...: install it")
    observed = Observed(desired_replicas=1, plan=the_plan, blocked=blocked)
    conditions, phase = conditions_and_phase(observed)
    found = {c["type"]: c for c in conditions}
    assert phase == "Failed"
    assert found["Degraded"]["status"] == "True" and found["Degraded"]["reason"] == "LeaderWorkerSetMissing"
    assert found["Progressing"]["status"] == "False" and "install it" in found["Degraded"]["message"]
    assert found["PlanValid"]["status"] == "True"  # the plan is fine; the cluster lacks an API


def test_node_cache_gives_the_server_its_node_folder_and_prefers_nodes_holding_the_model():
    from grok_operator.manifests.node_cache import node_label

    spec, p = built(server={"affinity": {"podAntiAffinity": {"x": 1}}})
    pod = deployment(spec, p)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    assert args[args.index("--node-cache-dir") + 1] == "/var/cache/grok-serve/models"
    assert "--node-cache-max-bytes" not in args and "--engine-arg" not in args
    assert {"name": "node-cache", "mountPath": "/var/cache/grok-serve/models"} in c["volumeMounts"]
    assert {"name": "node-cache", "hostPath": {"path": "/var/cache/grok-serve/models",
                                              "type": "DirectoryOrCreate"}} in pod["volumes"]
    assert pod["affinity"]["podAntiAffinity"] == {"x": 1}  # the user's, kept
    (pref,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref["preference"]["matchExpressions"] == [{"key": node_label(spec), "operator": "In",
                                                       "values": ["true"]}]
    assert node_label(spec).startswith("models.grok.dev/") and "requiredDuringScheduling" not in str(pod)
    # Nodes are cluster-wide: the same uri in another namespace (another claim, another fetch) is another
    # model on the node, and must not be preferred as this one.
    elsewhere = dataclasses.replace(spec, namespace=spec.namespace + "-other")
    assert node_label(elsewhere) != node_label(spec) and len(node_label(spec).split("/")[1]) <= 63


def test_node_cache_options_and_load_format_reach_grok_server_and_off_means_none():
    from grok_server.server.config import parse_args

    spec, p = built(model={"uri": "pvc://weights/grok-1", "quantization": "fp8", "loadFormat": "safetensors",
                           "nodeCache": {"path": "/mnt/nvme/models", "maxSize": "2Ti",
                                         "verify": "sizes"}})
    pod = deployment(spec, p)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--node-cache-max-bytes") + 1] == str(2 * 1024**4)
    assert args[args.index("--engine-arg") + 1] == "load_format=safetensors"
    assert pod["volumes"][-1]["hostPath"]["path"] == "/mnt/nvme/models"
    cfg = parse_args([a.replace("$(POD_IP)", "127.0.0.1") for a in args])
    assert cfg.node_cache_max_bytes == 2 * 1024**4 and cfg.engine_args["load_format"] == "safetensors"
    assert cfg.node_cache_verify == "sizes"
    spec, p = built(model={"uri": "pvc://weights/grok-1", "quantization": "fp8",
                           "nodeCache": {"enabled": False}})
    pod = deployment(spec, p)["spec"]["template"]["spec"]
    assert "--node-cache-dir" not in pod["containers"][0]["args"] and "affinity" not in pod
    assert all(v["name"] != "node-cache" for v in pod["volumes"])
