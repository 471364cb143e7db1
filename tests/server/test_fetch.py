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
