"""Multi-node replicas on the simulated cluster with the real LeaderWorkerSet controller (and webhooks): what
the operator writes for a two-node plan, what LWS makes of it, and what the status says; and the refusal
where the LeaderWorkerSet API is missing. Full-size Grok-1 cannot run here: the pods are status only."""

from __future__ import annotations

import json

import pytest

from grok_devcluster.cluster import DevCluster, NodePool, is_ready
from tests.operator.test_operator_cluster import (
    STATUS_ONLY_IMAGE,
    apply,
    conditions,
    get,
    grokd,
    weights_claim,
)
from tests.operatorlib import CRDS, OPERATOR_NAMESPACE, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

GROUP = "leaderworkerset.sigs.k8s.io"
HOLD = "grok-test.dev/hold"  # a finalizer of the test's own
LWS = "big-group"  # not "big": LWS names its pods' headless Service like itself, and "big" is the router's


def bf16_on_h100(**spec) -> dict:
    """bf16 Grok-1 does not fit 8 H100s: tensor 8 x pipeline 2, a two-node group per replica."""
    return grokd("big", model={"uri": "pvc://weights/grok-1"}, **spec)


def group_pods(cluster: DevCluster, ns: str) -> list[dict]:
    return list(cluster.get_json("pods", "-n", ns, "-l", f"{GROUP}/name={LWS}")["items"])


def test_a_two_node_replica_is_a_leader_worker_set_group(devcluster, k8s_namespace, grok_operator):
    ns = k8s_namespace
    assert apply(devcluster, ns, weights_claim(), bf16_on_h100()).returncode == 0
    lws = wait_for(lambda: get(devcluster, ns, "leaderworkerset", LWS), 120, message="the LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert get(devcluster, ns, "deployment", "big") is None  # one workload, not two
    # Two Services, two owners: the group's headless one (LWS's, for LWS_LEADER_ADDRESS) and the router's.
    group_service = wait_for(lambda: get(devcluster, ns, "service", LWS), 120, message="LWS's Service")
    assert group_service["spec"]["clusterIP"] == "None"
    assert [o["kind"] for o in group_service["metadata"]["ownerReferences"]] == ["LeaderWorkerSet"]
    router_service = wait_for(lambda: get(devcluster, ns, "service", "big"), 120, message="router Service")
    assert router_service["spec"]["clusterIP"] != "None"
    assert [o["kind"] for o in router_service["metadata"]["ownerReferences"]] == ["GrokDeployment"]

    def running_group() -> list[dict] | None:
        pods = group_pods(devcluster, ns)
        return pods if len(pods) == 2 and all(is_ready(p) for p in pods) else None

    pods = wait_for(running_group, 300, interval=1, message="the group's two pods Ready")
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "one node each"
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == STATUS_ONLY_IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        env = {e["name"] for e in container.get("env") or []}
        assert {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE"} <= env  # the LWS webhook's
    leader = next(p for p in pods if p["metadata"]["labels"][f"{GROUP}/worker-index"] == "0")
    assert leader["metadata"]["labels"]["app.kubernetes.io/name"] == "grok-server"
    body = wait_for(lambda: (b := get(devcluster, ns, "grokdeployment", "big"))
                    and b.get("status", {}).get("phase") == "Ready" and b, 300, message="Ready")
    plan = body["status"]["plan"]
    assert (plan["tensorParallelSize"], plan["pipelineParallelSize"], plan["nodesPerReplica"]) == (8, 2, 2)
    assert body["status"]["readyReplicas"] == 1

    # A second group: the scale subresource counts groups. Three H100 nodes hold one and a half groups:
    # the second group's worker waits for a node, and the status says so.
    devcluster.kubectl("scale", "grokd", "big", "-n", ns, "--replicas", "2")
    def groups() -> int:
        return int((get(devcluster, ns, "leaderworkerset", LWS) or {}).get("spec", {}).get("replicas", -1))

    wait_for(lambda: groups() == 2, 120, message="the LeaderWorkerSet scaled to 2 groups")
    wait_for(lambda: len(group_pods(devcluster, ns)) == 4, 120, message="the second group's pods")
    found = wait_for(lambda: (c := conditions(devcluster, ns, "big")).get("Unschedulable", {}).get(
        "status") == "True" and c, 300, message="Unschedulable for the second group")
    assert found["Unschedulable"]["reason"] == "InsufficientGPUs"
    devcluster.kubectl("scale", "grokd", "big", "-n", ns, "--replicas", "1")
    wait_for(lambda: len(group_pods(devcluster, ns)) == 2, 300, message="back to one group")

    # A worker that goes takes its group with it: the group is recreated whole (the leader too).
    pods = wait_for(running_group, 300, interval=1, message="the group Ready again")
    leader_uid = next(p["metadata"]["uid"] for p in pods
                      if p["metadata"]["labels"][f"{GROUP}/worker-index"] == "0")
    worker = next(p for p in pods if p["metadata"]["labels"][f"{GROUP}/worker-index"] == "1")
    # LWS acts on a worker it sees Terminating; KWOK removes a status-only pod at once (a kubelet keeps it
    # Terminating while it stops it): a finalizer of the test's holds it that long.
    name = worker["metadata"]["name"]
    devcluster.kubectl("patch", "pod", name, "-n", ns, "--type=merge",
                       "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    devcluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false")
    wait_for(lambda: not any(p["metadata"]["uid"] == leader_uid and not p["metadata"].get("deletionTimestamp")
                             for p in group_pods(devcluster, ns)), 120, message="LWS to take the leader down")
    devcluster.kubectl("patch", "pod", name, "-n", ns, "--type=json",
                       "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))

    def recreated() -> bool:
        pods = running_group() or []
        uids = {p["metadata"]["uid"] for p in pods}
        return bool(pods) and leader_uid not in uids and worker["metadata"]["uid"] not in uids

    wait_for(recreated, 300, interval=1, message="the whole group recreated")
    wait_for(lambda: (get(devcluster, ns, "grokdeployment", "big") or {}).get("status", {}).get("phase")
             == "Ready", 300, message="Ready again")


def test_without_the_leader_worker_set_api_a_multi_node_plan_makes_nothing(tmp_path):
    """A cluster without LeaderWorkerSet: the operator (whose LeaderWorkerSet watch waits for the API) says
    so, and makes no half of a replica (no Service, no router)."""
    with DevCluster(run_pods=False, lws=False) as cluster:
        cluster.up([NodePool(2, 8, "NVIDIA-H100-80GB-HBM3", "h100")])
        cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
        cluster.wait_crd_established("grokdeployments.serving.grok.dev")
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)  # its leader-election lease
        operator = OperatorProcess(cluster, cluster.kubeconfig, tmp_path / "operator.log")
        try:
            operator.wait_leading()
            cluster.kubectl("create", "namespace", "multi")
            assert apply(cluster, "multi", weights_claim(), bf16_on_h100()).returncode == 0
            found = wait_for(lambda: (c := conditions(cluster, "multi", "big")).get("Degraded", {}).get(
                "reason") == "LeaderWorkerSetMissing" and c, 120, message="LeaderWorkerSetMissing")
            assert "install" in found["Degraded"]["message"] and found["PlanValid"]["status"] == "True"
            body = get(cluster, "multi", "grokdeployment", "big")
            assert body["status"]["phase"] == "Failed"
            for kind in ("service", "deployment"):
                assert not cluster.get_json(kind, "-n", "multi")["items"], f"a {kind} was made"
        finally:
            operator.stop()
