"""``mgpu_bench.sweep``: one result per concurrency (or request rate), and the regime it shows.

Each point is an ordinary result (its own entry id, gated like any other); the points of one sweep
share ``result.sweep["id"]``, so reports and plots can put them back together and find the knee
(:func:`pytest_mgpu.regime.find_knee`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .regime import Knee, find_knee
from .results import BenchResult

#: Sweep axes: ``concurrency`` (requests in flight, all sent at once: the batch) or ``rate`` (requests/s).
AXES = ("concurrency", "rate")


@dataclass
class Sweep:
    """The points of one sweep, in the order measured; :attr:`knee` is computed from the valid ones."""

    id: str
    axis: str
    points: list[BenchResult] = field(default_factory=list)
    kv_cache_tokens: int | None = None

    @property
    def xs(self) -> list[float]:
        """The swept values (concurrency or rate) of the points."""
        return [float(p.sweep["x"]) for p in self.points if p.sweep]

    def curve(self, metric: str = "output_throughput_per_gpu") -> list[tuple[float, float]]:
        """``(x, median metric)`` of every valid point, by x."""
        return sorted((float(p.sweep["x"]), p.median[metric]) for p in self.points if p.sweep and p.valid)

    @property
    def kv_seqs(self) -> float | None:
        """How many sequences of this sweep's length the engine's KV cache holds (if it logged its size)."""
        if not self.kv_cache_tokens or not self.points:
            return None
        w = self.points[0].workload
        return self.kv_cache_tokens / (w.input_len + w.output_len)

    @property
    def knee(self) -> Knee:
        """The regime of the per-GPU throughput curve."""
        pts = self.curve()
        return find_knee([x for x, _ in pts], [y for _, y in pts], self.kv_seqs if self.axis == "concurrency" else None)

    def describe(self) -> str:
        """One sentence: the regime in the sweep's own terms."""
        k = self.knee
        if self.axis == "rate" and k.kind == "memory-bound":
            return f"throughput follows the request rate up to {k.batch:g}/s and saturates beyond it"
        if self.axis == "rate" and k.kind == "compute-bound":
            return "throughput is saturated from the lowest rate swept"
        if self.axis == "rate" and k.kind == "no-knee":
            return f"throughput still follows the request rate at {k.batch:g}/s: not saturated in range"
        return k.describe("batch")


def sweep_info(sweep_id: str, axis: str, x: float, kv_cache_tokens: int | None) -> dict[str, Any]:
    """What a point of a sweep records in ``BenchResult.sweep``."""
    return {"id": sweep_id, "axis": axis, "x": x, "kv_cache_tokens": kv_cache_tokens}


def group_sweeps(results: Sequence[BenchResult]) -> list[Sweep]:
    """The sweeps among ``results``, rebuilt from their points (by test, layout and sweep id)."""
    out: dict[tuple[str, str, str], Sweep] = {}
    for r in results:
        if not r.sweep:
            continue
        key = (r.nodeid, r.layout.id, str(r.sweep["id"]))
        s = out.setdefault(key, Sweep(f"{r.test_name}::{r.sweep['id']}", str(r.sweep["axis"]),
                                      kv_cache_tokens=r.sweep.get("kv_cache_tokens")))
        s.points.append(r)
    return list(out.values())


__all__ = ["AXES", "Sweep", "group_sweeps", "sweep_info"]
