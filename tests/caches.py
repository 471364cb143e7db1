"""Caches every engine of a test run shares (set up in tests/conftest.py)."""

from __future__ import annotations

import os

COMPILE_CACHE_ENV = "GROK_TEST_COMPILE_CACHE"


def run_compile_cache() -> str:
    """The run's compile cache folder: engines that compile share it, as replicas on one node would."""
    return os.environ[COMPILE_CACHE_ENV]
