"""The front door's children (pure): API keys and limits into the router, a credential only the router holds
for the servers, a NetworkPolicy; and without spec.router.auth, none of it. Server pods hold no API token and
write only to their volumes, either way."""

import json

import pytest

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.manifests.children import desired_children
from grok_operator.manifests.front_door import UPSTREAM_TOKEN_FILE, upstream_token_secret
from grok_operator.manifests.group import leader_worker_set
from grok_operator.manifests.router import router_deployment
from grok_operator.manifests.server import deployment
from grok_operator.plan.admission import plan_request
from grok_operator.plan.planner import plan

AUTH = {"auth": {"secretName": "grok-keys"},
        "limits": {"default": {"requestsPerSecond": 2, "concurrentRequests": 4},
                   "tenants": {"team-a": {"generatedTokensPerMinute": 60000}}}}


def built(**spec):
    body = {"metadata": {"name": "grok", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {"model": {"uri": "pvc://weights/grok-1", "quantization": "fp8"}, **spec}}
    s = GrokDeploymentSpec.from_body(body)
    return s, plan(plan_request(s))


def server_container(d):
    return d["spec"]["template"]["spec"]["containers"][0]


def test_without_auth_the_door_is_open_and_nothing_of_it_is_made():
    spec, p = built()
    kinds = {c["kind"] for c in desired_children(spec, p, None)}
    assert "NetworkPolicy" not in kinds
    router = server_container(router_deployment(spec))
    assert "--api-keys-dir" not in router["args"] and "volumeMounts" not in router
    assert "--auth-token-file" not in server_container(deployment(spec, p))["args"]


@pytest.mark.parametrize("router", [{}, AUTH])
def test_server_pods_hold_no_api_token_and_write_only_to_their_volumes(router):
    spec, p = built(router=router)
    pod = deployment(spec, p)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/home/grok/.cache", "/home/grok/.config", "/dev/shm"} <= writable
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_with_auth_the_router_gets_the_keys_the_limits_and_the_servers_credential():
    spec, p = built(router=AUTH)
    router = router_deployment(spec)["spec"]["template"]["spec"]
    (container,) = router["containers"]
    args = container["args"]
    keys_dir = args[args.index("--api-keys-dir") + 1]
    assert args[args.index("--upstream-token-file") + 1] == UPSTREAM_TOKEN_FILE
    assert json.loads(args[args.index("--tenant-limits") + 1]) == {
        "default": {"requestsPerSecond": 2.0, "concurrentRequests": 4},
        "tenants": {"team-a": {"generatedTokensPerMinute": 60000}}}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in router["volumes"]}
    assert volumes[mounts[keys_dir]]["secret"]["secretName"] == "grok-keys"
    token_dir = UPSTREAM_TOKEN_FILE.rsplit("/", 1)[0]
    assert volumes[mounts[token_dir]]["secret"]["secretName"] == "grok-upstream-token"
    # The servers accept only that credential, from the same Secret.
    server = deployment(spec, p)["spec"]["template"]["spec"]
    (serving,) = server["containers"]
    assert serving["args"][serving["args"].index("--auth-token-file") + 1] == UPSTREAM_TOKEN_FILE
    assert {v["name"]: v for v in server["volumes"]}["upstream-token"]["secret"]["secretName"] == \
        "grok-upstream-token"
    secret = upstream_token_secret(spec, "s3cret")
    assert secret["stringData"] == {"token": "s3cret"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_the_network_policy_lets_only_the_router_group_peers_and_scrapers_reach_the_servers():
    spec, p = built(router=AUTH, server={"grpcPort": 6000, "metricsPort": 9100})
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    (policy,) = [c for c in desired_children(spec, p, None, [prometheus]) if c["kind"] == "NetworkPolicy"]
    servers = {"serving.grok.dev/deployment": "grok", "app.kubernetes.io/component": "server"}
    assert policy["spec"]["podSelector"] == {"matchLabels": servers}
    grpc, group, metrics = policy["spec"]["ingress"]
    assert grpc == {"from": [{"podSelector": {"matchLabels": spec.router_selector_labels}}],
                    "ports": [{"protocol": "TCP", "port": 6000}]}
    assert group == {"from": [{"podSelector": {"matchLabels": servers}}]}  # a group's own rendezvous
    assert metrics == {"ports": [{"protocol": "TCP", "port": 9100}], "from": [prometheus]}
    # The policy selects a multi-node group's workers too, which share the component label.
    wide, wide_plan = built(router=AUTH, parallelism={"pipeline": 2})
    worker = leader_worker_set(wide, wide_plan)["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    assert servers.items() <= worker["metadata"]["labels"].items()
    assert "--auth-token-file" not in worker["spec"]["containers"][0]["args"]  # workers serve no calls


def test_the_router_pods_arguments_are_what_grok_router_accepts():
    # Parsed by grok-router's own parser: a flag renamed on either side fails here, not in a crash loop.
    from grok_router.main import parse_args

    spec, _ = built(router={**AUTH, "replicas": 2, "tls": {"secretName": "t"}})
    args = router_deployment(spec)["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = parse_args([a.replace("$(POD_IP)", "127.0.0.1") for a in args])
    assert str(parsed.api_keys_dir) == "/etc/grok-router/api-keys"
    assert str(parsed.upstream_token_file) == UPSTREAM_TOKEN_FILE
    assert parsed.router_replicas == 2  # each of two routers enforces half of every limit
    assert (str(parsed.tls_cert), str(parsed.tls_key)) == ("/etc/grok-router/tls/tls.crt",
                                                            "/etc/grok-router/tls/tls.key")


def test_with_tls_the_router_serves_both_ports_from_the_secret_and_probes_in_https():
    spec, _ = built(router={"tls": {"secretName": "grok-front-door-tls"}})
    router = router_deployment(spec)["spec"]["template"]
    (container,) = router["spec"]["containers"]
    args = container["args"]
    cert, key = args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    folder = cert.rsplit("/", 1)[0]
    assert key.rsplit("/", 1)[0] == folder and mounts[folder]["readOnly"] is True
    assert "subPath" not in mounts[folder]  # a subPath mount would never see a renewal
    volume = {v["name"]: v for v in router["spec"]["volumes"]}[mounts[folder]["name"]]["secret"]
    assert volume["secretName"] == "grok-front-door-tls" and not volume.get("optional")
    assert {(i["key"], i["path"]) for i in volume["items"]} == {
        ("tls.crt", cert.rsplit("/", 1)[1]), ("tls.key", key.rsplit("/", 1)[1])}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert router["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    # Without auth: TLS alone, no keys; with it, both sets of volumes side by side.
    assert "--api-keys-dir" not in args
    both, _ = built(router={**AUTH, "tls": {"secretName": "grok-front-door-tls"}})
    pod = router_deployment(both)["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"api-keys", "upstream-token", "tls"}
    assert {m["name"] for m in pod["containers"][0]["volumeMounts"]} == {"api-keys", "upstream-token", "tls"}


def test_without_tls_the_router_serves_plaintext():
    spec, _ = built(router=AUTH)
    template = router_deployment(spec)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert "--tls-cert" not in container["args"]
    assert "tls" not in {v["name"] for v in template["spec"]["volumes"]}
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert template["metadata"]["annotations"]["prometheus.io/scheme"] == "http"



@pytest.mark.parametrize(("router", "scheme"), [({}, "http"), ({"tls": {"secretName": "t"}}, "https")])
def test_the_http_endpoint_in_the_status_says_https_with_tls(router, scheme):
    from grok_operator.observe.children import observe

    spec, p = built(router=router)
    assert observe(spec, p, None, [], ("Ready", "")).http_endpoint == f"{scheme}://grok.ml.svc:8080/v1"


@pytest.mark.parametrize(("router", "grpc_protocol", "http_protocol"), [
    ({}, "kubernetes.io/h2c", "http"),
    ({"tls": {"secretName": "t"}}, "https", "https"),
])
def test_the_router_services_app_protocols_say_tls_when_the_router_serves_it(router, grpc_protocol,
                                                                             http_protocol):
    # Gateways and meshes pick the protocol they speak to a Service port from its appProtocol: h2c (HTTP/2
    # in cleartext) or http in front of a TLS port would have them send plaintext to it.
    from grok_operator.manifests.services import service

    spec, _ = built(router=router)
    ports = {p["name"]: p for p in service(spec)["spec"]["ports"]}
    assert (ports["grpc"]["appProtocol"], ports["http"]["appProtocol"]) == (grpc_protocol, http_protocol)
