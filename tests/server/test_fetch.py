"""grok-fetch: the model-cache Job's command. The network is the one thing replaced here: a downloader
that copies a local checkpoint stands in for the hub (nothing can be downloaded on this machine)."""

import shutil
from pathlib import Path

import pytest

from grok_server.checkpoints.tiny import make_tiny_checkpoint
from grok_server.fetch import MARKER, FetchError, fetch, main


def copying_from(source: Path, calls: list):
    def downloader(scheme: str, location: str, revision: str, destination: Path) -> None:
        calls.append((scheme, location, revision))
        shutil.copytree(source, destination, dirs_exist_ok=True)

    return downloader


def test_xai_checkpoint_is_downloaded_converted_and_fetched_only_once(tmp_path):
    original = make_tiny_checkpoint(tmp_path / "xai", size="tiny", fmt="xai")
    calls: list = []
    out = tmp_path / "cache"
    fetch(
        "hf://xai-org/grok-1",
        "main",
        "xai",
        out,
        downloader=copying_from(original, calls),
        log=lambda _: None,
        head_dim=32,
    )
    assert calls == [("hf", "xai-org/grok-1", "main")]
    assert (out / "model" / "config.json").exists()
    assert list((out / "model").glob("*.safetensors")), "converted weights are where the server loads them"
    assert (out / MARKER).exists()
    # A retried Job, or a second deployment of the same model: nothing is downloaded again.
    fetch(
        "hf://xai-org/grok-1",
        "main",
        "xai",
        out,
        downloader=copying_from(original, calls),
        log=lambda _: None,
    )
    assert len(calls) == 1


def test_a_cache_holding_another_model_is_refused(tmp_path):
    source = make_tiny_checkpoint(tmp_path / "hf", size="tiny")
    out = tmp_path / "cache"
    fetch("hf://a/b", "main", "hf", out, downloader=copying_from(source, []), log=lambda _: None)
    with pytest.raises(FetchError, match="already holds hf://a/b@main"):
        fetch("hf://a/b", "v2", "hf", out, downloader=copying_from(source, []), log=lambda _: None)


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    assert main(["--uri", "ftp://weights", "--out", str(tmp_path)]) == 2
    assert "expected hf://org/name or s3://bucket/prefix" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--uri", "hf://hpcai-tech/grok-1", "--out", str(tmp_path / "x")]) == 2
    assert "downloading hf://hpcai-tech/grok-1@main failed" in capsys.readouterr().err


def test_a_download_with_nothing_loadable_is_not_marked_done(tmp_path):
    # A wrong prefix or repo downloads nothing (or only a README): marked done, every retry would skip it and
    # the servers could never load.
    def readme_only(scheme: str, location: str, revision: str, destination: Path) -> None:
        destination.mkdir(parents=True, exist_ok=True)
        (destination / "README.md").write_text("hello")

    out = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"no config\.json"):
        fetch("s3://bucket/grok1-typo", "main", "hf", out, downloader=readme_only, log=lambda _: None)
    assert not (out / MARKER).exists()


def test_s3_takes_the_prefix_as_a_folder(tmp_path, monkeypatch):
    # Console-made buckets hold 0-byte "folder" keys ending in "/"; a plain string prefix also matches
    # sibling folders (grok-1 and grok-1-fp8).
    import sys
    import types

    from grok_server.fetch import download

    objects = {"grok-1/": b"", "grok-1/config.json": b"{}", "grok-1/ckpt-0/": b"", "grok-1/ckpt-0/t": b"x",
               "grok-1-fp8/x": b"1"}

    class Client:
        def get_paginator(self, name):
            assert name == "list_objects_v2"
            return self

        def paginate(self, Bucket, Prefix):
            listed = [{"Key": k, "Size": len(v)} for k, v in objects.items() if k.startswith(Prefix)]
            yield {"Contents": listed}

        def download_file(self, bucket, key, path):
            Path(path).write_bytes(objects[key])

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda service: Client()))
    download("s3", "bucket/grok-1", "main", tmp_path / "model")
    model = tmp_path / "model"
    files = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    assert files == ["ckpt-0/t", "config.json"]
