"""The spec's typed blocks (grok_operator.api.spec) and the CRD agree: each default is written once in Python,
and the CRD's schema, which the API server applies, has the same one."""

import dataclasses

import pytest
import yaml

from grok_operator.api.resource import GrokDeploymentSpec
from grok_operator.api.spec import BLOCKS, DEFAULT_REPLICAS, ModelSpec, RolloutSpec, ServerSpec, parse
from tests.chart.conftest import CRDS

CRD = yaml.safe_load((CRDS / "grokdeployments.serving.grok.dev.yaml").read_text())
SPEC = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _pairs(block: type, schema: dict, path: str):
    """(path, field, property schema) for every field of a block and its nested blocks."""
    properties = schema.get("properties") or {}
    names = {f.metadata["json"] for f in dataclasses.fields(block)}
    assert names == set(properties), f"{path}: fields {sorted(names ^ set(properties))} are on one side only"
    for f in dataclasses.fields(block):
        name = f.metadata["json"]
        kind = f.metadata["kind"]
        yield f"{path}.{name}", f, properties[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from _pairs(kind, properties[name], f"{path}.{name}")


def test_every_block_of_the_crd_is_typed_and_replicas_defaults_alike():
    assert set(BLOCKS) | {"replicas"} == set(SPEC["properties"])
    assert SPEC["properties"]["replicas"]["default"] == DEFAULT_REPLICAS


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_each_crd_default_is_the_fields_default(block):
    checked = 0
    for path, f, schema in _pairs(BLOCKS[block], SPEC["properties"][block], f"spec.{block}"):
        if "default" in schema:
            assert _default(f) == schema["default"], path
            checked += 1
        elif f.default is not dataclasses.MISSING and f.default is not None:
            # A Python default the CRD lacks is a second source: the API server would leave it unset.
            kind = f.metadata["kind"]
            assert isinstance(kind, type) and dataclasses.is_dataclass(kind), f"{path}: only in Python"
    assert checked or block in ("model",), block


def test_absent_fields_take_the_defaults_and_present_ones_are_read():
    server = parse(ServerSpec, {"grpcPort": 6000, "engineArgs": ["--engine-arg", "a=1"]}, "spec.server")
    assert (server.grpc_port, server.metrics_port) == (6000, 9090)
    assert server.engine_args == ["--engine-arg", "a=1"]
    assert parse(ModelSpec, {"uri": "hf://x/y", "cache": {"size": "1Ti"}}, "spec.model").cache.size == "1Ti"
    assert parse(RolloutSpec, {"maxSurge": "25%"}, "spec.rollout").max_surge == "25%"
    spec = GrokDeploymentSpec.from_body({"metadata": {"name": "g"}, "spec": {"model": {"uri": "pvc://c/p"}}})
    assert spec.server == ServerSpec() and spec.replicas == DEFAULT_REPLICAS and spec.autoscaling is None


@pytest.mark.parametrize(("block", "data", "message"), [
    (ServerSpec, {"grpcPort": "fifty"}, "spec.server.grpcPort must be a number, not 'fifty'"),
    (ServerSpec, {"drainSeconds": 1.5}, "spec.server.drainSeconds must be an integer, not 1.5"),
    (ServerSpec, {"engineArgs": "--engine-arg a=1"}, "spec.server.engineArgs must be a list"),
    (ServerSpec, {"compileCache": {}}, "spec.server.compileCache must name exactly one of hostPath"),
    (RolloutSpec, {"maxSurge": "lots"}, "spec.rollout.maxSurge must be an integer or a percentage"),
    (ModelSpec, {"uri": "hf://x/y", "cache": "big"}, "spec.model.cache must be an object"),
    (ModelSpec, {"revision": "v1"}, "spec.model.uri is required"),
    (BLOCKS["router"], {"enabled": "yes"}, "spec.router.enabled must be true or false"),
    (BLOCKS["parallelism"], {"tensor": "eight"}, "spec.parallelism.tensor must be auto or an integer"),
    (BLOCKS["autoscaling"], {}, "spec.autoscaling.maxReplicas is required"),
])
def test_a_value_of_the_wrong_kind_is_refused_naming_the_field(block, data, message):
    path = next(f"spec.{name}" for name, b in BLOCKS.items() if b is block)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        parse(block, data, path)


def test_the_node_cache_block_is_checked_as_the_crd_checks_it():
    from grok_operator.api.spec import NodeCache

    parsed = parse(NodeCache, {"maxSize": "2Ti", "verify": "sizes"}, "n")
    assert parsed == NodeCache(max_size="2Ti", verify="sizes")
    for data, words in (({"verify": "none"}, "n.verify must be full or sizes"),
                        ({"maxSize": "2 TB"}, "n.maxSize must be a quantity"),
                        ({"path": "models"}, "n.path must be an absolute path"),
                        # grok-server refuses --node-cache-max-bytes 0: refused here, not as a crash loop
                        ({"maxSize": "0"}, "n.maxSize must be at least one byte"),
                        ({"maxSize": "0.4"}, "n.maxSize must be at least one byte")):
        with pytest.raises(ValueError, match=words):
            parse(NodeCache, data, "n")


def test_the_front_door_settings_need_the_router():
    """auth, limits and tls act in the router: with it off nothing would check keys or serve TLS, and the
    servers would ask for a token no one holds. Refused naming the fields, not ignored."""
    from grok_operator.api.spec import RouterSpec

    closed = {"auth": {"secretName": "keys"}, "tls": {"secretName": "cert"}}
    with pytest.raises(ValueError, match=r"^spec\.router\.auth and spec\.router\.tls need the router"):
        parse(RouterSpec, {"enabled": False, **closed}, "spec.router")
    assert parse(RouterSpec, {"enabled": True, **closed}, "spec.router").tls is not None
    assert not parse(RouterSpec, {"enabled": False}, "spec.router").enabled
