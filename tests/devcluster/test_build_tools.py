"""The control-plane build script's own checks (the build itself runs once per machine, in `make tools`)."""

import shutil
import subprocess

from grok_devcluster.tools import BUILD_SCRIPT


def test_without_go_the_build_says_what_is_missing(tmp_path):
    # `make tools` runs the script directly: its message must not depend on the Python wrapper's check.
    # A PATH with only what the script needs before it looks for Go (wherever Go is installed here).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [str(bin_dir / "bash"), str(BUILD_SCRIPT)],
        env={"HOME": str(tmp_path), "PATH": str(bin_dir), "GROK_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "building the control plane needs Go" in result.stderr
