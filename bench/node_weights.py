"""Node-local weights, counted in bytes: what each replica reads from the shared model cache, and how fast the
default loader reads the node's copy beside `cat` (real files, real processes, CPU).

1. Two replicas starting at once on one node (two `grok-node-cache --hold` processes, as grok-server runs it
   before vLLM loads): bytes each read from the shared cache.
2. A scale-up from 1 to 4 replicas on 2 nodes: replica 1 on node A, then replicas 2-4 at once on B, A, B
   (any placement on 2 nodes gives the same bound): bytes read from the shared cache in all, in models.
3. The default loader's read path (vLLM 0.32's safetensors_weights_iterator, what DefaultModelLoader runs for
   load format auto) beside `cat FILES > /dev/null`, from the node's copy, in the same run, alternating,
   torch on one intra-op thread (--torch-threads); twice: from the page cache (warm: what a start after the
   node copy's checksum pass reads), and from the disk (each file's pages dropped from the page cache with
   posix_fadvise(DONTNEED) before every read, no root needed: what a node copy made on an earlier day gives).
4. With --server: grok-server itself, twice with the same node folder (the second a second replica on the
   node): its own start-up report (the weights phase, vLLM's measure; bytes read from the shared cache).
5. With --from-source: the first replica's bytes from the shared cache (grok-node-cache: copy, sha256,
   fsync) beside straight from the source (grok-fetch from S3: moto_server on loopback, the simulated
   cluster's S3, boto3 as the server image has it), alternating, each into a fresh node folder: GB/s and
   CPU-s per GB of the copying process, and the S3 server's own CPU. Loopback has no network in it: the
   source's figures are its software's cost, an upper bound on what a real S3 gives.

    .venv/bin/python bench/node_weights.py [--size small] [--rounds 5] [--server] [--from-source]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

from benchlib import cpu_seconds, pinned_environment, site_packages

from grok_server.checkpoints.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def copier(source: Path, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "grok_server.weights.node_copy", "--source", str(source),
                             "--root", str(root), "--hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def replicas(source: Path, roots: list[Path]) -> list[dict]:  # type: ignore[type-arg]
    """Starts one copier per root at once; returns their outcomes (each holds its copy until the end)."""
    procs = [copier(source, root) for root in roots]
    outcomes = []
    for proc in procs:
        assert proc.stdout is not None
        outcomes.append(json.loads(proc.stdout.readline()))
    for proc in procs:
        proc.communicate("")
    return outcomes


def timed(fn) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    count = fn()
    return time.perf_counter() - started, count


def drop_from_page_cache(files: list[Path]) -> None:
    """The files' clean pages leave the page cache (the kernel may keep pages another process has mapped)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_with_cat(files: list[Path]) -> int:
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return sum(f.stat().st_size for f in files)


class DefaultLoader:
    """The default loader's path: vLLM's iterator over the safetensors files (strategy None: memory-mapped,
    nothing read until touched; "eager": each file read whole with read()), each tensor copied into the
    model's memory, allocated beforehand as vLLM allocates the parameters before loading
    (default_weight_loader: param.data.copy_)."""

    def __init__(self, files: list[Path], strategy: str | None) -> None:
        import torch

        self.files, self.strategy = [str(f) for f in files], strategy
        self.params = {name: torch.empty_like(t) for name, t in self._tensors()}

    def _tensors(self):  # type: ignore[no-untyped-def]
        from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

        return safetensors_weights_iterator(self.files, False, self.strategy)

    def __call__(self) -> int:
        total = 0
        for name, tensor in self._tensors():
            self.params[name].copy_(tensor)
            total += tensor.numel() * tensor.element_size()
        return total


class RunaiStreamer(DefaultLoader):
    """vLLM's `--load-format runai_streamer` path: its runai_safetensors_weights_iterator (the streamer's
    concurrent reads into a CPU buffer, each tensor cloned out of it), each tensor copied into the
    parameters allocated beforehand, as the default loader does."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(files, None)

    def _tensors(self):  # type: ignore[no-untyped-def]
        from vllm.model_executor.model_loader.weight_utils import runai_safetensors_weights_iterator

        return runai_safetensors_weights_iterator(self.files, False)


class StraightIntoParameters:
    """Not a loader vLLM has: each tensor read with readinto() straight into its parameter's memory (one copy,
    as `cat` makes one), the parameters allocated beforehand. What the default path would need to come near
    `cat`."""

    def __init__(self, files: list[Path]) -> None:
        import torch

        self.plan = []
        for f in files:
            with f.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
            base = 8 + size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                self.plan.append((f, base + begin, torch.empty(end - begin, dtype=torch.uint8)))

    def __call__(self) -> int:
        total, handles = 0, {}
        for f, offset, param in self.plan:
            handle = handles.get(f) or handles.setdefault(f, f.open("rb", buffering=0))
            handle.seek(offset)
            total += handle.readinto(memoryview(param.numpy()))
        for handle in handles.values():
            handle.close()
        return total


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def from_source(shared: Path, root: Path, rounds: int) -> None:
    """Section 5: the first copy on a node from the shared cache, and from the source (S3)."""
    from grok_devcluster.local import free_port, wait

    venv = Path(sys.prefix)
    moto, image = venv / "s3-server" / "bin", venv / "server-image" / "bin"
    port = free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    server = subprocess.Popen([str(moto / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        probe = [str(moto / "python"), "-c", "import boto3; boto3.client('s3').list_buckets()"]
        wait(lambda: subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0, 60,
             "moto_server to answer", interval=0.5)
        upload = ("import boto3, pathlib, sys; s3 = boto3.client('s3'); s3.create_bucket(Bucket='bench')\n"
                  "for f in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
                  "    s3.upload_file(str(f), 'bench', 'model/' + f.name)")
        subprocess.run([str(moto / "python"), "-c", upload, str(shared)], env=env, check=True)
        size = sum(f.stat().st_size for f in shared.iterdir() if f.is_file())
        ways = {
            "from the shared cache (grok-node-cache: copy + sha256 + fsync)":
                lambda out: [sys.executable, "-m", "grok_server.weights.node_copy", "--source", str(shared),
                             "--root", str(out)],
            "from the source (grok-fetch from S3 on loopback, boto3)":
                lambda out: [str(image / "grok-fetch"), "--uri", "s3://bench/model", "--out", str(out)],
        }
        rates: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
        for i in range(rounds):
            for name, command in ways.items():
                out = root / f"first-copy-{i}-{len(rates[name])}-{'s3' if 'S3' in name else 'shared'}"
                drop_from_page_cache([f for f in shared.iterdir() if f.is_file()])
                cpu, s3_cpu = children_cpu_seconds(), cpu_seconds(server.pid)
                started = time.perf_counter()
                subprocess.run(command(out), env=env, check=True, capture_output=True)
                seconds = time.perf_counter() - started
                rates[name].append((size / seconds / 1e9, (children_cpu_seconds() - cpu) / (size / 1e9),
                                    (cpu_seconds(server.pid) - s3_cpu) / (size / 1e9)))
        print(f"\n5. the first replica on a node: its copy of the model ({size / 1e6:.1f} MB), median of "
              f"{rounds} alternating rounds, each into a fresh folder, the source's pages dropped first:")
        for name, values in rates.items():
            gbps = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            s3 = statistics.median(v[2] for v in values)
            extra = f", S3 server {s3:.2f} CPU-s per GB" if "S3" in name else ""
            print(f"   {name:62s} {gbps:5.2f} GB/s, {cpu:.2f} CPU-s per GB{extra}   "
                  f"(rounds: {', '.join(f'{v[0]:.2f}' for v in values)})")
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=1, help="torch's threads for the loader rows")
    p.add_argument("--server", action="store_true", help="also start grok-server twice on one node folder")
    p.add_argument("--from-source", action="store_true",
                   help="also copy the model to a fresh node folder from S3 (a local moto_server) beside the "
                        "shared cache")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grok-bench-node-weights-"))
    shared = make_tiny_checkpoint(root / "shared" / args.size, size=args.size, naming="hpcai", seed=0)
    model_bytes = sum(f.stat().st_size for f in shared.rglob("*") if f.is_file())
    print(f"## node-local weights, {args.size} checkpoint ({model_bytes / 1e6:.1f} MB, {root})\n")

    first, second = replicas(shared, [root / "node-1", root / "node-1"])
    print("1. two replicas starting at once on one node: bytes read from the shared cache")
    for i, o in enumerate((first, second), 1):
        print(f"   replica {i}: {o['shared_bytes']:>12,} B  ({o['reason']})")

    one = replicas(shared, [root / "node-a"])
    more = replicas(shared, [root / "node-b", root / "node-a", root / "node-b"])
    total = sum(o["shared_bytes"] for o in [*one, *more])
    print(f"\n2. scale-up 1 -> 4 replicas on 2 nodes (A; then B, A, B at once): {total:,} B read from the "
          f"shared cache = {total / model_bytes:.2f} x the model (target: at most 2)")
    for i, (node, o) in enumerate(zip("ABAB", [*one, *more], strict=True), 1):
        print(f"   replica {i} on node {node}: {o['shared_bytes']:>12,} B")

    files = sorted(Path(first["path"]).glob("*.safetensors"))
    import torch

    # One intra-op thread: on a shared 2-core machine two OpenMP threads wait on each other and on everyone
    # else (the copy ran 0.2-0.6 GB/s with 2 threads, 3-4 GB/s with 1, in one run).
    torch.set_num_threads(args.torch_threads)
    # runai-model-streamer in an environment of the benchmark's own (requirements/bench/runai.txt).
    sys.path.append(site_packages(pinned_environment(ROOT / "requirements" / "bench" / "runai.txt", "runai")))
    readers = {"cat": lambda: read_with_cat(files),
               "default loader (mmap, vLLM's default)": DefaultLoader(files, None),
               "default loader, safetensors_load_strategy=eager": DefaultLoader(files, "eager"),
               "runai_streamer (runai-model-streamer 0.17.1)": RunaiStreamer(files),
               "readinto() straight into the parameters (no such loader)": StraightIntoParameters(files)}
    size = sum(f.stat().st_size for f in files) / 1e6
    sources = (("page cache warm", False), ("from the disk, page cache dropped before each read", True))
    for source, cold in sources:
        rates: dict[str, list[float]] = {name: [] for name in readers}
        read_with_cat(files)  # the page cache, warm for all
        for _ in range(args.rounds):
            for name, read in readers.items():
                if cold:
                    drop_from_page_cache(files)
                seconds, count = timed(read)
                rates[name].append(count / seconds / 1e9)
        print(f"\n3. reading the node's copy ({size:.1f} MB of safetensors), {source}, median of "
              f"{args.rounds} alternating rounds:")
        cat = statistics.median(rates["cat"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"   {name:48s} {median:6.2f} GB/s = {median / cat:.2f} x cat   "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in values)})")
        print("   (target: the default path at least 0.8 x cat)")

    if args.from_source:
        from_source(shared, root, args.rounds)

    if args.server:
        from grok_devcluster.local import launch_server

        print("\n4. grok-server twice on one node folder (the second: a second replica on the node)")
        for i in (1, 2):
            work = root / f"server-{i}"
            server = launch_server(shared, work, "--enforce-eager", "--dtype", "float32", "--no-warmup",
                                   "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "4",
                                   "--node-cache-dir", str(root / "node-server"), env={"HOME": str(work)})
            try:
                server.wait_ready(1800)
                with urlopen(f"{server.http}/startup", timeout=10) as r:
                    report = json.loads(r.read())
            finally:
                server.stop()
            w = report["weights"]
            phases, rate = report["phases"], report.get("weights_gb_per_second") or 0
            print(f"   start {i}: weights from {w['source']} ({w['reason']}); {w['shared_bytes']:,} B read "
                  f"from the shared cache; node_copy phase {phases['node_copy']:.2f} s, weights phase "
                  f"{phases['weights']:.3f} s = {rate:.2f} GB/s (vLLM's measure: reading and placing them)")


if __name__ == "__main__":
    main()
