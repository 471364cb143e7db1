"""Shared fixtures. `devcluster` and `k8s_namespace` come from grok_devcluster's pytest plugin;
`operator_kubeconfig` and `grok_operator` (the operator running as the chart's ServiceAccount) from
tests/operatorlib.py."""

import pathlib

import pytest

from tests.operatorlib import grok_operator, operator_kubeconfig  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def tiny_grok_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A `tiny` Grok-1 checkpoint (hpcai naming, safetensors, seed 0) from grok-make-tiny-model."""
    from grok_server.checkpoints.tiny import make_tiny_checkpoint

    directory = tmp_path_factory.mktemp("grok1") / "tiny"
    return make_tiny_checkpoint(directory, size="tiny", naming="hpcai", seed=0)
