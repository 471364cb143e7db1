"""Shared fixtures. `devcluster` and `k8s_namespace` come from grok_devcluster's pytest plugin;
`operator_kubeconfig` and `grok_operator` (the operator running as the chart's ServiceAccount) from
tests/operatorlib.py."""

import os
import pathlib
import shutil
import tempfile

import pytest

from tests.caches import COMPILE_CACHE_ENV
from tests.operatorlib import grok_operator, operator_kubeconfig  # noqa: F401  (fixtures)

_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One compile cache for every engine of this run that compiles (pipeline-parallel replicas, group
    restarts): a replica's second start reuses its first one's artifacts, as on a node. Tests of the cache's
    own behaviour use caches of their own. Not kept between runs: each run starts cold, as CI does."""
    if COMPILE_CACHE_ENV not in os.environ:
        os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="grok-test-compile-cache-")
        config.stash[_OWN_CACHE] = os.environ[COMPILE_CACHE_ENV]
    # The simulated cluster gives each node its own hostPath folders; this one stays one folder every node
    # sees (as a network filesystem would), so a pod recreated on another node still finds its artifacts.
    # The session's pod runner inherits this process's environment.
    from grok_devcluster.podspec import SHARED_HOST_PATHS_ENV

    os.environ[SHARED_HOST_PATHS_ENV] = os.environ[COMPILE_CACHE_ENV]


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_CACHE, None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_grok_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A `tiny` Grok-1 checkpoint (hpcai naming, safetensors, seed 0) from grok-make-tiny-model."""
    from grok_server.checkpoints.tiny import make_tiny_checkpoint

    directory = tmp_path_factory.mktemp("grok1") / "tiny"
    return make_tiny_checkpoint(directory, size="tiny", naming="hpcai", seed=0)
