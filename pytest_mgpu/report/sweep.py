"""``mgpu_bench.sweep``: one result per concurrency (or request rate), and the regime it shows.

Each point is an ordinary result (its own entry id, gated like any other); the points of one sweep
share ``result.sweep["id"]``, so reports and plots can put them back together and find the knee
(:func:`pytest_mgpu.report.regime.find_knee`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..judge.results import BenchResult
from .regime import Knee, find_knee

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


def plot_sweep(sweep: Sweep, path: Path) -> Path:
    """Draw a sweep to ``path`` (PNG): per-GPU throughput and TPOT p50 against the swept value, the knee marked.

    Needs matplotlib (the ``plot`` extra); imported here only, with the Agg backend (no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in sorted(sweep.points, key=lambda p: float(p.sweep["x"]) if p.sweep else 0.0) if p.valid]
    xs = [float(p.sweep["x"]) for p in pts if p.sweep]
    tput = [p.median["output_throughput_per_gpu"] for p in pts]
    tpot = [p.median["tpot_p50"] for p in pts]
    knee = sweep.knee
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    ax.plot(xs, tput, "o-", color="tab:blue", label="output tok/s per GPU")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("concurrency (batch)" if sweep.axis == "concurrency" else "request rate (req/s)")
    ax.set_ylabel("output tokens/s per GPU", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, tpot, "s--", color="tab:orange", label="TPOT p50 (ms)")
    ax2.set_ylabel("TPOT p50 (ms)", color="tab:orange")
    if knee.batch is not None and knee.kind == "memory-bound":
        ax.axvline(knee.batch, color="grey", linestyle=":", label=f"knee: {knee.batch:g}")
    if sweep.kv_seqs is not None and sweep.axis == "concurrency":
        ax.axvline(sweep.kv_seqs, color="tab:red", linestyle="-.", alpha=0.6,
                   label=f"KV cache holds ~{sweep.kv_seqs:.0f} seqs")
    first = sweep.points[0]
    ax.set_title(f"{sweep.id}\n{first.engine} {first.engine_version}, {first.model}, {first.layout.id}", fontsize=9)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    wrapped = textwrap.wrap(sweep.describe(), 130)
    fig.text(0.01, 0.01, "\n".join(wrapped), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 * len(wrapped) + 0.01, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_file_name(sweep: Sweep) -> str:
    """A file name for a sweep's plot: its id with anything but letters, digits, ``-_.`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sweep.id).strip("_") + ".png"


__all__ = ["AXES", "Sweep", "group_sweeps", "plot_file_name", "plot_sweep", "sweep_info"]
