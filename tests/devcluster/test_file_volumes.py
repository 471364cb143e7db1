"""Secret and ConfigMap volumes as the pod runner writes them: swapped in whole through `..data`, as the
kubelet does, so that a pod reading them while they change sees the old set or the new one."""

from pathlib import Path

from grok_devcluster.podrunner import _write_atomically


def _visible(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()}


def test_a_changed_object_replaces_the_files_whole_and_removes_what_it_no_longer_has(tmp_path: Path):
    _write_atomically(tmp_path, {"team-a": "k1", "team-b": "k2"})
    first = (tmp_path / "..data").readlink()
    assert _visible(tmp_path) == {"team-a": "k1", "team-b": "k2"}
    assert (tmp_path / "team-a").is_symlink()  # through ..data, which is what moves
    _write_atomically(tmp_path, {"team-a": "k1", "team-c": "k3", "nested/x": "y"})
    assert _visible(tmp_path) == {"team-a": "k1", "team-c": "k3"}
    assert (tmp_path / "nested" / "x").read_text() == "y"
    assert not (tmp_path / first).exists()  # the old set is gone
    again = (tmp_path / "..data").readlink()
    _write_atomically(tmp_path, {"team-a": "k1", "team-c": "k3", "nested/x": "y"})
    assert (tmp_path / "..data").readlink() == again  # unchanged: not rewritten
