"""The simulated cluster runs the real LeaderWorkerSet controller (sigs.k8s.io/lws; its manager is a local
process serving its webhooks on loopback): LeaderWorkerSets get their StatefulSets, pods, labels and
environment as on a cluster, groups scale and are recreated, and the pod runner resolves a group's leader
address (there is no cluster DNS here), so that pods it really runs reach their leader.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from grok_devcluster import lws
from grok_devcluster.cluster import DevCluster, is_ready
from tests.operatorlib import wait_for

NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
GROUP_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


def leaderworkerset(name: str, size: int = 2, replicas: int = 1, image: str = "sim.local/x:1",
                    leader: dict[str, Any] | None = None,
                    worker: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw LeaderWorkerSet; its pods are status only (KWOK) unless their image is one the runner runs."""
    default = {"name": "main", "image": image}
    template: dict[str, Any] = {"size": size, "workerTemplate": {"spec": {"containers": [worker or default]}}}
    if leader is not None:
        template["leaderTemplate"] = {"spec": {"containers": [leader]}}
    return {"apiVersion": lws.API_VERSION, "kind": "LeaderWorkerSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "leaderWorkerTemplate": template}}


def group_pods(cluster: DevCluster, ns: str, name: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", ns, "-l", f"{NAME_LABEL}={name}")["items"])


def settled_pods(cluster: DevCluster, ns: str, name: str, count: int) -> list[dict[str, Any]] | None:
    """Exactly `count` pods of the set, all Ready and none being deleted, by name; None otherwise."""
    pods = group_pods(cluster, ns, name)
    settled = [p for p in pods if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
    if len(settled) != count or len(pods) != count:
        return None
    return sorted(settled, key=lambda p: p["metadata"]["name"])


def ready_pods(cluster: DevCluster, ns: str, name: str, count: int,
               timeout: float = 90) -> list[dict[str, Any]]:
    return waited(cluster, ns, name, lambda: settled_pods(cluster, ns, name, count), timeout,
                  f"{count} Ready pods of LeaderWorkerSet {name}")


HOLD = "grok-test.dev/hold"  # a finalizer of the tests' own


def diagnosis(cluster: DevCluster, ns: str, name: str) -> str:
    """The set's pods (name, uid, Ready, being deleted) and the end of the manager's log, for a failure."""
    pods = [(m["name"], m["uid"][:8], is_ready(p), "deletionTimestamp" in m)
            for p in group_pods(cluster, ns, name) for m in [p["metadata"]]]
    log = (cluster.lws_dir / "manager.log").read_text().splitlines()[-20:]
    return f"pods: {pods}\nLWS manager log:\n" + "\n".join(log)


def waited(cluster: DevCluster, ns: str, name: str, predicate: Any, timeout: float, message: str) -> Any:
    try:
        return wait_for(predicate, timeout, interval=0.5, message=message)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnosis(cluster, ns, name)}") from None


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env") or []}


# ---- pure: the module's webhook configurations, pointed at the local manager -----------------------------


def test_webhook_configurations_point_at_the_local_manager_with_the_release_patches(tmp_path: Path) -> None:
    """A miniature of the module's config/webhook: its service clientConfigs become URLs with the CA, its
    kustomize patches apply (the pods' webhooks limited to LWS pods), names get the release's prefix."""
    def service(path: str) -> dict[str, Any]:
        return {"service": {"name": "webhook-service", "namespace": "system", "path": path}}

    hook = {"admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "sideEffects": "None",
            "name": "m.kb.io", "clientConfig": service("/mutate-x")}
    pod_hook = {**hook, "name": "mpod.kb.io", "clientConfig": service("/mutate--v1-pod")}
    webhook = tmp_path / "webhook"
    webhook.mkdir()
    (webhook / "manifests.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "mutating-webhook-configuration"}, "webhooks": [hook, pod_hook]},
    ]))
    selector = {"matchExpressions": [{"key": NAME_LABEL, "operator": "Exists"}]}
    patched = {**pod_hook, "objectSelector": selector}
    (webhook / "mutating-patch.yaml").write_text(yaml.safe_dump([{"op": "replace", "path": "/webhooks/1",
                                                                   "value": patched}]))
    (webhook / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["manifests.yaml"], "patches": [
        {"path": "mutating-patch.yaml", "target": {"kind": "MutatingWebhookConfiguration",
                                                   "name": "mutating-webhook-configuration"}}]}))

    [config] = lws.webhook_configurations(tmp_path, "https://127.0.0.1:9443", b"PEM")
    assert config["metadata"]["name"] == "lws-mutating-webhook-configuration"
    first, pods = config["webhooks"]
    assert first["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-x", "caBundle": base64.b64encode(
        b"PEM").decode()}
    assert pods["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate--v1-pod"
    assert pods["objectSelector"]["matchExpressions"][0]["key"] == NAME_LABEL


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = lws.json_patch(doc, [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "remove", "path": "/a/0"},
        {"op": "add", "path": "/b/d~1e", "value": 4},
    ])
    assert out == {"a": [2, 3], "b": {"c": 2, "d/e": 4}}
    assert doc == {"a": [1, 2], "b": {"c": 1}}  # a copy
    with pytest.raises(lws.LwsError):
        lws.json_patch(doc, [{"op": "move", "from": "/a", "path": "/z"}])


def test_the_manager_is_on_by_default_and_can_be_left_out() -> None:
    from grok_devcluster import cli

    assert cli._parser().parse_args(["up"]).lws is True
    assert cli._parser().parse_args(["up", "--no-lws"]).lws is False
    assert DevCluster("x").lws is True and DevCluster("x", lws=False).lws is False
    config = lws.manager_config(9443, Path("/certs"))
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {"enable": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": "/certs"}


# ---- the controller in the simulated cluster ---------------------------------------------------------------


@pytest.mark.cluster
def test_the_manager_runs_beside_the_cluster_with_its_webhooks_on_loopback(devcluster: DevCluster) -> None:
    pid = int((devcluster.lws_dir / "pid").read_text())
    assert (devcluster.workdir / "adopted" / str(pid)).exists()  # `down` stops it with the rest
    hooks = devcluster.get_json("mutatingwebhookconfiguration", "lws-mutating-webhook-configuration")
    urls = [h["clientConfig"]["url"] for h in hooks["webhooks"]]
    assert all(u.startswith("https://127.0.0.1:") for u in urls), urls
    pod_hook = next(h for h in hooks["webhooks"] if h["name"] == "mpod.kb.io")
    # Only LWS pods go through it: the rest of the cluster does not depend on the manager.
    assert pod_hook["objectSelector"]["matchExpressions"][0]["key"] == NAME_LABEL
    assert "Starting" in (devcluster.lws_dir / "manager.log").read_text()


@pytest.mark.cluster
def test_a_leaderworkerset_gets_statefulsets_pods_env_and_labels_and_scales(
        devcluster: DevCluster, k8s_namespace: str) -> None:
    ns, name = k8s_namespace, "grok"
    devcluster.apply([{**leaderworkerset(name), "metadata": {"name": name, "namespace": ns}}])
    leader, worker = ready_pods(devcluster, ns, name, 2)

    # The leader StatefulSet (one leader per group) and the group's worker StatefulSet (owned by the leader).
    sets = {s["metadata"]["name"]: s for s in devcluster.get_json("statefulsets", "-n", ns)["items"]}
    assert set(sets) == {name, f"{name}-0"}
    assert sets[f"{name}-0"]["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    assert devcluster.get_json("service", name, "-n", ns)["spec"]["clusterIP"] == "None"  # the subdomain

    assert (leader["metadata"]["name"], worker["metadata"]["name"]) == (f"{name}-0", f"{name}-0-1")
    for pod, index in ((leader, "0"), (worker, "1")):
        assert pod["metadata"]["labels"][WORKER_LABEL] == index
        assert pod["metadata"]["labels"][GROUP_LABEL] == "0"
        env = env_of(pod)
        assert env["LWS_LEADER_ADDRESS"] == f"{name}-0.{name}.{ns}"  # as the webhook writes it
        assert (env["LWS_GROUP_SIZE"], env["LWS_WORKER_INDEX"]) == ("2", index)
        assert pod["status"]["podIP"].startswith("127.64.")  # status only: KWOK's pods

    devcluster.kubectl("scale", f"leaderworkerset/{name}", "-n", ns, "--replicas=2")
    pods = ready_pods(devcluster, ns, name, 4)
    assert [(p["metadata"]["labels"][GROUP_LABEL], p["metadata"]["labels"][WORKER_LABEL]) for p in pods] == [
        ("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert env_of(pods[3])["LWS_LEADER_ADDRESS"] == f"{name}-1.{name}.{ns}"
    wait_for(lambda: (devcluster.get_json("leaderworkerset", name, "-n", ns).get("status") or {})
             .get("readyReplicas") == 2, 60, interval=0.5, message="the set to count 2 ready groups")


@pytest.mark.cluster
def test_deleting_a_worker_recreates_its_whole_group(devcluster: DevCluster, k8s_namespace: str) -> None:
    """RecreateGroupOnPodRestart (the default): a worker pod being deleted makes LWS delete its leader
    (foreground: the group's worker StatefulSet goes first); the group comes back with new pods, the other
    group untouched.

    LWS acts on a worker it sees Terminating. A kubelet keeps a deleted pod Terminating while it stops it;
    KWOK removes a status-only pod at once, which a busy controller can miss. A finalizer holds the pod here
    as the kubelet's stop would, then lets it go."""
    ns, name = k8s_namespace, "grok"
    devcluster.apply([{**leaderworkerset(name, replicas=2), "metadata": {"name": name, "namespace": ns}}])
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ready_pods(devcluster, ns, name, 4)}
    worker = f"{name}-1-1"
    devcluster.kubectl("patch", "pod", worker, "-n", ns, "--type=merge",
                       "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))

    devcluster.kubectl("delete", "pod", worker, "-n", ns, "--wait=false")
    leader = waited(devcluster, ns, name, lambda: (pod := devcluster.get_json("pod", f"{name}-1", "-n", ns))
                    ["metadata"].get("deletionTimestamp") and pod, 60, "LWS to delete the leader")
    assert leader["metadata"]["uid"] == before[f"{name}-1"]
    devcluster.kubectl("patch", "pod", worker, "-n", ns, "--type=json",
                       "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))

    def recreated() -> dict[str, str] | None:
        pods = settled_pods(devcluster, ns, name, 4) or []
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        if len(now) != 4:
            return None
        return now if all(now[pod] != before[pod] for pod in (f"{name}-1", worker)) else None

    after = waited(devcluster, ns, name, recreated, 90, "group 1 to be recreated")
    assert after[f"{name}-0"] == before[f"{name}-0"] and after[f"{name}-0-1"] == before[f"{name}-0-1"]
    events = devcluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=RecreateGroup",
                                "-o", "json").stdout
    assert any(f"deleted leader pod {name}-1" in e.get("note", e.get("message", ""))
               for e in json.loads(events)["items"]), events[-2000:]


# ---- pods the runner runs: the leader address, resolved ---------------------------------------------------

PORT = 29500
LEADER = textwrap.dedent(f"""
    import os, socket
    server = socket.create_server((os.environ["POD_IP"], {PORT}))
    print("leader listening on", os.environ["POD_IP"], flush=True)
    while True:
        conn, peer = server.accept()
        with conn:
            conn.sendall(("hello from " + os.environ["POD_IP"]).encode())
            print("connection from", peer[0], flush=True)
""")
# Connects to its leader (retrying while the leader starts), then listens on its own address: its readiness
# probe, a tcpSocket probe on that port, passes only once it has talked to the leader. It stays up: a
# container that exits is restarted, and LWS recreates the group of a restarted container.
WORKER = textwrap.dedent(f"""
    import os, socket, sys, time
    address = sys.argv[1]
    print("LWS_LEADER_ADDRESS", os.environ["LWS_LEADER_ADDRESS"], "named",
          os.environ["GROK_DEVCLUSTER_LWS_LEADER_NAME"], flush=True)
    for attempt in range(600):
        try:
            # From its own pod IP (without one, a connection on loopback comes from 127.0.0.1).
            own = (os.environ["POD_IP"], 0)
            with socket.create_connection((address, {PORT}), timeout=2, source_address=own) as conn:
                print("leader said:", conn.recv(100).decode(), flush=True)
                break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(1)
    server = socket.create_server((os.environ["POD_IP"], {PORT}))
    while True:
        server.accept()[0].close()
""")


def runner_container(name: str, script: str, *args: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "grok-serve/server:0.1.0",  # run by the pod runner, in the server image's environment
        "command": ["python", "-c", script, *args],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
    }


@pytest.mark.cluster
def test_run_pods_of_a_group_reach_their_leader_at_its_address(devcluster: DevCluster,
                                                                k8s_namespace: str) -> None:
    ns, name = k8s_namespace, "pair"
    body = leaderworkerset(name, leader=runner_container("leader", LEADER),
                           worker=runner_container("worker", WORKER, "$(LWS_LEADER_ADDRESS)"))
    devcluster.apply([{**body, "metadata": {"name": name, "namespace": ns}}])
    leader, worker = ready_pods(devcluster, ns, name, 2, timeout=120)
    leader_ip, worker_ip = leader["status"]["podIP"], worker["status"]["podIP"]
    assert leader_ip.startswith("127.65.") and worker_ip.startswith("127.65.")  # run by the runner
    # The spec keeps the DNS name; the process got the leader's IP for it, and the name beside it.
    assert env_of(worker)["LWS_LEADER_ADDRESS"] == f"{name}-0.{name}.{ns}"
    worker_log = devcluster.kubectl("logs", worker["metadata"]["name"], "-n", ns).stdout
    assert f"LWS_LEADER_ADDRESS {leader_ip} named {name}-0.{name}.{ns}" in worker_log, worker_log
    assert f"leader said: hello from {leader_ip}" in worker_log, worker_log
    leader_log = devcluster.kubectl("logs", leader["metadata"]["name"], "-n", ns).stdout
    assert f"connection from {worker_ip}" in leader_log, leader_log

    # The worker's process dies: the runner restarts the container, LWS recreates the group (leader first),
    # and the new worker reaches the new leader.
    os.kill(int(worker["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1]), signal.SIGKILL)

    def recreated() -> list[dict[str, Any]] | None:
        pods = settled_pods(devcluster, ns, name, 2)
        return pods if pods and pods[0]["metadata"]["uid"] != leader["metadata"]["uid"] else None

    new_leader, new_worker = waited(devcluster, ns, name, recreated, 120, "the group to be recreated")
    assert new_worker["metadata"]["uid"] != worker["metadata"]["uid"]
    worker_log = devcluster.kubectl("logs", new_worker["metadata"]["name"], "-n", ns).stdout
    assert f"leader said: hello from {new_leader['status']['podIP']}" in worker_log, worker_log


@pytest.mark.cluster
def test_a_worker_waits_for_its_leader_to_have_an_address(devcluster: DevCluster, k8s_namespace: str) -> None:
    """The leader cannot be scheduled yet (its node selector matches no node): the worker, scheduled, waits in
    ContainerCreating saying why, and starts once the leader has an address."""
    ns, name = k8s_namespace, "late"
    label, value = "grok-test.dev/lws-leader", secrets.token_hex(4)
    body = leaderworkerset(name, leader=runner_container("leader", LEADER),
                           worker=runner_container("worker", WORKER, "$(LWS_LEADER_ADDRESS)"))
    body["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["nodeSelector"] = {label: value}
    devcluster.apply([{**body, "metadata": {"name": name, "namespace": ns}}])

    def waiting() -> str | None:
        pod = devcluster.get_json("pod", f"{name}-0-1", "-n", ns)
        state = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}
        return (state.get("waiting") or {}).get("message")

    message = wait_for(lambda: (m := waiting()) and "waiting for the leader" in m and m, 60, interval=0.5,
                       message="the worker to wait for its leader")
    assert f"LeaderWorkerSet {name!r}" in message and "no DNS" in message, message
    devcluster.kubectl("label", "node", "cpu-0", f"{label}={value}")
    try:
        leader_pod, worker = ready_pods(devcluster, ns, name, 2, timeout=120)
    finally:
        devcluster.kubectl("label", "node", "cpu-0", f"{label}-")
    worker_log = devcluster.kubectl("logs", worker["metadata"]["name"], "-n", ns).stdout
    assert f"leader said: hello from {leader_pod['status']['podIP']}" in worker_log, worker_log
