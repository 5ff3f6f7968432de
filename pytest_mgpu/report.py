"""Terminal reports: per-item results, per-layout scaling (the seed's Tables 3-4), gate summary."""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import pytest

from .layout import Layout
from .results import BenchResult
from .session import STATE_KEY


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align_right_from: int = 1) -> list[str]:
    """Align ``rows`` under ``headers``; columns from ``align_right_from`` on are right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(
            (c.rjust(w) if i >= align_right_from else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    return [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def item_rows(results: Sequence[BenchResult]) -> list[list[Any]]:
    """One row per result: the per-item table."""
    rows = []
    for r in results:
        m = r.median if r.repeats else {}
        rows.append([
            f"{r.test_name}::{r.label or r.workload.name}",
            r.engine, r.engine_version, r.layout.id, r.num_gpus,
            m.get("output_throughput"), m.get("output_throughput_per_gpu"),
            m.get("ttft_p50"), m.get("ttft_p99"), m.get("tpot_p50"), m.get("tpot_p99"),
            "ok" if r.valid else "INVALID",
        ])
    return rows


ITEM_HEADERS = ("result", "engine", "version", "layout", "GPUs", "out tok/s", "tok/s/GPU",
                "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "run")


def scaling_rows(results: Sequence[BenchResult]) -> list[list[Any]]:
    """Group valid results by engine, model, workload and layout; per-GPU gain over TP=1.

    The reference is the ``tp=1, pp=1`` layout with the same memory cap, as in the seed's Table 4.
    """
    groups: dict[tuple[str, str, str, Layout], list[BenchResult]] = {}
    for r in results:
        if r.valid:
            groups.setdefault((r.engine, r.model, r.label or r.workload.name, r.layout), []).append(r)

    def per_gpu(rs: list[BenchResult]) -> float:
        return statistics.median(x.median["output_throughput_per_gpu"] for x in rs)

    rows: list[list[Any]] = []
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3].gpu_mem_gb or 0.0, k[3].num_gpus, k[3].id))
    for key in order:
        engine, model, wl, lay = key
        rs = groups[key]
        ref = groups.get((engine, model, wl, Layout(1, 1, lay.gpu_mem_gb)))
        gain: str | None = None
        if lay.num_gpus == 1:
            gain = "(ref)"
        elif ref and per_gpu(ref) > 0:
            gain = f"{(per_gpu(rs) / per_gpu(ref) - 1) * 100:+.0f}%"
        tput = statistics.median(x.median["output_throughput"] for x in rs)
        tpot = statistics.median(x.median["tpot_p50"] for x in rs)
        rows.append([engine, model, wl, lay.id, lay.num_gpus, tput, per_gpu(rs), gain, tpot])
    return rows


SCALING_HEADERS = ("engine", "model", "workload", "layout", "GPUs", "out tok/s", "tok/s/GPU",
                   "per-GPU gain vs TP=1", "TPOT p50 ms")


def terminal_summary(tr: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Write the mgpu sections of the terminal summary."""
    state = config.stash.get(STATE_KEY, None)
    if state is None or not (state.results or state.comparisons or state.errors):
        return
    tr.write_sep("=", "mgpu results")
    if state.results:
        for line in format_table(ITEM_HEADERS, item_rows(state.results)):
            tr.write_line(line)
        invalid = [r for r in state.results if not r.valid]
        for r in invalid:
            tr.write_line(f"INVALID {r.entry_id}: {r.invalid}")
        rows = scaling_rows(state.results)
        if rows:
            tr.write_sep("-", "per-GPU scaling (output tokens/s normalised by tp x pp)")
            for line in format_table(SCALING_HEADERS, rows):
                tr.write_line(line)
    from .gate import gate_summary_lines

    lines = gate_summary_lines(config, state)
    if lines:
        tr.write_sep("-", "mgpu gate")
        for line in lines:
            tr.write_line(line)
    for err in state.errors:
        tr.write_line(err)
