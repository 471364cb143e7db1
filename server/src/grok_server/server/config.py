"""Command-line flags of `grok-server` (pure: parsing only, no I/O beyond reading the arguments), and the
checks of them that refuse a start before any work."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grok_common import quantization
from grok_common.attention import Device, check_start
from grok_common.engine_args import parse_engine_arg


@dataclass
class ServerConfig:
    model: str
    served_model_name: str | None = None
    tokenizer: str | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # One replica across hosts (vLLM's multiprocessing backend): node 0 runs grok-server, the others
    # grok-server-worker (worker.py); all of them reach node 0's rank 0 at master_addr:master_port.
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29501
    peer_timeout_seconds: float = 30.0
    leader_wait_seconds: float = 1800.0  # grok-server-worker only
    max_model_len: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    compile_cache_dir: Path | None = None
    node_cache_dir: Path | None = None
    node_cache_max_bytes: int | None = None
    node_cache_verify: str = "full"
    engine_worker: str = "auto"
    engine_prestart: str = "auto"
    engine_args: dict[str, Any] = field(default_factory=dict)
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    max_concurrent_requests: int = 256
    default_max_tokens: int = 256
    max_stop_strings: int = 16
    max_stop_string_length: int = 256
    max_request_bytes: int = 4 * 1024 * 1024
    drain_grace_seconds: float = 25.0
    max_connection_age_seconds: float = 0.0  # 0: connections live as long as their clients keep them
    max_connection_age_grace_seconds: float = 3600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token_file: Path | None = None
    log_level: str = "INFO"
    warmup: bool = True
    warmup_timeout_seconds: float = 300.0
    # What parsing changed, for the log (a deprecated quantization name translated, say).
    notices: list[str] = field(default_factory=list)
    warmup_prompt_tokens: int = 1024
    warmup_new_tokens: int = 16
    stream_interval: int = 0  # 0: auto
    cpu_affinity: str = "off"


def _engine_arg(text: str) -> tuple[str, Any]:
    try:
        return parse_engine_arg(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _stream_interval(text: str) -> int:
    if text == "auto":
        return 0
    return _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


UINT32_MAX = 2**32 - 1
# The transport's own cap is 4x this plus headroom (see Server._build_grpc), and grpc takes it as a C int.
MAX_REQUEST_BYTES = 256 * 1024 * 1024


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and engine")
    m.add_argument("--model", required=True, help="checkpoint directory (or any model vLLM can load)")
    m.add_argument("--served-model-name", help="name reported by GetModelInfo (default: --model)")
    m.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    m.add_argument("--tensor-parallel-size", "--tp", type=_positive, default=1,
                   help="tensor-parallel ranks (GPUs) per pipeline stage of a replica")
    m.add_argument("--pipeline-parallel-size", "--pp", type=_positive, default=1,
                   help="pipeline stages per replica (the replica's ranks: tensor x pipeline)")
    m.add_argument("--max-model-len", type=_positive, help="context length (default: the model's)")
    m.add_argument("--dtype", default="auto", help="weights and activations (auto: the checkpoint's)")
    m.add_argument("--quantization", help="vLLM's name: fp8_per_tensor, fp8_per_channel or fp8_per_block "
                                          "quantize bf16 weights while loading (what the operator passes)")
    m.add_argument("--kv-cache-memory-bytes", type=_positive, help="fixed KV-cache size per device")
    m.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory for the engine")
    m.add_argument("--max-num-seqs", type=_positive, help="the engine's largest running batch")
    m.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation (faster start)")
    m.add_argument("--compile-cache-dir", type=Path,
                   help="folder for vLLM's compile caches that outlives the pod (a node's hostPath or a "
                        "PVC), shared by replicas, keyed by what changes the artifacts; unset: a private one")
    m.add_argument("--engine-worker", choices=("auto", "process", "in-engine-core"), default="auto",
                   help="at one rank on the CPU backend, run the model in vLLM's engine-core process "
                        "(in-engine-core: one process start fewer) or in a worker process of its own "
                        "(process, vLLM's CPU default); auto: in-engine-core. GPUs, ranks > 1: vLLM decides")
    m.add_argument("--engine-arg", action="append", type=_engine_arg, default=[], metavar="KEY=VALUE",
                   help="any other vLLM engine argument (VALUE parsed as JSON when it can be); repeatable")


def _add_multinode_flags(p: argparse.ArgumentParser, worker: bool) -> None:
    g = p.add_argument_group(
        "one replica across nodes",
        "The replica's tensor x pipeline ranks split evenly over --nnodes hosts (vLLM's multiprocessing "
        "backend, no Ray): node 0 runs grok-server (the API, the scheduler and its share of the ranks), "
        "nodes 1.. run grok-server-worker with the same model and engine flags. If any node dies, the "
        "others exit non-zero.")
    g.add_argument("--nnodes", type=_positive, default=1, help="hosts the replica's ranks are spread over")
    g.add_argument("--node-rank", type=_int_in(0, 65535), default=0, required=worker,
                   help="this host's index, 0 to nnodes-1 (0: the leader, which runs grok-server; "
                        "e.g. $(LWS_WORKER_INDEX))")
    g.add_argument("--master-addr",
                   help="the leader's address, which every node can reach (e.g. $(LWS_LEADER_ADDRESS)); "
                        "needed when --nnodes > 1")
    g.add_argument("--master-port", type=_int_in(1, 65535), default=29501,
                   help="the leader's port for the ranks' rendezvous (torch.distributed store)")
    g.add_argument("--peer-timeout-seconds", type=_positive_seconds, default=30.0,
                   help="a node not heard from for this long counts as dead: the leader (its engine failed) "
                        "and the workers exit non-zero")
    if worker:
        g.add_argument("--leader-wait-seconds", type=_positive_seconds, default=1800.0,
                       help="how long to wait for the leader's --master-port to open at start-up")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grok-server",
        description="gRPC generation server over vLLM's AsyncLLM (grok.serving.v1.GenerationService).",
        formatter_class=_HelpFormatter,
    )
    _add_engine_flags(p)
    _add_multinode_flags(p, worker=False)
    # grok-server's own start, not the engine's configuration: a worker (ranks > 1) never pre-starts.
    pre = p.add_argument_group("start-up")
    pre.add_argument("--engine-prestart", choices=("auto", "off"), default="auto",
                   help="at one rank on the CPU, start vLLM's engine-core process at grok-server's exec, "
                        "importing torch and vLLM beside grok-server's own import, and hand it the engine "
                        "once vLLM would spawn it; auto: when --node-cache-dir (else --compile-cache-dir) "
                        "holds the environment a previous start gave it (any difference: vLLM spawns as "
                        "usual, and the log says why)")
    w = p.add_argument_group("node-local weights (single-node replicas)")
    w.add_argument("--node-cache-dir", type=Path,
                   help="the node's folder for model copies (a hostPath): --model is copied there once per "
                        "node and revision (checked, renamed when whole) and loaded from there; a copy that "
                        "cannot be made (too large, a full disk) loads --model itself and says why")
    w.add_argument("--node-cache-max-bytes", type=_positive,
                   help="bound on the node folder's model copies; least recently used copies not in use by a "
                        "replica are evicted to make room (default: the disk's free space)")
    w.add_argument("--node-cache-verify", choices=("full", "sizes"), default="full",
                   help="what each start checks of the node's copy: every file's size and sha256 (full), or "
                        "the sizes only (sizes: no second read of the whole model; for large models)")
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="0.0.0.0", help="gRPC address")
    s.add_argument("--port", type=_int_in(1, 65535), default=50051, help="gRPC port")
    s.add_argument("--metrics-host", default="0.0.0.0", help="HTTP address for metrics and probes")
    s.add_argument("--metrics-port", type=_int_in(0, 65535), default=9090,
                   help="HTTP port for /metrics, /healthz and /readyz")
    s.add_argument("--max-concurrent-requests", type=_positive, default=256,
                   help="admission limit on requests running plus queued; beyond it RESOURCE_EXHAUSTED")
    s.add_argument("--default-max-tokens", type=_int_in(1, UINT32_MAX), default=256,
                   help="max_new_tokens when a request leaves it unset")
    s.add_argument("--max-stop-strings", type=_int_in(0, UINT32_MAX), default=16,
                   help="stop strings per request")
    s.add_argument("--max-stop-string-length", type=_int_in(1, UINT32_MAX), default=256,
                   help="characters per stop string")
    s.add_argument("--max-request-bytes", type=_int_in(1, MAX_REQUEST_BYTES), default=4 * 1024 * 1024,
                   help="larger requests get INVALID_ARGUMENT")
    s.add_argument("--drain-grace-seconds", type=_non_negative_seconds, default=25.0,
                   help="on SIGTERM, how long in-flight requests may run before they are aborted")
    s.add_argument("--max-connection-age-seconds", type=_non_negative_seconds, default=0.0,
                   help="close client connections older than this (GOAWAY; 0: never), so that clients "
                        "balancing over a headless Service re-resolve and find new replicas")
    s.add_argument("--max-connection-age-grace-seconds", type=_non_negative_seconds, default=3600.0,
                   help="how long calls on an aged connection may still run (longer than any generation)")
    s.add_argument("--stream-interval", type=_stream_interval, default=0, metavar="auto|N",
                   help="tokens per GenerateStream message after the first (always sent at once); auto: "
                        "1, then half the recent peak of requests in flight, up to 16 (saves CPU under load)")
    s.add_argument("--cpu-affinity", choices=("auto", "off"), default="off",
                   help="auto: on the CPU backend, run this server and the engine-core process on the cores "
                        "vLLM did not bind the workers to, so that they never preempt the model's compute "
                        "(for hosts dedicated to the server: other processes get less CPU)")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    s.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the warm-up requests run before reporting SERVING")
    s.add_argument("--warmup-prompt-tokens", type=_int_in(0, UINT32_MAX), default=1024,
                   help="prompt length of the warm-up request of real shape (cut to the context; 0: only "
                        "the tiny one)")
    s.add_argument("--warmup-new-tokens", type=_positive, default=16,
                   help="tokens the warm-up request of real shape generates")
    s.add_argument("--warmup-timeout-seconds", type=_positive_seconds, default=300.0,
                   help="a warm-up that runs longer is abandoned: the server turns SERVING anyway and says "
                        "which phase overran")
    t = p.add_argument_group("security")
    t.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS with --tls-key")
    t.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    t.add_argument("--tls-client-ca", type=Path, help="CA bundle (PEM): require client certificates (mTLS)")
    t.add_argument("--auth-token-file", type=Path,
                   help="file with accepted bearer tokens, one per line; every RPC but health needs one")
    return p


def build_worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grok-server-worker",
        description="One node (1 to nnodes-1) of a replica spread over several hosts: runs this node's "
                    "engine ranks for the leader's grok-server (node 0), serves nothing itself. Give it "
                    "the leader's model and engine flags. Exits non-zero when the leader or a local rank "
                    "dies, 0 on SIGTERM.",
        formatter_class=_HelpFormatter,
    )
    _add_engine_flags(p)
    _add_multinode_flags(p, worker=True)
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return p


def _check_multinode(p: argparse.ArgumentParser, ns: argparse.Namespace, worker: bool) -> None:
    if ns.node_rank >= ns.nnodes:
        p.error(f"--node-rank {ns.node_rank} must be less than --nnodes {ns.nnodes}")
    ranks = ns.tensor_parallel_size * ns.pipeline_parallel_size
    if ranks % ns.nnodes:
        p.error(f"--nnodes {ns.nnodes} must divide the replica's ranks evenly: tensor x pipeline = "
                f"{ns.tensor_parallel_size} x {ns.pipeline_parallel_size} = {ranks}")
    if ns.nnodes > 1 and not ns.master_addr:
        p.error(f"--nnodes {ns.nnodes} needs --master-addr (the leader's address)")
    if worker and ns.nnodes == 1:
        p.error("grok-server-worker needs --nnodes > 1 (a single-node replica is grok-server alone)")
    if worker and ns.node_rank == 0:
        p.error("--node-rank 0 is the leader, which runs grok-server; workers are nodes 1 to nnodes-1")
    if not worker and ns.node_rank != 0:
        p.error(f"grok-server runs on the leader (--node-rank 0); node {ns.node_rank} runs "
                "grok-server-worker")


def parse_worker_args(argv: list[str] | None = None) -> ServerConfig:
    p = build_worker_parser()
    ns = p.parse_args(argv)
    _check_multinode(p, ns, worker=True)
    values = vars(ns)
    values["engine_args"] = dict(values.pop("engine_arg"))
    values["notices"] = _current_quantization_names(values)
    return ServerConfig(**values)


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    p = build_parser()
    ns = p.parse_args(argv)
    _check_multinode(p, ns, worker=False)
    if (ns.tls_cert is None) != (ns.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if ns.tls_client_ca is not None and ns.tls_cert is None:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    values = vars(ns)
    values["engine_args"] = dict(values.pop("engine_arg"))
    values["notices"] = _current_quantization_names(values)
    return ServerConfig(**values)


def _current_quantization_names(values: dict[str, Any]) -> list[str]:
    """vLLM 0.32 deprecates `fp8` on bf16 weights (a warning, then fp8_per_tensor): the current name is passed
    instead, as the operator does (grok_common.quantization). Other names are vLLM's to judge."""
    notices = []
    for where, holder, key in (("--quantization", values, "quantization"),
                               ("--engine-arg quantization", values["engine_args"], "quantization")):
        name = holder.get(key)
        if isinstance(name, str) and name in quantization.DEPRECATED:
            holder[key] = quantization.DEPRECATED[name]
            notices.append(f"{where} {name} is deprecated in vLLM 0.32 for bf16 weights: passing its current "
                           f"name, {holder[key]}")
    return notices


def start_checks(cfg: ServerConfig, device: Device, environ: Mapping[str, str]) -> list[str]:
    """What grok-server refuses before reading weights or touching the compile cache, on `device` (vLLM's
    platform: grok_server.model.device.current_device): an attention backend that drops Grok-1's logit
    soft-cap, asked for by --engine-arg or VLLM_ATTENTION_BACKEND. Raises AttentionBackendRefused, whose
    message names the backend, why and the backends that work; returns warnings to log."""
    return check_start(cfg.engine_args, environ, device)
