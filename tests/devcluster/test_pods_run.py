"""Pods that run: the server pods the operator makes are run by the simulated cluster's pod runner, for real.

One GrokDeployment of the tiny model (one replica, a real `grok-server` on the CPU with the operator's own
arguments) serves the module's tests in order: start-up and readiness, a gRPC call at the pod's address,
Prometheus pod discovery, `kubectl logs`, and last the drain when the pod is deleted mid-stream. Crash loops
and liveness restarts use pods of their own, which cost no model load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc
from kubernetes import client, watch
from kubernetes import config as kube_config

from grok_devcluster.cluster import DevCluster, is_ready
from grok_devcluster.prometheus import PrometheusServer
from grok_server.server.placement import descendants, process_title
from tests.operatorlib import OperatorProcess, bind_weights, tiny_grokd, wait_for

pytestmark = pytest.mark.cluster

NAME = "tiny"
SERVERS = "app.kubernetes.io/name=grok-server"
SELECTOR = f"{SERVERS},serving.grok.dev/deployment={NAME}"
DRAIN_SECONDS = 60  # generous: the stream in flight at deletion must finish inside it on a slow machine
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--dtype", "float32",
               "--max-num-seqs", "4"]


def grokd(name: str, claim: str, **server: object) -> dict:
    return tiny_grokd(name, {"drainSeconds": DRAIN_SECONDS, "engineArgs": ENGINE_ARGS, **server}, claim)


def pods(cluster: DevCluster, ns: str, selector: str) -> list[dict]:
    return list(cluster.get_json("pods", "-n", ns, "-l", selector)["items"])


def container_pid(pod: dict) -> int:
    """The runner reports each container's process as its containerID, grok-runner://PID."""
    return int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@dataclass
class Served:
    ns: str
    pod: dict
    readiness_seen: list[bool]  # the pod's Ready condition, in the order the API server reported it

    @property
    def ip(self) -> str:
        return str(self.pod["status"]["podIP"])


@pytest.fixture(scope="module")
def namespace(devcluster: DevCluster) -> Iterator[str]:
    ns = f"pods-run-{os.getpid()}"
    devcluster.kubectl("create", "namespace", ns)
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    yield ns
    devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def served(devcluster: DevCluster, grok_operator: OperatorProcess, namespace: str,
           tiny_grok_checkpoint: Path) -> Served:
    bind_weights(devcluster, namespace, "weights", tiny_grok_checkpoint)
    # Watch the pods from before they exist (from the resourceVersion of a listing made before the apply), so
    # that every status the runner writes is seen, in order.
    api = client.CoreV1Api(kube_config.new_client_from_config(str(devcluster.kubeconfig)))
    version = api.list_namespaced_pod(namespace, label_selector=SELECTOR).metadata.resource_version
    seen: list[bool] = []

    def follow() -> None:
        stream = watch.Watch().stream(api.list_namespaced_pod, namespace, label_selector=SELECTOR,
                                      resource_version=version, timeout_seconds=900)
        for event in stream:
            pod = event["raw_object"]
            if (pod.get("status") or {}).get("containerStatuses"):
                seen.append(is_ready(pod))
                if seen[-1]:
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    devcluster.apply([{**grokd(NAME, "weights"), "metadata": {"name": NAME, "namespace": namespace}}])
    pod = wait_for(lambda: next((p for p in pods(devcluster, namespace, SELECTOR) if is_ready(p)), None),
                   600, interval=1, message="the server pod to turn Ready")
    follower.join(timeout=120)
    assert seen and seen[-1], f"the watch saw no Ready status: {seen}"
    return Served(namespace, pod, seen)


def test_the_pod_runs_the_operators_server_and_is_ready_only_once_loaded(devcluster: DevCluster,
                                                                        served: Served) -> None:
    pod = served.pod
    assert served.ip.startswith("127.65."), served.ip
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--host") + 1] == "$(POD_IP)"  # as written by the operator, expanded by the runner
    assert "grok-server" in process_title(container_pid(pod)) or alive(container_pid(pod))
    # Running but not Ready while the model loaded (the startup probe on /readyz), then Ready.
    assert served.readiness_seen[0] is False and served.readiness_seen[-1] is True, served.readiness_seen
    status = pod["status"]["containerStatuses"][0]
    assert "running" in status["state"] and status["restartCount"] == 0
    # The operator puts the server's own account of its start (GET /startup) in the GrokDeployment's status.
    name = pod["metadata"]["name"]

    def last_startup() -> dict | None:
        body = devcluster.get_json("grokdeployment", NAME, "-n", served.ns)
        found = (body.get("status") or {}).get("lastStartup")
        return found if found and found.get("pod") == name else None

    startup = wait_for(last_startup, 120, interval=1, message="status.lastStartup of the Ready pod")
    assert startup["seconds"] > 0
    assert {"imports", "engine_processes"} <= set(startup["phases"]), startup
    assert startup["weightsSource"] and startup["compileCache"] in ("hit", "miss", "off"), startup


def test_a_grpc_call_at_the_pods_address_is_served(served: Served) -> None:
    with grpc.insecure_channel(f"{served.ip}:50051") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        response = stub.Generate(pb.GenerateRequest(
            text="hello", stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True)), timeout=120)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert len(response.token_ids) == 8
    assert info.model == NAME


def test_kubectl_logs_shows_the_servers_output(devcluster: DevCluster, served: Served) -> None:
    logs = devcluster.kubectl("logs", served.pod["metadata"]["name"], "-n", served.ns).stdout
    assert f"serving {NAME} on port 50051" in logs, logs[-2000:]


def test_prometheus_discovers_the_pod_and_drops_it_when_deleted(
    devcluster: DevCluster, served: Served, tmp_path: Path
) -> None:
    prometheus = PrometheusServer(tmp_path, kubeconfig=devcluster.kubeconfig)
    prometheus.start()
    try:
        name = served.pod["metadata"]["name"]

        def scraped() -> list[dict]:
            return [t for t in prometheus.targets()
                    if t["labels"].get("pod") == name and t["health"] == "up"]

        target = wait_for(scraped, 120, interval=1, message="Prometheus to scrape the pod")[0]
        assert target["scrapeUrl"] == f"http://{served.ip}:9090/metrics"
        assert target["labels"]["serving_grok_dev_deployment"] == NAME
        assert target["labels"]["namespace"] == served.ns
        value = wait_for(lambda: prometheus.query(f'grok_build_info{{pod="{name}"}}'), 60,
                         message="a sample of the pod's metrics")
        assert value[0]["metric"]["namespace"] == served.ns
        _delete_mid_stream(devcluster, served)
        wait_for(lambda: not [t for t in prometheus.targets() if t["labels"].get("pod") == name], 120,
                 interval=1, message="Prometheus to drop the deleted pod")
    finally:
        prometheus.stop()


def _delete_mid_stream(devcluster: DevCluster, served: Served) -> None:
    """Deleting a serving pod during a stream: not Ready at once, the stream completes (the server drains
    within the pod's grace period), then the process is gone and the pod released."""
    name = served.pod["metadata"]["name"]
    server_pid = container_pid(served.pod)
    engine = [p for p in descendants(server_pid) if "EngineCore" in process_title(p)]
    assert engine, "no engine-core process under the pod's server"
    tokens = 64
    with grpc.insecure_channel(f"{served.ip}:50051") as channel, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.GenerationServiceStub(channel)
        stream = stub.GenerateStream(pb.GenerateRequest(
            text="drain", stopping=pb.StoppingCriteria(max_new_tokens=tokens, ignore_eos=True)), timeout=300)
        first = next(stream)
        # Held by the test: the stream is surely still running when the pod is deleted.
        for pid in engine:
            os.kill(pid, signal.SIGSTOP)
        try:
            rest = pool.submit(lambda: list(stream))
            devcluster.kubectl("delete", "pod", name, "-n", served.ns, "--wait=false")
            wait_for(lambda: not is_ready(devcluster.get_json("pod", name, "-n", served.ns)), 30,
                     message="the deleted pod to turn not-Ready")
            assert alive(server_pid), "the server must still be draining"
        finally:
            for pid in engine:
                os.kill(pid, signal.SIGCONT)
        parts = [first, *rest.result(timeout=DRAIN_SECONDS)]
    assert sum(len(p.token_ids) for p in parts) == tokens
    assert parts[-1].finish_reason == pb.FINISH_REASON_LENGTH
    wait_for(lambda: not alive(server_pid), DRAIN_SECONDS + 30, message="the server process to exit")
    wait_for(lambda: devcluster.kubectl("get", "pod", name, "-n", served.ns, check=False).returncode != 0,
             60, message="the pod to be released")


def test_a_bad_engine_argument_crash_loops_and_the_deployment_says_so(
    devcluster: DevCluster, grok_operator: OperatorProcess, namespace: str, served: Served
) -> None:
    broken = grokd("broken", "weights", engineArgs=["--no-such-engine-flag"])
    devcluster.apply([{**broken, "metadata": {"name": "broken", "namespace": namespace}}])

    def looping() -> dict | None:
        # Restarted more than once (the first restart is immediate, the next ones back off), and waiting.
        for p in pods(devcluster, namespace, SERVERS + ",serving.grok.dev/deployment=broken"):
            status = (p["status"].get("containerStatuses") or [{}])[0]
            waiting = status.get("state", {}).get("waiting", {})
            if status.get("restartCount", 0) >= 2 and waiting.get("reason") == "CrashLoopBackOff":
                return p
        return None

    pod = wait_for(looping, 180, interval=1, message="the broken pod to crash-loop")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] != 0 and last["reason"] == "Error"
    logs = devcluster.kubectl("logs", pod["metadata"]["name"], "-n", namespace, "--previous", check=False)
    assert "--no-such-engine-flag" in logs.stdout + logs.stderr

    def degraded() -> dict | None:
        body = devcluster.get_json("grokdeployment", "broken", "-n", namespace)
        cond = {c["type"]: c for c in body.get("status", {}).get("conditions") or []}.get("Degraded")
        return cond if cond and cond["status"] == "True" and cond["reason"] == "PodsFailing" else None

    cond = wait_for(degraded, 180, interval=1, message="Degraded/PodsFailing")
    assert pod["metadata"]["name"] in cond["message"] and "CrashLoopBackOff" in cond["message"]
    devcluster.kubectl("delete", "grokdeployment", "broken", "-n", namespace, "--wait=false")


def plain_pod(name: str, command: list[str], **spec: object) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "grok-serve/server:0.1.0", "command": command,
                            "env": [{"name": "POD_IP",
                                     "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                            **spec}],
        },
    }


def test_a_hung_process_fails_liveness_and_is_restarted(devcluster: DevCluster, k8s_namespace: str) -> None:
    pod = plain_pod("hangs", ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                    startupProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 120},
                    livenessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1,
                                   "timeoutSeconds": 1, "failureThreshold": 2})
    devcluster.apply([pod], namespace=k8s_namespace)
    first = wait_for(lambda: (p := devcluster.get_json("pod", "hangs", "-n", k8s_namespace))["status"].get(
        "containerStatuses") and p["status"]["containerStatuses"][0]["started"] and p, 120,
        message="the pod to start (its startup probe passed)")
    assert first["status"]["containerStatuses"][0]["restartCount"] == 0
    pid = container_pid(first)
    os.kill(pid, signal.SIGSTOP)  # the process hangs: it still exists, but answers nothing

    def restarted() -> dict | None:
        p = devcluster.get_json("pod", "hangs", "-n", k8s_namespace)
        s = p["status"]["containerStatuses"][0]
        return p if s["restartCount"] >= 1 and "running" in s["state"] else None

    again = wait_for(restarted, 120, interval=0.5, message="the liveness restart")
    assert container_pid(again) != pid
    assert not alive(pid)
    last = again["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 128 + signal.SIGKILL  # a stopped process ignores SIGTERM: killed after grace

    def unhealthy() -> bool:
        events = devcluster.get_json("events", "-n", k8s_namespace, "--field-selector",
                                     "involvedObject.name=hangs")["items"]
        return any(e["reason"] == "Unhealthy" and "liveness" in e["message"] for e in events)

    wait_for(unhealthy, 60, message="the Unhealthy event")


def test_an_unknown_image_of_ours_waits_with_err_image_pull(
    devcluster: DevCluster, k8s_namespace: str
) -> None:
    pod = plain_pod("unknown", ["true"])
    pod["spec"]["containers"][0]["image"] = "grok-serve/tokenizer:0.0.1"
    devcluster.apply([pod], namespace=k8s_namespace)

    def pull_failed() -> dict | None:
        # Like a kubelet's, the first status says ContainerCreating (before the start is tried): wait past it.
        pod = devcluster.get_json("pod", "unknown", "-n", k8s_namespace)
        statuses = pod["status"].get("containerStatuses")
        state = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and state.get("reason") != "ContainerCreating" else None

    state = wait_for(pull_failed, 120, message="a waiting state past ContainerCreating")
    assert state["reason"] in ("ErrImagePull", "ImagePullBackOff"), state  # back-off after the 1st try
    assert "grok-serve/tokenizer:0.0.1" in state["message"]


def test_binding_all_interfaces_is_refused(devcluster: DevCluster, k8s_namespace: str) -> None:
    # Without --model, grok-server would exit on its arguments before listening, should the runner ever
    # start it: this test never listens beyond loopback, whatever happens.
    pod = plain_pod("wide", ["grok-server", "--host", "0.0.0.0", "--metrics-host", "$(POD_IP)"])
    devcluster.apply([pod], namespace=k8s_namespace)

    def waiting() -> dict | None:
        statuses = devcluster.get_json("pod", "wide", "-n", k8s_namespace)["status"].get("containerStatuses")
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait_for(lambda: (w := waiting()) and w.get("reason") == "CreateContainerConfigError" and w, 60,
                     message="the refusal")
    assert "--host 0.0.0.0 would listen beyond loopback" in state["message"]


def test_down_leaves_no_process_behind(tmp_path: Path) -> None:
    cluster = DevCluster(run_pods=True)
    pids: list[int] = []
    try:
        cluster.up(pools=(), cpu_nodes=1, volumes=0)
        # A container with a child of its own: both must go.
        pod = plain_pod("sleeper", ["sh", "-c", "sleep 100000 & exec sleep 100001"])
        pod["spec"]["nodeSelector"] = {}
        cluster.apply([pod], namespace="default")
        running = wait_for(lambda: (p := cluster.get_json("pod", "sleeper", "-n", "default"))["status"].get(
            "containerStatuses") and "running" in p["status"]["containerStatuses"][0]["state"] and p, 120,
            message="the pod to run")
        main = container_pid(running)
        pids = wait_for(lambda: len(found := [main, *descendants(main)]) == 2 and found, 60,
                        message="the container's two processes")
        assert all(alive(p) for p in pids)
    finally:
        cluster.down()
    assert pids and not any(alive(p) for p in pids)
    assert not cluster.workdir.exists()


def test_kubectl_port_forward_reaches_the_pod(devcluster: DevCluster, k8s_namespace: str) -> None:
    pod = plain_pod("web", ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                    ports=[{"containerPort": 8080}],
                    readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    devcluster.apply([pod], namespace=k8s_namespace)
    wait_for(lambda: is_ready(devcluster.get_json("pod", "web", "-n", k8s_namespace)), 120,
             message="the pod to turn Ready")

    def through_port_forward() -> bytes | None:
        """One `kubectl port-forward` and one request through it. KWOK serves the forward once it has seen
        the runner's PortForward object for the pod, a moment after the pod is created: until then kubectl
        exits ("lost connection to pod") and the caller tries again."""
        forward = subprocess.Popen(
            [str(devcluster.bin_dir / "kubectl"), "port-forward", "-n", k8s_namespace, "pod/web", ":8080"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=devcluster.env())
        try:
            assert forward.stdout is not None
            line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
            if "->" not in line:
                return None
            port = int(line.split("->")[0].rsplit(":", 1)[1])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                return bytes(answer.read())
        finally:
            forward.terminate()
            forward.wait(30)

    body = wait_for(through_port_forward, 120, interval=1, message="an answer through kubectl port-forward")
    assert b"Directory listing" in body


def test_logs_follow_a_pod_recreated_under_the_same_name(
    devcluster: DevCluster, k8s_namespace: str, tmp_path: Path
) -> None:
    """A pod of the same name as an earlier one (a StatefulSet's, a LeaderWorkerSet's) shows its own logs,
    even when the earlier pod's Logs object is still there (garbage collection has not caught up): here one
    owned by something else, pointing at another file, is waiting for it."""
    ns = k8s_namespace
    devcluster.kubectl("create", "configmap", "holder", "-n", ns)
    holder = devcluster.get_json("configmap", "holder", "-n", ns)["metadata"]["uid"]
    stale = tmp_path / "stale.log"
    stale.write_text("2026-01-01T00:00:00.000000000Z stdout F stale\n")
    devcluster.apply([{
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
        "metadata": {"name": "again", "namespace": ns, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "holder", "uid": holder}]},
        "spec": {"logs": [{"containers": ["main"], "logsFile": str(stale)}]},
    }])
    pod = plain_pod("again", ["sh", "-c", "echo fresh; exec sleep 100000"])
    devcluster.apply([pod], namespace=ns)

    def logged() -> str:
        result = devcluster.kubectl("logs", "again", "-n", ns, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    wait_for(lambda: logged() == "fresh", 120, interval=1, message="the pod's own logs")
