"""A keys folder as the kubelet writes a mounted Secret, for the router's API-key tests."""

from __future__ import annotations

from pathlib import Path


def write_secret(folder: Path, data: dict[str, bytes]) -> None:
    """What the kubelet does for a Secret volume: files in a new timestamped folder, `..data` swapped to it
    atomically, a link per key to `..data/<key>`, links of removed keys deleted."""
    folder.mkdir(exist_ok=True)
    n = len(list(folder.glob("..20*")))
    version = folder / f"..2026_12_07_{n:06d}"
    version.mkdir()
    for name, content in data.items():
        (version / name).write_bytes(content)
    tmp = folder / "..data_tmp"
    tmp.symlink_to(version.name)
    tmp.replace(folder / "..data")
    for name in data:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for link in folder.iterdir():
        if not link.name.startswith(".") and link.name not in data:
            link.unlink()
