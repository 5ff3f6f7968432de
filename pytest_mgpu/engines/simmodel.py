"""Roofline model of an LLM server doing continuous batching (pure Python, no I/O).

The simulated engine ``sim`` uses it to decide how long each engine step takes. Nothing in here
is a per-layout number: weights, KV cache and communication follow from the model's
``config.json``, the GPU's spec sheet and a few documented constants (see ``docs/sim.md``).

* :class:`GpuProfile` -- public spec-sheet numbers of one card.
* :class:`ModelSpec` -- parameter count, weight bytes and KV bytes/token from ``config.json``.
* :class:`PerfModel` -- a model on a layout (TP x PP): memory plan, KV capacity, step times.
* :class:`Scheduler` -- vLLM-like continuous batching with chunked prefill and KV blocks,
  driven either offline (:func:`simulate`) or step by step by the HTTP server.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

GIB = 2**30

#: Achievable fraction of peak HBM / NVLink bandwidth (streaming kernels reach ~75-85%).
BANDWIDTH_EFFICIENCY = 0.8
#: Achievable fraction of peak fp16 tensor FLOP/s (large cuBLAS GEMMs reach ~60-75%).
COMPUTE_EFFICIENCY = 0.6
#: Memory vLLM cannot give to weights or KV: CUDA context, cuBLAS workspace, NCCL buffers (GiB).
NON_TORCH_RESERVE_GIB = 0.4
#: CPU time per engine step (scheduler, input prep, sampling, detokenisation), in ms.
DEFAULT_OVERHEAD_MS = 2.0
#: Extra CPU time per step for each worker beyond the first (broadcasting the step), in ms.
DEFAULT_WORKER_OVERHEAD_MS = 0.3


class SimError(ValueError):
    """The simulated engine cannot start with this model, layout or options."""


class SimOptionError(SimError):
    """An unknown or malformed ``--opt KEY=VALUE`` (the server exits with code 2)."""


@dataclass(frozen=True)
class GpuProfile:
    """One GPU model, from public spec sheets (SXM variants); see docs/sim.md for sources."""

    name: str
    memory_gib: float  # total memory as nvidia-smi reports it
    mem_bw_gbs: float  # peak HBM bandwidth, GB/s (1e9 bytes)
    fp16_tflops: float  # dense fp16 tensor-core peak, TFLOP/s
    link_gbs: float  # NVLink bandwidth per GPU per direction, GB/s
    link_latency_us: float  # latency of one ring step of an all-reduce / one p2p send
    instant: bool = False  # no modelled delay at all (the zero mode)


GPU_PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        # V100-SXM2-16GB: 900 GB/s HBM2, 125 TFLOP/s tensor, NVLink2 300 GB/s total (6 x 50).
        GpuProfile("v100-16gb", 16160 / 1024, 900.0, 125.0, 150.0, 5.0),
        # A100-SXM4-80GB: 2039 GB/s HBM2e, 312 TFLOP/s dense fp16, NVLink3 600 GB/s total.
        GpuProfile("a100-80gb", 81920 / 1024, 2039.0, 312.0, 300.0, 4.0),
        # H100-SXM5-80GB: 3.35 TB/s HBM3, 989 TFLOP/s dense fp16, NVLink4 900 GB/s total.
        GpuProfile("h100-80gb", 81559 / 1024, 3350.0, 989.0, 450.0, 3.0),
        # H200-SXM-141GB: 4.8 TB/s HBM3e, same compute and NVLink as H100.
        GpuProfile("h200-141gb", 143771 / 1024, 4800.0, 989.0, 450.0, 3.0),
        # No delay at all: streams tokens as fast as the server can write them.
        GpuProfile("instant", 1024.0, 1e9, 1e9, 1e9, 0.0, instant=True),
    )
}
DEFAULT_GPU = "v100-16gb"

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "half": 2, "float32": 4, "float": 4, "float8": 1, "int8": 1}


def get_profile(name: str) -> GpuProfile:
    """The profile called ``name``; :class:`SimError` lists the known ones otherwise."""
    try:
        return GPU_PROFILES[name]
    except KeyError:
        raise SimOptionError(f"unknown GPU profile {name!r}; choose one of: {', '.join(GPU_PROFILES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a dense decoder-only (Llama-like) transformer."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    dtype_bytes: int = 2
    head_dim: int = 0
    tied_embeddings: bool = False
    max_position: int = 4096

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "model") -> "ModelSpec":
        """Read a Hugging Face ``config.json`` dict (Llama/Mistral/Qwen-style keys)."""
        try:
            heads = int(config["num_attention_heads"])
            dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
            return cls(
                name=name,
                layers=int(config["num_hidden_layers"]),
                hidden=int(config["hidden_size"]),
                intermediate=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                vocab=int(config["vocab_size"]),
                dtype_bytes=_DTYPE_BYTES.get(dtype.replace("torch.", ""), 2),
                head_dim=int(config.get("head_dim") or 0),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                max_position=int(config.get("max_position_embeddings") or 4096),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SimError(f"config.json of {name} lacks a usable {exc} for the sim's model") from None

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelSpec":
        """Read ``path/config.json``."""
        p = Path(path)
        cfg = p / "config.json"
        if not cfg.is_file():
            raise SimError(f"no config.json in {p}; pass a model directory (e.g. pytest_mgpu/models/tiny-llama)")
        return cls.from_config(json.loads(cfg.read_text()), name=p.name)

    @property
    def layer_params(self) -> int:
        """Parameters of one transformer layer (attention, gated MLP, two norms)."""
        h, d = self.hidden, self.head_dim
        attn = h * self.heads * d * 2 + h * self.kv_heads * d * 2  # q, o ; k, v
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def embed_params(self) -> int:
        """Input embedding parameters."""
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """LM-head parameters (0 when tied to the embedding)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def param_count(self) -> int:
        """All parameters."""
        return self.layers * self.layer_params + self.embed_params + self.head_params + self.hidden

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights."""
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes over the whole model."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass
class SimOptions:
    """Every ``--opt KEY=VALUE`` of the sim server; see docs/sim.md."""

    gpu: str = DEFAULT_GPU
    speed: float = 1.0
    noise: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    zero: bool = False
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 0  # 0: the config's max_position_embeddings, capped to the KV cache
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    overhead_ms: float = DEFAULT_OVERHEAD_MS
    worker_overhead_ms: float = DEFAULT_WORKER_OVERHEAD_MS
    # Fault injection (server only).
    fail_start: bool = False
    start_delay: float = 0.0
    crash_after: int = -1
    hang_after: int = -1
    short_tokens: int = 0

    @classmethod
    def names(cls) -> list[str]:
        """Valid option keys."""
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, pairs: Mapping[str, str]) -> "SimOptions":
        """Build from string values; unknown keys or bad values raise :class:`SimError`."""
        opts = cls()
        kinds = {f.name: f.type for f in fields(cls)}
        for key, raw in pairs.items():
            if key not in kinds:
                raise SimOptionError(f"unknown sim option {key!r}; valid options: {', '.join(cls.names())}")
            kind = kinds[key]
            try:
                if kind == "bool":
                    low = str(raw).strip().lower()
                    if low not in ("0", "1", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    value: Any = low in ("1", "true", "yes")
                elif kind == "int":
                    value = int(raw)
                elif kind == "float":
                    value = float(raw)
                else:
                    value = str(raw)
            except ValueError:
                raise SimOptionError(f"sim option {key}={raw!r} is not a valid {kind}") from None
            setattr(opts, key, value)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Range checks; raise :class:`SimError` naming the option."""
        get_profile(self.gpu)
        if not self.speed > 0:
            raise SimOptionError(f"sim option speed={self.speed} must be > 0 (1.25 = 25% faster)")
        for name in ("noise", "jitter", "overhead_ms", "worker_overhead_ms", "start_delay"):
            if getattr(self, name) < 0:
                raise SimOptionError(f"sim option {name}={getattr(self, name)} must be >= 0")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise SimOptionError(f"sim option {name}={getattr(self, name)} must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SimOptionError(f"sim option gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")

    @property
    def instant(self) -> bool:
        """No modelled delay (``zero=1`` or profile ``instant``)."""
        return self.zero or get_profile(self.gpu).instant


class PerfModel:
    """A model on ``tp x pp`` GPUs of one profile: memory plan, KV capacity and step times."""

    def __init__(
        self,
        model: ModelSpec,
        tp: int = 1,
        pp: int = 1,
        gpu_mem_gb: float | None = None,
        options: SimOptions | None = None,
    ) -> None:
        self.model = model
        self.tp, self.pp = tp, pp
        self.opts = options or SimOptions()
        self.gpu = get_profile(self.opts.gpu)
        m = model
        if m.heads % tp:
            raise SimError(f"tp={tp} does not divide the {m.heads} attention heads of {m.name}")
        if pp > m.layers:
            raise SimError(f"pp={pp} exceeds the {m.layers} layers of {m.name}")
        self.layers_per_stage = math.ceil(m.layers / pp)  # the busiest stage sets the pace
        self.heads_per_gpu = m.heads // tp
        self.kv_heads_per_gpu = max(1, m.kv_heads // tp)  # KV heads are replicated when tp > kv_heads
        h, d = m.hidden, m.head_dim
        layer_gpu = (
            (h * self.heads_per_gpu * d * 2 + h * self.kv_heads_per_gpu * d * 2)
            + 3 * h * m.intermediate // tp
            + 2 * h
        )
        self.layer_params_gpu = layer_gpu
        # Embedding and LM head are vocab-parallel; with PP they sit on the first / last stage.
        ends = (m.embed_params + m.head_params) if pp == 1 else max(m.embed_params, m.head_params)
        self.head_params_gpu = (m.head_params or m.embed_params) // tp
        self.params_per_gpu = self.layers_per_stage * layer_gpu + ends // tp + h
        self.weight_bytes_per_gpu = self.params_per_gpu * m.dtype_bytes
        self.kv_bytes_per_token_gpu = 2 * self.layers_per_stage * self.kv_heads_per_gpu * d * m.dtype_bytes

        cap = self.gpu.memory_gib if gpu_mem_gb is None else min(self.gpu.memory_gib, gpu_mem_gb)
        self.memory_gib = cap
        o = self.opts
        act = o.max_num_batched_tokens * (4 * h + 2 * m.intermediate // tp) * m.dtype_bytes
        logits = min(o.max_num_seqs, o.max_num_batched_tokens) * m.vocab * 4
        self.reserve_bytes = int(NON_TORCH_RESERVE_GIB * GIB) + act + logits
        budget = cap * GIB * o.gpu_memory_utilization
        self.kv_bytes_per_gpu = int(budget - self.weight_bytes_per_gpu - self.reserve_bytes)
        where = f"{m.name} on tp={tp} pp={pp} x {self.gpu.name} ({cap:.2f} GiB per GPU)"
        if self.kv_bytes_per_gpu <= 0:
            raise SimError(
                f"{where} does not fit: weights {self.weight_bytes_per_gpu / GIB:.2f} GiB + reserve "
                f"{self.reserve_bytes / GIB:.2f} GiB per GPU exceed {o.gpu_memory_utilization:.0%} of memory "
                f"({budget / GIB:.2f} GiB); use more tensor/pipeline parallelism or a larger GPU profile"
            )
        self.kv_blocks = self.kv_bytes_per_gpu // (self.kv_bytes_per_token_gpu * o.block_size)
        if self.kv_blocks < 1:
            raise SimError(f"{where} has no room for a single KV block; use more parallelism or a larger GPU")
        self.kv_tokens = self.kv_blocks * o.block_size
        if o.max_model_len:
            if o.max_model_len > self.kv_tokens:
                raise SimError(
                    f"{where}: max_model_len={o.max_model_len} is larger than the {self.kv_tokens} tokens the "
                    f"KV cache can hold; lower max_model_len or use more parallelism"
                )
            self.max_model_len = o.max_model_len
        else:
            self.max_model_len = min(m.max_position, self.kv_tokens)

    @property
    def num_gpus(self) -> int:
        """GPUs the layout occupies."""
        return self.tp * self.pp

    def describe(self) -> str:
        """One line: model, layout, profile, memory plan and KV capacity."""
        per_seq = 256
        return (
            f"model={self.model.name} params={self.model.param_count / 1e9:.2f}B layout=tp{self.tp}-pp{self.pp} "
            f"gpu={self.gpu.name} mem={self.memory_gib:.2f}GiB weights/gpu={self.weight_bytes_per_gpu / GIB:.2f}GiB "
            f"kv_cache={self.kv_tokens} tokens ({self.kv_blocks} blocks; {self.kv_tokens / per_seq:.1f} seqs of "
            f"{per_seq} tokens; {self.kv_tokens / self.max_model_len:.2f}x max_model_len={self.max_model_len}) "
            f"max_num_seqs={self.opts.max_num_seqs} speed={self.opts.speed:g} noise={self.opts.noise:g}"
        )

    def allreduce_s(self, nbytes: float) -> float:
        """One ring all-reduce of ``nbytes`` over the TP group."""
        tp = self.tp
        if tp == 1:
            return 0.0
        steps = 2 * (tp - 1)
        return steps * self.gpu.link_latency_us * 1e-6 + steps / tp * nbytes / (
            self.gpu.link_gbs * 1e9 * BANDWIDTH_EFFICIENCY
        )

    def step_time(self, tokens: int, num_seqs: int, ctx_tokens: int, attn_pairs: int) -> float:
        """Seconds of one engine step, before speed and noise.

        ``tokens`` new tokens for ``num_seqs`` sequences; ``ctx_tokens`` KV entries the attention
        reads (sum of context lengths); ``attn_pairs`` query-key pairs (sum over new tokens of the
        context each attends to). With PP the batch is split into ``min(pp, num_seqs)``
        micro-batches; every sequence passes all ``pp`` stages per step.
        """
        if tokens <= 0:
            return 0.0
        g, m = self.gpu, self.model
        mb = min(self.pp, max(1, num_seqs))
        t, s, c, a = tokens / mb, num_seqs / mb, ctx_tokens / mb, attn_pairs / mb
        nbytes = self.weight_bytes_per_gpu + (c + t) * self.kv_bytes_per_token_gpu
        flops = (
            2 * t * self.layers_per_stage * self.layer_params_gpu
            + 2 * s * self.head_params_gpu
            + 4 * a * self.layers_per_stage * self.heads_per_gpu * m.head_dim
        )
        t_mem = nbytes / (g.mem_bw_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
        t_flop = flops / (g.fp16_tflops * 1e12 * COMPUTE_EFFICIENCY)
        act_bytes = t * m.hidden * m.dtype_bytes
        t_comm = 2 * self.layers_per_stage * self.allreduce_s(act_bytes)
        if self.pp > 1:
            t_comm += g.link_latency_us * 1e-6 + act_bytes / (g.link_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
        stage = max(t_mem, t_flop) + t_comm
        overhead = (self.opts.overhead_ms + self.opts.worker_overhead_ms * (self.num_gpus - 1)) * 1e-3
        return self.pp * stage + overhead

    def decode_step_time(self, batch: int, context: int) -> float:
        """One decode step of ``batch`` sequences, each with ``context`` tokens of KV."""
        return self.step_time(batch, batch, batch * (context + 1), batch * (context + 1))

    def prefill_time(self, chunk: int, context: int = 0) -> float:
        """Prefill of ``chunk`` prompt tokens of one sequence that already has ``context`` tokens."""
        pairs = chunk * context + chunk * (chunk + 1) // 2
        return self.step_time(chunk, 1, context + chunk, pairs)


@dataclass
class SimRequest:
    """One request inside the scheduler. Times are seconds on the caller's clock."""

    rid: int
    arrival: float
    prompt_len: int
    max_tokens: int
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0  # tokens emitted
    blocks: int = 0
    first_token: float | None = None
    finish: float | None = None
    preemptions: int = 0
    state: str = "new"  # new, waiting, running, done, aborted
    user: Any = field(default=None, repr=False)  # the server's stream handle

    @property
    def finished(self) -> bool:
        """All ``max_tokens`` emitted."""
        return self.num_output >= self.max_tokens

    @property
    def ttft(self) -> float:
        """First token minus arrival, seconds."""
        assert self.first_token is not None
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """vLLM's TPOT: ``(finish - first) / (out - 1)``, None for one token."""
        if self.num_output < 2 or self.finish is None or self.first_token is None:
            return None
        return (self.finish - self.first_token) / (self.num_output - 1)


@dataclass
class Step:
    """One planned engine step: (request, tokens) pairs and its duration."""

    items: list[tuple[SimRequest, int]]
    duration: float
    start: float


class Scheduler:
    """vLLM-like continuous batching: FCFS, chunked prefill, paged KV blocks, recompute preemption.

    Each step: running requests first (one decode token each, or their next prefill chunk), then
    waiting requests while the token budget (``max_num_batched_tokens``), ``max_num_seqs`` and
    free KV blocks allow. A running request that needs a block when none is free preempts the
    newest running request, which goes back to the head of the queue and recomputes its KV.

    Noise: each transition from idle to busy draws a drift factor ``exp(N(0, noise))`` that
    scales every step until the next idle period; ``jitter`` adds an independent per-step factor.
    """

    def __init__(self, perf: PerfModel) -> None:
        self.perf = perf
        self.opts = perf.opts
        self.block_size = self.opts.block_size
        self.total_blocks = perf.kv_blocks
        self.free_blocks = perf.kv_blocks
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.rng = random.Random(self.opts.seed)
        self.factor = 1.0
        self.idle = True
        self.peak_blocks = 0
        self.peak_running = 0
        self.busy_periods = 0
        self.steps = 0

    # --- requests ----------------------------------------------------------------------------
    def check(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why a request cannot be served (vLLM's max_model_len rule), or None."""
        total = prompt_len + max_tokens
        if prompt_len < 1:
            return "the prompt is empty"
        if total > self.perf.max_model_len:
            return (
                f"This model's maximum context length is {self.perf.max_model_len} tokens. However, you "
                f"requested {total} tokens ({prompt_len} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion."
            )
        return None

    def add(self, req: SimRequest) -> None:
        """Queue a request (its arrival must not be later than the next step's start)."""
        why = self.check(req.prompt_len, req.max_tokens)
        if why:
            raise SimError(why)
        req.state = "waiting"
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away) and free its blocks."""
        if req.state == "running":
            self.running.remove(req)
        elif req.state == "waiting":
            self.waiting.remove(req)
        self.free_blocks += req.blocks
        req.blocks = 0
        req.state = "aborted"
        if not self.has_work:
            self.idle = True

    @property
    def has_work(self) -> bool:
        """Anything running or waiting."""
        return bool(self.running or self.waiting)

    # --- steps -------------------------------------------------------------------------------
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _preempt(self) -> SimRequest:
        victim = self.running.pop()
        victim.state = "waiting"
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.num_computed = 0
        victim.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def plan(self, now: float) -> Step | None:
        """Choose the next step's work at time ``now``; None if nothing can run yet."""
        budget = self.opts.max_num_batched_tokens
        items: list[tuple[SimRequest, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.prompt_len + req.num_output - req.num_computed, budget)
            need = self._blocks_for(req.num_computed + n) - req.blocks
            while need > self.free_blocks:
                victim = self._preempt()
                preempted = True
                if victim is req:
                    break
            if req.state != "running":
                break
            self.free_blocks -= need
            req.blocks += need
            items.append((req, n))
            budget -= n
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.opts.max_num_seqs:
                req = self.waiting[0]
                if req.arrival > now:
                    break
                n = min(req.prompt_len + req.num_output - req.num_computed, budget)
                need = self._blocks_for(req.num_computed + n) - req.blocks
                if need > self.free_blocks:
                    break
                self.waiting.popleft()
                req.state = "running"
                self.free_blocks -= need
                req.blocks += need
                self.running.append(req)
                items.append((req, n))
                budget -= n
        if not items:
            return None
        used = self.total_blocks - self.free_blocks
        self.peak_blocks = max(self.peak_blocks, used)
        self.peak_running = max(self.peak_running, len(self.running))
        if self.idle:
            self.idle = False
            self.busy_periods += 1
            self.factor = math.exp(self.rng.gauss(0.0, self.opts.noise)) if self.opts.noise else 1.0
        return Step(items=items, duration=self.duration(items), start=now)

    def duration(self, items: Sequence[tuple[SimRequest, int]]) -> float:
        """Modelled seconds of a step over ``items``, with speed, drift and jitter applied."""
        if self.opts.instant:
            return 0.0
        tokens = ctx = pairs = 0
        for req, n in items:
            end = req.num_computed + n
            tokens += n
            ctx += end
            pairs += n * req.num_computed + n * (n + 1) // 2
        t = self.perf.step_time(tokens, len(items), ctx, pairs) / self.opts.speed * self.factor
        if self.opts.jitter:
            t *= math.exp(self.rng.gauss(0.0, self.opts.jitter))
        return t

    def finish(self, step: Step, end: float) -> list[SimRequest]:
        """Apply a step that ended at ``end``; return the requests that emitted a token."""
        emitted: list[SimRequest] = []
        done = False
        self.steps += 1
        for req, n in step.items:
            if req.state != "running":  # aborted meanwhile
                continue
            req.num_computed += n
            if req.num_computed >= req.prompt_len + req.num_output:
                req.num_output += 1
                if req.first_token is None:
                    req.first_token = end
                if req.num_output >= req.max_tokens:
                    req.finish = end
                    req.state = "done"
                    self.free_blocks += req.blocks
                    req.blocks = 0
                    done = True
                emitted.append(req)
        if done:
            self.running = [r for r in self.running if r.state == "running"]
        if not self.has_work:
            self.idle = True
        return emitted


def simulate(
    perf: PerfModel,
    arrivals: Sequence[float],
    input_lens: Sequence[int] | int,
    output_lens: Sequence[int] | int,
) -> list[SimRequest]:
    """Offline run: per-request true first-token and finish times for the given arrivals.

    Requests arriving during a step join at the next step, as in a real engine.
    """
    n = len(arrivals)
    ins = [input_lens] * n if isinstance(input_lens, int) else list(input_lens)
    outs = [output_lens] * n if isinstance(output_lens, int) else list(output_lens)
    reqs = [SimRequest(i, float(a), ins[i], outs[i]) for i, a in enumerate(arrivals)]
    order = sorted(reqs, key=lambda r: (r.arrival, r.rid))
    sched = Scheduler(perf)
    t = 0.0 if not order else min(0.0, order[0].arrival)
    k = 0
    while k < len(order) or sched.has_work:
        while k < len(order) and order[k].arrival <= t:
            sched.add(order[k])
            k += 1
        step = sched.plan(t)
        if step is None:
            if k < len(order):
                t = max(t, order[k].arrival)
                continue
            raise SimError("scheduler stalled with work left")  # pragma: no cover - invariant
        t += step.duration
        sched.finish(step, t)
    return reqs


def throughput(perf: PerfModel, num_requests: int, input_len: int, output_len: int) -> dict[str, float]:
    """Offline benchmark at rate inf: output tok/s overall and per GPU, mean TTFT/TPOT in ms."""
    reqs = simulate(perf, [0.0] * num_requests, input_len, output_len)
    dur = max(r.finish or 0.0 for r in reqs)
    out = sum(r.num_output for r in reqs)
    tpots = [t for r in reqs if (t := r.tpot) is not None]
    return {
        "duration_s": dur,
        "output_throughput": out / dur,
        "output_throughput_per_gpu": out / dur / perf.num_gpus,
        "mean_ttft_ms": 1e3 * sum(r.ttft for r in reqs) / len(reqs),
        "mean_tpot_ms": 1e3 * sum(tpots) / max(1, len(tpots)),
    }
