"""Roofline model of an LLM server (pure Python, no I/O): GPU profiles, options, step times.

The simulated engine uses it to decide how long each engine step takes. Nothing in here is a
per-layout number: weights, KV cache and communication follow from the model's ``config.json``
(through :mod:`pytest_mgpu.models.sizes`), the GPU's spec sheet and a few documented constants
(see ``docs/sim.md``).

* :class:`GpuProfile` -- public spec-sheet numbers of one card.
* :class:`SimOptions` -- every ``--opt KEY=VALUE`` of the sim server.
* :class:`PerfModel` -- a model on a layout (TP x PP): memory plan, KV capacity, step times.

The continuous-batching scheduler that drives it is in :mod:`.scheduler`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..cards import BY_KEY
from ..errors import ModelError, SimError, SimOptionError
from ..models.sizes import ModelShape

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


#: The cards the sim models, from the shared card table (spec sheets: :mod:`pytest_mgpu.cards`).
SIM_CARDS = ("v100-16gb", "a100-80gb", "h100-80gb", "h200-141gb")


def _profile(key: str) -> GpuProfile:
    c = BY_KEY[key]
    assert c.fp16_tflops is not None and c.link_gbs is not None and c.link_latency_us is not None
    return GpuProfile(c.key, c.memory_gib, c.mem_bw_gbs, c.fp16_tflops, c.link_gbs, c.link_latency_us)


GPU_PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        *(_profile(k) for k in SIM_CARDS),
        # No delay at all: streams tokens as fast as the server can write them.
        GpuProfile("instant", 1024.0, 1e9, 1e9, 1e9, 0.0, instant=True),
    )
}
DEFAULT_GPU = "v100-16gb"

#: Inter-node network per GPU, per direction, GB/s, for layouts spread over nodes (``nodes > 1``):
#: the NICs of the vendor's reference server for each card, divided by its GPUs. DGX-1 (V100): 4x
#: 100 Gb/s EDR InfiniBand for 8 GPUs; DGX A100: 8x 200 Gb/s HDR, one per GPU; DGX H100/H200: 8x
#: 400 Gb/s NDR, one per GPU. A tenth to a thirtieth of the NVLink figure of the same card.
INTERNODE_GBS: dict[str, float] = {
    "v100-16gb": 4 * 100 / 8 / 8,
    "a100-80gb": 200 / 8,
    "h100-80gb": 400 / 8,
    "h200-141gb": 400 / 8,
    "instant": 1e9,
}
#: Latency of one inter-node ring step or p2p send (NIC, switch, NCCL's network proxy), in µs: an
#: estimate, several times NVLink's.
INTERNODE_LATENCY_US = 10.0



def get_profile(name: str) -> GpuProfile:
    """The profile called ``name``; :class:`SimError` lists the known ones otherwise."""
    try:
        return GPU_PROFILES[name]
    except KeyError:
        raise SimOptionError(f"unknown GPU profile {name!r}; choose one of: {', '.join(GPU_PROFILES)}") from None


def load_shape(path: str | Path) -> ModelShape:
    """The shape of the model in directory ``path``; :class:`SimError` when it is unusable."""
    try:
        return ModelShape.from_dir(path)
    except ModelError as exc:
        raise SimError(f"{exc} for the sim's model") from None


@dataclass
class SimOptions:
    """Every ``--opt KEY=VALUE`` of the sim server; see docs/sim.md."""

    gpu: str = DEFAULT_GPU
    speed: float = 1.0
    noise: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    zero: bool = False
    # How clients time it: "model" (announced schedules get modelled stamps) or "wall" (declined: timed
    # like a real engine, by the client's own clock).
    clock: str = "model"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 0  # 0: the config's max_position_embeddings, capped to the KV cache
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    nodes: int = 1  # nodes the tp x pp GPUs are spread over (the layout's nodes)
    overhead_ms: float = DEFAULT_OVERHEAD_MS
    worker_overhead_ms: float = DEFAULT_WORKER_OVERHEAD_MS
    # Pacing (server only): the modelled clock runs time_scale x faster than the wall clock; inf: unpaced.
    time_scale: float = 1.0
    # Fault injection (server only).
    fail_start: bool = False
    start_delay: float = 0.0
    crash_after: int = -1
    hang_after: int = -1
    short_tokens: int = 0
    speed_until: int = -1  # N: `speed` holds for the first N completion requests, then 1 (a change that does not last)
    # A busy host (server only): every host_lag_every-th step, block for host_lag_ms before writing.
    host_lag_ms: float = 0.0
    host_lag_every: int = 0
    # On a Ray cluster only (read by .ray_workers, which holds the stand-in workers; the server ignores them).
    ray_leak: bool = False  # also start a detached actor that outlives the sim: a teardown fault
    ray_timeout: float = 60.0  # seconds to wait for the cluster's GPUs and the workers

    @classmethod
    def names(cls) -> list[str]:
        """Valid option keys."""
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, pairs: Mapping[str, str]) -> SimOptions:
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
        if not self.time_scale > 0:
            raise SimOptionError(f"sim option time_scale={self.time_scale} must be > 0 (1 = real time, inf = unpaced)")
        if self.clock not in ("model", "wall"):
            raise SimOptionError(f"sim option clock={self.clock!r} must be model or wall")
        if not self.speed > 0:
            raise SimOptionError(f"sim option speed={self.speed} must be > 0 (1.25 = 25% faster)")
        nonneg = ("noise", "jitter", "overhead_ms", "worker_overhead_ms", "start_delay", "host_lag_ms", "ray_timeout")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise SimOptionError(f"sim option {name}={getattr(self, name)} must be >= 0")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "nodes"):
            if getattr(self, name) < 1:
                raise SimOptionError(f"sim option {name}={getattr(self, name)} must be >= 1")
        if self.host_lag_every < 0:
            raise SimOptionError(f"sim option host_lag_every={self.host_lag_every} must be >= 0 (0: off)")
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
        model: ModelShape,
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
        self.nodes = self.opts.nodes
        if (tp * pp) % self.nodes:
            raise SimError(f"nodes={self.nodes} does not divide the {tp * pp} GPUs of tp={tp} x pp={pp}")
        self.layers_per_stage = math.ceil(m.layers / pp)  # the busiest stage sets the pace
        self.heads_per_gpu = m.heads // tp
        self.kv_heads_per_gpu = max(1, m.kv_heads // tp)  # KV heads are replicated when tp > kv_heads
        h, d = m.hidden, m.head_dim
        layer_gpu = m.layer_params_per_gpu(tp)
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
            f"model={self.model.name} params={self.model.param_count / 1e9:.2f}B layout=tp{self.tp}-pp{self.pp}"
            f"{f'-n{self.nodes}' if self.nodes > 1 else ''} "
            f"gpu={self.gpu.name} mem={self.memory_gib:.2f}GiB weights/gpu={self.weight_bytes_per_gpu / GIB:.2f}GiB "
            f"kv_cache={self.kv_tokens} tokens ({self.kv_blocks} blocks; {self.kv_tokens / per_seq:.1f} seqs of "
            f"{per_seq} tokens; {self.kv_tokens / self.max_model_len:.2f}x max_model_len={self.max_model_len}) "
            f"max_num_seqs={self.opts.max_num_seqs} speed={self.opts.speed:g} noise={self.opts.noise:g}"
        )

    @property
    def gpus_per_node(self) -> int:
        """GPUs of the layout on each node."""
        return self.num_gpus // self.nodes

    @property
    def tp_spans_nodes(self) -> bool:
        """Whether a TP group crosses nodes (ranks fill a node before the next, as vLLM's Ray executor packs them)."""
        return self.tp > self.gpus_per_node

    @property
    def pp_crossings(self) -> int:
        """Stage-to-stage sends per step that cross nodes (of the ``pp`` sends the model counts per step)."""
        if self.pp == 1 or self.nodes == 1:
            return 0
        g = self.gpus_per_node
        # Rank r of stage s is s*tp + r; it sends to (s+1)*tp + r. Node of a rank: rank // g.
        return sum(1 for s in range(self.pp - 1) if (s * self.tp) // g != ((s + 1) * self.tp) // g)

    def _link(self, internode: bool) -> tuple[float, float]:
        """(bandwidth B/s after efficiency, latency s) of the NVLink or the inter-node network."""
        if internode:
            return INTERNODE_GBS[self.gpu.name] * 1e9 * BANDWIDTH_EFFICIENCY, INTERNODE_LATENCY_US * 1e-6
        return self.gpu.link_gbs * 1e9 * BANDWIDTH_EFFICIENCY, self.gpu.link_latency_us * 1e-6

    def allreduce_s(self, nbytes: float) -> float:
        """One ring all-reduce of ``nbytes`` over the TP group (at the inter-node speed if the group spans nodes)."""
        tp = self.tp
        if tp == 1:
            return 0.0
        steps = 2 * (tp - 1)
        bw, lat = self._link(self.tp_spans_nodes)
        return steps * lat + steps / tp * nbytes / bw

    def send_s(self, nbytes: float, internode: bool = False) -> float:
        """One point-to-point send of ``nbytes`` between pipeline stages."""
        bw, lat = self._link(internode)
        return lat + nbytes / bw

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
            # One send per stage and step; those that cross a node boundary go over the network.
            cross = self.pp_crossings
            if cross:
                inter, intra = self.send_s(act_bytes, internode=True), self.send_s(act_bytes)
                t_comm += (cross * inter + (self.pp - cross) * intra) / self.pp
            else:
                t_comm += self.send_s(act_bytes)
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


