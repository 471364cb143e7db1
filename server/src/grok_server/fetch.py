"""grok-fetch: puts a model's weights into `DIR/model` once (the operator's model-cache Job runs it).

hf://org/name (Hugging Face Hub, HF_TOKEN from the environment) and s3://bucket/prefix (AWS_* credentials,
region and endpoint from the environment; boto3 comes with the `s3` extra, which the server image installs)
are downloaded; `--format xai` checkpoints (xAI's original int8 ckpt-0) are then converted with grok-convert.
Every step resumes after an interruption, and a marker records a finished fetch so that a re-run (a retried
Job, a second GrokDeployment of the same model) returns at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

MARKER = ".grok-fetch.json"
HF_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "ckpt-0/*", "*.bin"]


class FetchError(Exception):
    pass


Downloader = Callable[[str, str, str, Path], None]  # (scheme, location, revision, destination)


def parse_uri(uri: str) -> tuple[str, str]:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("hf", "s3") or not rest.strip("/"):
        raise FetchError(f"cannot fetch {uri!r}: expected hf://org/name or s3://bucket/prefix")
    return scheme, rest.strip("/")


def download(scheme: str, location: str, revision: str, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    if scheme == "hf":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:  # files already complete are skipped: a retried Job resumes
            snapshot_download(
                repo_id=location,
                revision=revision,
                local_dir=destination,
                allow_patterns=HF_PATTERNS,
                max_workers=8,
            )
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
            raise FetchError(f"downloading hf://{location}@{revision} failed: {err}") from err
        return
    try:
        import boto3
    except ImportError as err:
        raise FetchError("s3:// models need boto3 in the server image (the grok-server[s3] extra)") from err
    bucket, _, prefix = location.partition("/")
    # The prefix is a folder: "grok-1" must not also take "grok-1-fp8/...".
    folder = f"{prefix}/" if prefix else ""
    s3 = boto3.client("s3")
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # a 0-byte "folder" object, as the S3 console makes them
                target = destination / item["Key"][len(folder) :]
                if target.exists() and target.stat().st_size == item["Size"]:
                    continue  # already complete
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                s3.download_file(bucket, item["Key"], str(partial))
                partial.replace(target)
    except OSError:
        raise
    except Exception as err:  # botocore's errors (credentials, access, network) have no common base here
        raise FetchError(f"downloading s3://{location} failed: {type(err).__name__}: {err}") from err


def fetch(
    uri: str,
    revision: str,
    fmt: str,
    out: Path,
    downloader: Downloader = download,
    log: Callable[[str], None] = print,
    head_dim: int = 128,
) -> Path:
    """Fills `out`; returns the directory the server loads: `out/model` (for xai, beside the original
    download in `out/xai-original`)."""
    scheme, location = parse_uri(uri)
    if fmt not in ("hf", "xai"):
        raise FetchError(f"unknown format {fmt!r}: expected hf or xai")
    wanted = {"uri": uri, "revision": revision, "format": fmt}
    marker = out / MARKER
    if marker.exists():
        done = json.loads(marker.read_text())
        if done == wanted:
            log(f"{uri}@{revision} is already in {out}")
            return out / "model"
        raise FetchError(
            f"{out} already holds {done['uri']}@{done['revision']} ({done['format']}): "
            "use another cache volume"
        )
    if fmt == "hf":
        log(f"downloading {uri}@{revision} into {out / 'model'}")
        downloader(scheme, location, revision, out / "model")
        _check_loadable(uri, out / "model")
    else:
        from grok_server.checkpoints.convert import ConversionError, convert
        from grok_server.checkpoints.xai import XaiFormatError

        staging = out / "xai-original"
        log(f"downloading {uri}@{revision} (xAI ckpt-0) into {staging}")
        downloader(scheme, location, revision, staging)
        tokenizer = staging if any(staging.glob("tokenizer*")) else None
        try:
            # ckpt-0 does not record the attention head size (Grok-1's is 128).
            convert(staging, out / "model", tokenizer_dir=tokenizer, head_dim=head_dim, log=log)
        except (ConversionError, XaiFormatError) as err:
            raise FetchError(f"converting {uri}: {err}") from err
    marker.write_text(json.dumps(wanted))
    return out / "model"


def _check_loadable(uri: str, model: Path) -> None:
    """Refuses to mark a download done that the server could never load (a wrong prefix lists nothing)."""
    if not (model / "config.json").is_file():
        raise FetchError(f"no config.json under {uri}: check the uri (nothing loadable was downloaded)")
    if not any(model.glob("*.safetensors")) and not any(model.glob("*.bin")):
        raise FetchError(f"no weights (*.safetensors or *.bin) under {uri}: check the uri")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grok-fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="hf://org/name or s3://bucket/prefix")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--format", dest="fmt", choices=["hf", "xai"], default="hf")
    parser.add_argument("--out", type=Path, required=True, help="directory to fill (the model cache volume)")
    parser.add_argument(
        "--head-dim", type=int, default=128, help="attention head size, for xai (Grok-1: 128)"
    )
    args = parser.parse_args(argv)
    try:
        fetch(args.uri, args.revision, args.fmt, args.out, head_dim=args.head_dim)
    except FetchError as err:
        print(f"grok-fetch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
