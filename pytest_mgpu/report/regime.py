"""Why a number is what it is: the decode roofline per layout, and the regime of a batch sweep.

**Decode floor.** One decode step of a single stream reads every weight of a GPU once, so it can
take no less than ``weight bytes per GPU / HBM bandwidth``; with pipeline parallelism a token
passes the ``pp`` stages in turn, so the floor of TPOT is ``pp x weight bytes per GPU /
bandwidth`` (KV reads and communication are left out: at a few hundred tokens of context they are
small, which makes this a floor). ``efficiency = floor / measured TPOT p50`` of a single-stream
run (``max_concurrency=1``): 100% would be the card's peak bandwidth doing nothing but weights.
Bandwidths come from :mod:`pytest_mgpu.cards` (data sheets), else from NVML.

**Regime.** In the memory-bound regime a decode step costs about the same for 1 or 32 sequences
(reading the weights dominates), so throughput grows in proportion to the batch; once compute
dominates, a bigger batch only makes each step longer and throughput stops growing. The rule
(:func:`find_knee`), over a sweep of batches ``b_1 < b_2 < ... < b_n`` with per-GPU throughputs
``y_i``: the knee is the smallest batch whose throughput reaches :data:`SATURATION` (90%) of the
sweep's best, ``B = min{b_i : y_i >= 0.9 max y}``. Below ``B`` throughput still grew with the
batch: "memory-bound up to batch B". ``B = b_1``: "compute-bound" from the smallest batch;
``B = b_n``: still growing at the end, "no knee" in range. On a geometric sweep (x2 per point)
of an ideal roofline whose true knee is ``b*`` the reported ``B`` lies in ``[0.9 b*, 1.8 b*)``
(tested with hypothesis in ``tests/test_regime.py``). Saturation against the best point, rather
than the slope of each step, keeps one noisy point from moving the knee: it can only shift ``B``
by one grid step when it sits next to the 90% line. Each step's scaling,
``log(y_{i+1}/y_i) / log(b_{i+1}/b_i)`` (1: throughput doubles with the batch; 0: flat), is
reported beside it.

Where the engine reports its KV-cache capacity (vLLM's and the sim's logs), a knee at the batch
the cache can hold is named for what it is: the KV cache, not compute, stops the batch from
growing. That is the seed's case of TP=1 on 16 GB V100s: still memory-bound, so splitting the
weights over two GPUs frees memory for a larger batch and raises tokens/s per GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cards import BY_KEY, card_for_name, nvml_bandwidth_gbs
from ..models import Model
from ..models.sizes import weight_bytes_per_gpu, weight_dtype_bytes

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..engines import RunningEngine
    from ..gpus import GpuInventory

#: The knee is the smallest batch whose throughput reaches this fraction of the sweep's best.
SATURATION = 0.9
#: A knee within this fraction of the KV cache's capacity (in sequences) is the cache's limit.
KV_LIMIT_SLACK = 0.8
GIB = 2**30


@dataclass(frozen=True)
class Roofline:
    """The decode floor of one layout on one card."""

    card: str
    hbm_gbs: float
    source: str  # "spec sheet" or "NVML memory clock x bus width"
    weight_bytes_per_gpu: int
    pp: int = 1

    @property
    def floor_ms(self) -> float:
        """Lowest possible single-stream TPOT, ms: pp x weight bytes per GPU / bandwidth."""
        return self.pp * self.weight_bytes_per_gpu / (self.hbm_gbs * 1e9) * 1e3

    def efficiency(self, tpot_ms: float) -> float | None:
        """floor / measured TPOT (None for a TPOT that is not positive)."""
        return self.floor_ms / tpot_ms if tpot_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the floor."""
        return asdict(self) | {"floor_ms": round(self.floor_ms, 4)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Roofline:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["card"]), float(data["hbm_gbs"]), str(data["source"]),
                   int(data["weight_bytes_per_gpu"]), int(data.get("pp", 1)))


def roofline(
    model: Model, tp: int, pp: int, *, card_key: str | None = None, gpu_names: Sequence[str] = (),
    gpu_ids: Sequence[int] = (), dtype: str | None = None, nvml: Any = None,
) -> Roofline | None:
    """The roofline of ``model`` on a ``tp`` x ``pp`` layout, or None without a known bandwidth (CPU).

    The card is ``card_key`` (a sim profile), else the one the NVML names denote; a card missing
    from the table gets NVML's bandwidth of its first GPU.
    """
    try:
        nbytes = weight_dtype_bytes(model.config, dtype)
        weights = weight_bytes_per_gpu(model.config, tp, pp, nbytes)
    except (KeyError, TypeError, ValueError):
        return None
    if card_key is not None:
        c = BY_KEY.get(card_key)
        return Roofline(c.title, c.mem_bw_gbs, "spec sheet", weights, pp) if c else None
    if not gpu_names:
        return None
    c = card_for_name(gpu_names[0])
    if c is not None:
        return Roofline(c.title, c.mem_bw_gbs, "spec sheet", weights, pp)
    bw = nvml_bandwidth_gbs(gpu_ids[0], nvml) if gpu_ids else None
    if bw is None:
        return None
    return Roofline(gpu_names[0], bw, "NVML memory clock x bus width", weights, pp)


def roofline_for_engine(engine: RunningEngine, gpus: GpuInventory) -> Roofline | None:
    """The roofline of a running engine's layout: the sim's profile, or the NVML cards it runs on."""
    opts = dict(engine.spec.options) if engine.spec is not None else {}
    dtype = opts.get("dtype")
    if engine.name == "sim":
        return roofline(engine.model, engine.layout.tp, engine.layout.pp, card_key=opts.get("gpu", "v100-16gb"))
    names = [g.name for g in gpus.gpus if g.index in set(engine.gpu_ids)]
    return roofline(engine.model, engine.layout.tp, engine.layout.pp, gpu_names=names, gpu_ids=engine.gpu_ids,
                    dtype=dtype)


def is_single_stream(workload: Mapping[str, Any]) -> bool:
    """A workload with one request in flight at a time (its TPOT is the decode floor's match)."""
    return workload.get("max_concurrency") == 1 or int(workload.get("num_requests", 0)) == 1


# --- the knee ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knee:
    """The regime of one sweep.

    ``kind``: ``memory-bound`` (a knee at ``batch``), ``compute-bound`` (throughput flat from the
    smallest batch), ``no-knee`` (still scaling at the largest batch) or ``too-few-points``.
    ``kv_limited``: the knee sits at the batch the engine's KV cache holds.
    """

    kind: str
    batch: float | None
    scaling: tuple[float, ...]
    kv_seqs: float | None = None
    kv_limited: bool = False

    def describe(self, axis: str = "batch") -> str:
        """One sentence for the report."""
        s = ", ".join(f"{x:.2f}" for x in self.scaling)
        if self.kind == "too-few-points":
            return "too few valid points for a regime (need 2 or more)"
        if self.kind == "compute-bound":
            return (f"compute-bound: throughput is within {1 - SATURATION:.0%} of its best at the smallest "
                    f"{axis}, {self.batch:g} (scaling per step {s})")
        if self.kind == "no-knee":
            return (f"memory-bound over the whole sweep (up to {axis} {self.batch:g}): throughput still grows; "
                    f"sweep further (scaling per step {s})")
        text = f"memory-bound up to {axis} {self.batch:g} (scaling per step {s})"
        if self.kv_limited and self.kv_seqs is not None:
            text += (f"; the KV cache holds ~{self.kv_seqs:.0f} sequences of this length, so the cache, "
                     f"not compute, stops the batch: more memory per GPU (tensor parallelism) would raise "
                     f"tokens/s per GPU")
        elif self.kv_seqs is not None:
            text += f"; compute-bound beyond it (the KV cache would hold ~{self.kv_seqs:.0f} sequences)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "batch": self.batch, "kv_seqs": self.kv_seqs, "kv_limited": self.kv_limited,
                "scaling": [s if math.isfinite(s) else None for s in self.scaling]}


def scaling(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Per step, log(y ratio) / log(x ratio): how throughput scales with the batch (1 linear, 0 flat)."""
    out = []
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        ratio = y1 / y0 if y0 > 0 else math.inf
        if x1 <= x0 or ratio <= 0 or not math.isfinite(ratio):
            out.append(-math.inf if ratio <= 0 else 0.0)
        else:
            out.append(math.log(ratio) / math.log(x1 / x0))
    return out


def find_knee(
    xs: Sequence[float], ys: Sequence[float], kv_seqs: float | None = None, saturation: float = SATURATION,
) -> Knee:
    """The regime of a sweep of batches ``xs`` with throughputs ``ys`` (see the module doc)."""
    pts = sorted((float(x), float(y)) for x, y in zip(xs, ys) if x > 0 and math.isfinite(y) and y >= 0)
    if len(pts) < 2:
        return Knee("too-few-points", None, (), kv_seqs)
    bx, by = [p[0] for p in pts], [p[1] for p in pts]
    sc = tuple(round(s, 3) for s in scaling(bx, by))
    best = max(by)
    i = next(k for k, y in enumerate(by) if y >= saturation * best)
    if i == 0:
        return Knee("compute-bound", bx[0], sc, kv_seqs)
    if i == len(bx) - 1:
        return Knee("no-knee", bx[-1], sc, kv_seqs)
    b = bx[i]
    kv_limited = kv_seqs is not None and b >= KV_LIMIT_SLACK * kv_seqs
    return Knee("memory-bound", b, sc, kv_seqs, kv_limited)


#: KV-cache capacity lines: vLLM ("GPU KV cache size: 262,144 tokens") and the sim ("kv_cache=1234 tokens").
_KV_PATTERNS = (re.compile(r"KV cache size: ([\d,]+) tokens"), re.compile(r"kv_cache=(\d+) tokens"))


def kv_cache_tokens(log_path: Path | None, max_bytes: int = 4 << 20) -> int | None:
    """The KV-cache capacity in tokens that the engine logged at start, or None."""
    if log_path is None or not log_path.is_file():
        return None
    with open(log_path, "rb") as fh:
        text = fh.read(max_bytes).decode("utf-8", "replace")
    for pat in _KV_PATTERNS:
        m = pat.search(text)
        if m:
            return int(m.group(1).replace(",", ""))
    return None


__all__ = [
    "SATURATION",
    "Knee",
    "Roofline",
    "find_knee",
    "is_single_stream",
    "kv_cache_tokens",
    "roofline",
    "roofline_for_engine",
    "scaling",
]
