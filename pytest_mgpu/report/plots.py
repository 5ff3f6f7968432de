"""``--mgpu-plot DIR``: the seed's charts as PNG files, from a session's results.

Per model and workload: output tokens/s per GPU by layout with one bar per engine and each bar's
gain over TP=1 on it (the seed's bar charts), and TPOT p50 by layout; one panel per memory cap.
Every sweep (``mgpu_bench.sweep``) is drawn by :func:`pytest_mgpu.report.sweep.plot_sweep`.

matplotlib is an optional extra (``pip install 'pytest-mgpu[plot]'``): it is imported here only,
and this module only when plots are asked for, with the Agg backend (no display needed).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from ..judge.results import BenchResult
from .summary import SeedRow, layout_order, seed_rows
from .sweep import group_sweeps, plot_file_name, plot_sweep

INSTALL_HINT = "pip install matplotlib (the plot extra: pip install -e '.[plot]' in a checkout of pytest-mgpu)"


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn here (matplotlib not installed), or None; imports nothing."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"--mgpu-plot needs matplotlib, which is not installed: {INSTALL_HINT}"
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _cap_title(cap: float | None) -> str:
    return "uncapped" if cap is None else f"{cap:g} GB per GPU"


def _bar_chart(rows: Sequence[SeedRow], metric: str, path: Path, title: str) -> Path:
    """Grouped bars: one group per layout, one bar per engine; a panel per memory cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = sorted({r.engine for r in rows})
    caps = sorted({r.layout.gpu_mem_gb for r in rows}, key=lambda c: c or 0.0)
    fig, axes = plt.subplots(1, len(caps), figsize=(max(6.0, 4.6 * len(caps)), 4.6), dpi=110,
                             squeeze=False, sharey=True)
    width = 0.8 / len(engines)
    colors = plt.get_cmap("tab10")
    for ax, cap in zip(axes[0], caps):
        layouts = sorted({r.layout for r in rows if r.layout.gpu_mem_gb == cap}, key=layout_order)
        cell = {(r.layout, r.engine): r for r in rows}
        for k, engine in enumerate(engines):
            xs, ys, labels = [], [], []
            for i, lay in enumerate(layouts):
                r = cell.get((lay, engine))
                if r is None:
                    continue
                xs.append(i + (k - (len(engines) - 1) / 2) * width)
                ys.append(r.per_gpu if metric == "per_gpu" else r.tpot_p50)
                if metric == "per_gpu":
                    labels.append("TP=1" if lay.num_gpus == 1 else
                                  (f"{r.gain * 100:+.0f}%" if r.gain is not None else ""))
                else:
                    labels.append(f"{r.tpot_p50:.1f}")
            bars = ax.bar(xs, ys, width * 0.95, label=engine, color=colors(k))
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(range(len(layouts)), [lay.id.removesuffix(f"-mem{cap:g}") if cap else lay.id
                                            for lay in layouts], rotation=0, fontsize=8)
        ax.set_xlabel(f"layout ({_cap_title(cap)}); GPUs = tp x pp")
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("output tokens/s per GPU" if metric == "per_gpu" else "TPOT p50 (ms)")
    axes[0][-1].legend(title="engine", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(results: Sequence[BenchResult], out_dir: Path) -> list[Path]:
    """Draw every chart the results allow into ``out_dir``; the paths written, in order."""
    written: list[Path] = []
    by_wl: dict[tuple[str, str], list[SeedRow]] = {}
    for row in seed_rows(results):
        by_wl.setdefault((row.model, row.workload), []).append(row)
    for (model, wl), rows in by_wl.items():
        engines = ", ".join(sorted({r.engine for r in rows}))
        base = out_dir / f"seed-{_slug(model)}-{_slug(wl)}"
        written.append(_bar_chart(
            rows, "per_gpu", Path(f"{base}-tok_s_per_gpu.png"),
            f"{model}, {wl}: output tokens/s per GPU ({engines}); on each bar its gain over TP=1"))
        written.append(_bar_chart(
            rows, "tpot", Path(f"{base}-tpot_p50.png"), f"{model}, {wl}: TPOT p50 by layout ({engines})"))
    # The sweeps' own charts (engineer "depth"'s plot_sweep): one per sweep.
    for sw in group_sweeps(results):
        written.append(plot_sweep(sw, out_dir / plot_file_name(sw)))
    return written
