"""The pod runner's pure parts: images it owns, command lines, environment, paths, listen checks, probes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grok_devcluster import images, podspec, stages
from grok_devcluster.podspec import PodFacts, SpecError

SERVER = images.resolve("grok-serve/server:0.1.0")
FACTS = PodFacts("p", "ns", "uid-1", "h100-0", "127.65.0.7", "127.0.0.1", "default",
                 {"app": "grok"}, {"note": "x"})


def no_lookup(kind: str, namespace: str, name: str) -> dict[str, str]:
    raise KeyError(name)


@pytest.mark.parametrize(
    ("image", "owned", "known"),
    [
        ("grok-serve/server:0.1.0", True, True),
        ("ghcr.io/acme/grok-serve/server:1.2.3", True, True),
        ("grok-serve/server@sha256:" + "a" * 64, True, True),
        ("grok-serve/router:0.1.0", True, True),
        ("grok-serve/tokenizer:0.1.0", True, False),  # ours, not runnable here: ErrImagePull, not KWOK
        ("grok-serve/operator:0.1.0", False, False),  # the chart's operator pods stay simulated
        ("busybox", False, False),
        ("example.com/not-grok-serve/server:1", False, False),
    ],
)
def test_which_images_the_runner_owns_and_knows(image: str, owned: bool, known: bool) -> None:
    assert images.owned(image) is owned
    assert (images.resolve(image) is not None) is known


def test_dollar_references_expand_like_the_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand("$(A)-$(B)", env) == "1-two"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"  # undefined: left as written
    assert podspec.expand("$$(A)", env) == "$(A)"  # escaped
    assert podspec.expand("$A", env) == "$A"


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
@settings(deadline=None)
def test_text_without_references_is_unchanged(text: str) -> None:
    assert podspec.expand(text, {"A": "1"}) == text


def test_env_in_order_with_downward_api_and_references() -> None:
    assert SERVER is not None
    container = {
        "name": "server",
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "ADDR", "value": "$(POD_IP):50051"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ],
    }
    env = podspec.container_env(container, FACTS, SERVER, no_lookup, {"PATH": "/bin"})
    assert env["ADDR"] == "127.65.0.7:50051"
    assert env["APP"] == "grok"
    assert env["PYTHONUNBUFFERED"] == "1"  # the image's ENV


def test_missing_secret_is_a_clear_error_unless_optional() -> None:
    assert SERVER is not None
    needs = {"name": "c", "envFrom": [{"secretRef": {"name": "creds"}}]}
    with pytest.raises(SpecError, match="secretRef 'creds' not found"):
        podspec.container_env(needs, FACTS, SERVER, no_lookup, {})
    optional = {"name": "c", "envFrom": [{"secretRef": {"name": "creds", "optional": True}}]}
    assert "PATH" not in podspec.container_env(optional, FACTS, SERVER, no_lookup, {})


def test_command_line_is_entrypoint_plus_args_expanded() -> None:
    assert SERVER is not None
    argv = podspec.command_line({"args": ["--host", "$(POD_IP)"]}, SERVER, {"POD_IP": "127.65.0.7"})
    assert argv == ["grok-server", "--host", "127.65.0.7"]
    argv = podspec.command_line({"command": ["grok-fetch"], "args": ["--out", "/models"]}, SERVER, {})
    assert argv == ["grok-fetch", "--out", "/models"]


def test_paths_under_mounts_are_rewritten_longest_first() -> None:
    mounts = {"/models": "/srv/pv-1", "/models/cache": "/srv/empty"}
    assert podspec.rewrite_paths("/models/tiny", mounts) == "/srv/pv-1/tiny"
    assert podspec.rewrite_paths("/models", mounts) == "/srv/pv-1"
    assert podspec.rewrite_paths("/models/cache/x", mounts) == "/srv/empty/x"
    assert podspec.rewrite_paths("--out=/models/a", mounts) == "--out=/srv/pv-1/a"
    assert podspec.rewrite_paths("/modelsX", mounts) == "/modelsX"
    assert podspec.rewrite_paths("hello", mounts) == "hello"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--host", "127.65.0.7", "--metrics-host", "127.65.0.7"], None),
        (["--host=127.65.0.7", "--metrics-host=127.65.0.7"], None),
        (["--host", "127.65.0.7"], "--metrics-host is not set"),
        (["--host", "0.0.0.0", "--metrics-host", "127.65.0.7"], "would listen beyond loopback"),
        (["--host", "[::]", "--metrics-host", "127.65.0.7"], "would listen beyond loopback"),
        (["--host", "$(POD_IP)", "--metrics-host", "127.65.0.7"], "is not an IP address"),
    ],
)
def test_listening_beyond_the_pods_address_is_refused(args: list[str], problem: str | None) -> None:
    assert SERVER is not None
    error = podspec.listen_address_error(["grok-server", *args], SERVER, "127.65.0.7")
    if problem is None:
        assert error is None
        assert podspec.listen_address_error(["python", "-m", "http.server"], SERVER, "127.65.0.7") is None
    else:
        assert error is not None and problem in error


def test_probes_parse_named_ports_and_thresholds() -> None:
    container = {"name": "server", "ports": [{"name": "metrics", "containerPort": 9090}]}
    probe = podspec.parse_probe({"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5,
                                 "failureThreshold": 2}, container, "127.65.0.7")
    assert probe is not None
    assert (probe.kind, probe.host, probe.port, probe.path, probe.period, probe.failure_threshold) == (
        "httpGet", "127.65.0.7", 9090, "/readyz", 5.0, 2)
    with pytest.raises(SpecError, match="names no port"):
        podspec.parse_probe({"tcpSocket": {"port": "grpc"}}, container, "127.65.0.7")
    assert podspec.parse_probe(None, container, "x") is None
    assert probe.scheme == "HTTP"


def test_https_probes_are_run_without_checking_the_certificate(tmp_path: Path) -> None:
    # The router with spec.router.tls probes itself in HTTPS: the kubelet skips certificate checks, so does
    # the pod runner (a self-signed certificate here, from the router's TLS test).
    import http.server
    import ssl
    import threading

    from grok_devcluster.podrunner import run_probe
    from tests.router.test_router_tls import self_signed

    cert, key = self_signed("probe-test")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        container = {"name": "router", "ports": [{"name": "http", "containerPort": server.server_port}]}
        spec = {"httpGet": {"path": "/", "port": "http", "scheme": "HTTPS"}, "timeoutSeconds": 30}
        probe = podspec.parse_probe(spec, container, "127.0.0.1")
        assert probe is not None and probe.scheme == "HTTPS"
        assert run_probe(probe, {})
        assert not run_probe(podspec.parse_probe({**spec, "httpGet": {**spec["httpGet"], "scheme": "HTTP"}},
                                                 container, "127.0.0.1"), {})
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SpecError, match="HTTP or HTTPS"):
        podspec.parse_probe({"httpGet": {"port": 1, "scheme": "FTP"}}, container, "127.0.0.1")


def test_probe_verdict_follows_thresholds() -> None:
    probe = podspec.Probe("tcpSocket", "h", 1, success_threshold=2, failure_threshold=3)
    state = podspec.ProbeState(probe, initially=False)
    assert [state.record(r) for r in (True, True, False, False, True, False)] == [
        False, True, True, True, True, True]
    assert [state.record(False) for _ in range(3)] == [True, False, False]  # 3 in a row, counting the last


def test_crash_loop_backoff_doubles_to_five_minutes() -> None:
    assert [podspec.restart_backoff(n) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
    assert podspec.restart_backoff(50) == 300


@pytest.mark.parametrize(
    ("codes", "policy", "phase"),
    [
        ([None], "Always", "Running"),
        ([0], "Always", "Running"),
        ([0], "Never", "Succeeded"),
        ([1], "Never", "Failed"),
        ([1], "OnFailure", "Running"),
        ([0, None], "Never", "Running"),
    ],
)
def test_pod_phase(codes: list[int | None], policy: str, phase: str) -> None:
    states = [{"state": {"terminated": {"exitCode": c}} if c is not None else {"running": {}}} for c in codes]
    assert podspec.pod_phase(states, policy, started=True) == phase
    assert podspec.pod_phase(states, policy, started=False) == "Pending"


def test_kwok_pod_stages_skip_the_runners_pods_only_when_it_runs() -> None:
    key = images.kwok_exclusion_key()

    def pod_stage_keys(run: bool) -> list[set[str]]:
        return [{e["key"] for e in s["spec"]["selector"]["matchExpressions"]}
                for s in stages.stages(run) if s["spec"]["resourceRef"]["kind"] == "Pod"]

    assert all(key in keys for keys in pod_stage_keys(True))
    assert not any(key in keys for keys in pod_stage_keys(False))
    assert {s["spec"]["resourceRef"]["kind"] for s in stages.stages()} == {"Node", "Pod"}


def test_pod_addresses_are_unique_across_runners_on_one_machine(tmp_path: Path) -> None:
    from grok_devcluster.podrunner import AddressPool

    first, second = AddressPool(registry=tmp_path), AddressPool(registry=tmp_path)  # two clusters' runners
    taken = [first.take(), second.take(), first.take()]
    assert len(set(taken)) == 3 and all(ip.startswith("127.65.") for ip in taken)
    first.give_back(taken[0])
    assert second.take() == taken[0]  # given back: free for anyone
    # An address whose runner died (its file names a pid that is gone) is taken over.
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "127.65.0.97").write_text(str(gone.pid))
    assert AddressPool("127.65.0.96/29", registry=tmp_path).take() == "127.65.0.97"


# ---- LeaderWorkerSet groups: the leader address without cluster DNS -------------------------------------

LWS_LABELS = {podspec.LWS_NAME_LABEL: "grok", podspec.LWS_GROUP_LABEL: "1", podspec.LWS_WORKER_LABEL: "2"}
# As LWS's pod webhook writes it: the leader address first, then the pod's own variables.
LWS_CONTAINER = {"name": "worker", "env": [
    {"name": "LWS_LEADER_ADDRESS", "value": "grok-1.grok.ns"},
    {"name": "LWS_GROUP_SIZE", "value": "3"},
    {"name": "LWS_WORKER_INDEX", "value": "2"},
    {"name": "MASTER", "value": "$(LWS_LEADER_ADDRESS):29500"},
]}


def lws_pod(name: str, worker: str, ip: str | None, group: str = "1", deleting: bool = False) -> dict:
    labels = {**LWS_LABELS, podspec.LWS_GROUP_LABEL: group, podspec.LWS_WORKER_LABEL: worker}
    meta: dict = {"name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip} if ip else {}}


def test_a_group_pods_leader_is_the_same_set_and_group_at_worker_index_0() -> None:
    selector = podspec.leader_selector(LWS_LABELS)
    assert selector == {podspec.LWS_NAME_LABEL: "grok", podspec.LWS_GROUP_LABEL: "1",
                        podspec.LWS_WORKER_LABEL: "0"}
    assert podspec.leader_selector({"app": "grok"}) is None
    assert podspec.leader_selector({podspec.LWS_NAME_LABEL: "grok"}) is None  # no group: not a group's pod
    assert podspec.is_leader({**LWS_LABELS, podspec.LWS_WORKER_LABEL: "0"})
    assert not podspec.is_leader(LWS_LABELS)
    assert not podspec.is_leader({podspec.LWS_WORKER_LABEL: "0"})


def test_the_leader_address_resolves_to_the_live_leaders_ip_once_it_has_one() -> None:
    selector = podspec.leader_selector(LWS_LABELS)
    assert selector is not None
    assert podspec.leader_ip([], selector) is None
    assert podspec.leader_ip([lws_pod("grok-1", "0", None)], selector) is None  # not scheduled/started yet
    old = lws_pod("grok-1", "0", "127.65.0.9", deleting=True)  # its group is being recreated
    assert podspec.leader_ip([old], selector) is None
    others = [lws_pod("grok-0", "0", "127.65.0.3", group="0"), lws_pod("grok-1-1", "1", "127.65.0.5")]
    assert podspec.leader_ip([*others, old, lws_pod("grok-1", "0", "127.65.0.8")], selector) == "127.65.0.8"


def test_the_leader_address_is_the_ip_from_its_definition_on_and_the_name_is_kept() -> None:
    assert SERVER is not None
    assert podspec.wants_leader_address(LWS_CONTAINER)
    assert not podspec.wants_leader_address({"name": "c", "env": [{"name": "OTHER", "value": "x"}]})
    env = podspec.container_env(LWS_CONTAINER, FACTS, SERVER, no_lookup, {}, leader_ip="127.65.0.8")
    assert env["LWS_LEADER_ADDRESS"] == "127.65.0.8"
    assert env["MASTER"] == "127.65.0.8:29500"  # built from it after its definition
    assert env[podspec.LEADER_NAME] == "grok-1.grok.ns"
    assert env["LWS_WORKER_INDEX"] == "2" and env["LWS_GROUP_SIZE"] == "3"
    argv = podspec.command_line({"command": ["python", "-c", "x", "$(LWS_LEADER_ADDRESS)"]}, SERVER, env)
    assert argv[-1] == "127.65.0.8"
    # Without an address to resolve to (not a group's pod), the variables are as written.
    plain = podspec.container_env(LWS_CONTAINER, FACTS, SERVER, no_lookup, {})
    assert plain["LWS_LEADER_ADDRESS"] == "grok-1.grok.ns" and podspec.LEADER_NAME not in plain


def test_a_failed_containers_message_falls_back_to_its_logs_tail_as_a_kubelets_does() -> None:
    log = "".join(f"2026-12-02T00:00:00.000000Z stderr F line {i}\n" for i in range(100))
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    message = podspec.termination_message(fallback, 2, log)
    assert message is not None
    assert message.splitlines() == [f"line {i}" for i in range(20, 100)]  # the last 80 lines
    assert podspec.termination_message(fallback, 0, log) is None  # only on failure
    assert podspec.termination_message({}, 2, log) is None  # the default policy reads a file, not logs
    long = "".join(f"2026-12-02T00:00:00.000000Z stdout F {'x' * 1000}\n" for _ in range(5))
    assert len(podspec.termination_message(fallback, 1, long).encode()) == podspec.FALLBACK_MESSAGE_BYTES


def test_a_host_path_is_a_folder_of_the_pods_own_node(tmp_path):
    from grok_devcluster.podspec import host_path_folder

    a = host_path_folder(tmp_path, "gpu-0", "/var/cache/grok-serve/models", "DirectoryOrCreate")
    b = host_path_folder(tmp_path, "gpu-1", "/var/cache/grok-serve/models", None)
    assert a == tmp_path / "gpu-0/var/cache/grok-serve/models" and a.is_dir() and b.is_dir() and a != b
    with pytest.raises(SpecError, match="does not exist on node gpu-1"):
        host_path_folder(tmp_path, "gpu-1", "/mnt/nvme", "Directory")
    with pytest.raises(SpecError, match="no node"):
        host_path_folder(tmp_path, "", "/x", None)


def test_a_shared_host_path_is_one_folder_every_node_sees(tmp_path):
    """The test run's compile cache (tests/conftest.py) is such a path: a pipeline group recreated on other
    nodes still finds the artifacts its first start compiled, as before nodes had folders of their own."""
    from grok_devcluster.podspec import host_path_folder, shared_host_paths

    shared = str(tmp_path / "run-cache")
    assert shared_host_paths({"GROK_DEVCLUSTER_SHARED_HOST_PATHS": f"{shared}:relative:"}) == (shared,)
    nodes = tmp_path / "nodes"
    for node in ("gpu-0", "gpu-1"):
        assert host_path_folder(nodes, node, shared, None, (shared,)) == Path(shared)
        assert host_path_folder(nodes, node, f"{shared}/sub", None, (shared,)) == Path(shared) / "sub"
    assert Path(shared).is_dir() and not nodes.exists()
    # A path merely starting with the same characters is the node's own.
    assert host_path_folder(nodes, "gpu-0", f"{shared}-other", None, (shared,)).is_relative_to(nodes)
