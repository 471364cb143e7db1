"""The router image's stand-in in the simulated cluster (.venv/router-image, made by hack/setup-python.sh)
holds what router/Dockerfile installs: grok-router with grok-rpc and grok-common, and no grok-server."""

from __future__ import annotations

import subprocess

from grok_devcluster import images


def test_the_router_images_stand_in_runs_grok_router_without_grok_server() -> None:
    router = images.resolve("grok-serve/router:0.1.0")
    assert router is not None and router.bin_dir == images.ROUTER_IMAGE_ENV / "bin"
    assert (router.bin_dir / "grok-router").exists()
    check = ("import importlib.util as u, grok_router.main; "
             "print([m for m in ('grok_server', 'grok_rpc', 'grok_common') if u.find_spec(m) is not None])")
    out = subprocess.run([str(router.bin_dir / "python"), "-c", check], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "['grok_rpc', 'grok_common']"
