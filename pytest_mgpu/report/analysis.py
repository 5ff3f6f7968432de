"""The summary sections that say *why*: GPU telemetry beside throughput, the decode roofline, the sweeps' regimes.

Only computes rows and yields lines (``(sep, text)`` as :mod:`pytest_mgpu.report.summary`); the session
writes them. Each section appears only when its data exists (telemetry needs NVML and GPUs, the
roofline a known card and a single-stream result, a regime a sweep).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..judge.results import BenchResult
from ..measure.telemetry import aggregate, clock_warnings
from .regime import Roofline, is_single_stream
from .render.table import format_table
from .sweep import group_sweeps

Line = tuple["str | None", str]
#: Looks up the compact telemetry a result's baseline entry recorded (None when there is none).
BaselineTelemetry = Callable[[BenchResult], "Mapping[str, float] | None"]

TELEMETRY_HEADERS = ("result", "layout", "tok/s/GPU", "util %", "power W", "mem GiB", "SM MHz", "SM spread",
                     "SM vs base")
ROOFLINE_HEADERS = ("result", "engine", "layout", "card", "HBM GB/s", "weights/GPU GiB", "floor ms",
                    "TPOT p50 ms", "efficiency")
SWEEP_HEADERS = ("point", "tok/s/GPU", "out tok/s", "TTFT p50 ms", "TPOT p50 ms", "scaling", "run")


def entry(r: BenchResult) -> str:
    """How a result is named in every table: ``test::workload-or-label``."""
    return f"{r.test_name}::{r.label or r.workload.name}"


def telemetry_rows(
    results: Sequence[BenchResult], baseline: BaselineTelemetry | None = None
) -> tuple[list[list[Any]], list[str]]:
    """One row per result that has telemetry, and the SM-clock warnings."""
    rows: list[list[Any]] = []
    warnings: list[str] = []
    for r in results:
        tel = [rep.telemetry for rep in r.repeats]
        agg = aggregate(tel)
        if agg is None:
            continue
        base = baseline(r) if baseline is not None else None
        vs = None
        if base and base.get("sm_clock_mhz") and "sm_clock_mhz" in agg:
            vs = f"{(agg['sm_clock_mhz'] / base['sm_clock_mhz'] - 1) * 100:+.1f}%"
        spread = agg.get("clock_spread")
        rows.append([
            entry(r), r.layout.id, r.median.get("output_throughput_per_gpu") if r.repeats else None,
            agg.get("util_pct"), agg.get("power_w"),
            agg["mem_used_mib"] / 1024 if "mem_used_mib" in agg else None,
            agg.get("sm_clock_mhz"), f"{spread * 100:.1f}%" if spread is not None else None, vs,
        ])
        warnings += clock_warnings(entry(r), tel, base)
    return rows, warnings


def roofline_rows(results: Sequence[BenchResult]) -> list[list[Any]]:
    """One row per valid single-stream result with a known card: floor, TPOT, efficiency."""
    rows: list[list[Any]] = []
    for r in results:
        if not (r.roofline and r.valid and r.repeats and is_single_stream(r.workload.to_dict())):
            continue
        rl = Roofline.from_dict(r.roofline)
        tpot = r.median.get("tpot_p50", 0.0)
        eff = rl.efficiency(tpot)
        bw = f"{rl.hbm_gbs:,.0f}" + ("" if rl.source == "spec sheet" else " (NVML)")
        rows.append([
            entry(r), r.engine, r.layout.id, rl.card, bw,
            rl.weight_bytes_per_gpu / 2**30, rl.floor_ms, tpot, f"{eff * 100:.0f}%" if eff is not None else None,
        ])
    return rows


def sweep_sections(results: Sequence[BenchResult]) -> Iterator[Line]:
    """Per sweep: its points, each step's scaling, and the regime in one sentence."""
    for sw in group_sweeps(results):
        first = sw.points[0]
        yield "-", f"sweep {sw.id} ({first.engine}, {first.layout.id}, {sw.axis})"
        knee = sw.knee
        by_x = {float(p.sweep["x"]): p for p in sw.points if p.sweep}
        curve = sw.curve()
        steps = dict(zip([x for x, _ in curve[1:]], knee.scaling))
        rows = []
        for x in sorted(by_x):
            p = by_x[x]
            m = p.median if p.repeats else {}
            label = f"c={x:g}" if sw.axis == "concurrency" else f"{x:g} req/s"
            rows.append([label, m.get("output_throughput_per_gpu"), m.get("output_throughput"), m.get("ttft_p50"),
                         m.get("tpot_p50"), steps.get(x), "ok" if p.valid else "INVALID"])
        for line in format_table(SWEEP_HEADERS, rows):
            yield None, line
        yield None, f"regime: {sw.describe()}"


def analysis_lines(results: Sequence[BenchResult], baseline: BaselineTelemetry | None = None) -> Iterator[Line]:
    """Every line of the telemetry, roofline and sweep sections (none when there is nothing to say)."""
    rows, warnings = telemetry_rows(results, baseline)
    if rows:
        yield "-", "GPU telemetry during the measured phase (utilisation is shown, not judged)"
        for line in format_table(TELEMETRY_HEADERS, rows):
            yield None, line
        for w in warnings:
            yield None, f"WARNING clocks: {w}"
    rl = roofline_rows(results)
    if rl:
        yield "-", "decode roofline, single stream: floor = pp x weight bytes per GPU / HBM bandwidth"
        for line in format_table(ROOFLINE_HEADERS, rl):
            yield None, line
        yield None, ("efficiency = floor / TPOT p50: how close one stream's decode step comes to reading "
                     "the weights at peak bandwidth")
    yield from sweep_sections(results)


__all__ = ["analysis_lines", "roofline_rows", "sweep_sections", "telemetry_rows"]
