"""The terminal summary as lines: per-item results, per-layout scaling (the seed's Tables 3-4), gate summary.

Only computes numbers and yields lines; :class:`~pytest_mgpu.run.session.MgpuSession` writes them to the
terminal. Each line is ``(sep, text)``: ``sep`` is ``"="`` or ``"-"`` for a section title, else None.
"""

from __future__ import annotations

import os
import shlex
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..judge.baseline import DEFAULT_HISTORY, DEFAULT_ROOT
from ..judge.results import BenchResult
from ..judge.verdicts import Comparison, Verdict
from ..layout import Layout
from .analysis import analysis_lines
from .outputs import run_results_path
from .render.table import format_table
from .render.text import VERDICT_WORDS, render_table, summary_line

if TYPE_CHECKING:  # pragma: no cover - types only: the session (run/) writes what this module yields
    from ..run.session import MgpuSession

Line = tuple["str | None", str]

ITEM_HEADERS = ("result", "engine", "version", "layout", "GPUs", "out tok/s", "tok/s/GPU",
                "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "run")
SEED_HEADERS = ("layout", "GPUs", "engine", "out tok/s", "tok/s/GPU", "gain/GPU vs TP=1", "scaling eff.",
                "vs TP, same GPUs", "TPOT p50 ms")


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
            ("ok" if r.valid else "INVALID") + (", re-measured" if r.first_repeats else ""),
        ])
    return rows


@dataclass
class SeedRow:
    """One engine on one layout for one model and workload: the seed's Tables 3-4 and more.

    ``gain`` is the per-GPU gain over TP=1 of the same engine and memory cap (the seed's "+57%"),
    ``efficiency`` the throughput at N GPUs over N x TP=1's (1 + gain), ``vs_tp`` this layout's
    throughput over that of pure TP on as many GPUs (TP vs PP at equal GPU count); each None
    where its reference was not measured.
    """

    engine: str
    model: str
    workload: str
    layout: Layout
    throughput: float
    per_gpu: float
    tpot_p50: float
    gain: float | None = None
    efficiency: float | None = None
    vs_tp: float | None = None


def layout_order(lay: Layout) -> tuple[float, int, int, str]:
    """Memory cap, then GPU count, then pure TP before mixed before pure PP (tp1, tp2, pp2, tp4, tp2xpp2, pp4)."""
    return (lay.gpu_mem_gb or 0.0, lay.num_gpus, -lay.tp, lay.id)


def seed_rows(results: Sequence[BenchResult]) -> list[SeedRow]:
    """The seed table's rows: valid results (sweep points excepted) by engine, model, workload and layout.

    Several results for one key (a re-run item) give their median. Rows are ordered by model,
    workload, memory cap, layout (:func:`layout_order`) and engine, so that the engines measured
    on one layout are next to each other.
    """
    groups: dict[tuple[str, str, str, Layout], list[BenchResult]] = {}
    for r in results:
        if r.valid and r.repeats and not r.sweep:
            groups.setdefault((r.engine, r.model, r.label or r.workload.name, r.layout), []).append(r)

    def med(rs: list[BenchResult], metric: str) -> float:
        return float(statistics.median(x.median[metric] for x in rs))

    rows = {key: SeedRow(key[0], key[1], key[2], key[3], med(rs, "output_throughput"),
                         med(rs, "output_throughput_per_gpu"), med(rs, "tpot_p50"))
            for key, rs in groups.items()}
    for (engine, model, wl, lay), row in rows.items():
        ref = rows.get((engine, model, wl, Layout(1, 1, lay.gpu_mem_gb)))
        if ref is not None and ref.per_gpu > 0:
            row.gain = row.per_gpu / ref.per_gpu - 1
            row.efficiency = row.throughput / (lay.num_gpus * ref.throughput)
        tp_ref = rows.get((engine, model, wl, Layout(lay.num_gpus, 1, lay.gpu_mem_gb)))
        if lay.num_gpus > 1 and tp_ref is not None and tp_ref.throughput > 0:
            row.vs_tp = row.throughput / tp_ref.throughput - 1
    return sorted(rows.values(), key=lambda r: (r.model, r.workload, layout_order(r.layout), r.engine))


def _pct(x: float | None, ref: bool = False) -> str | None:
    if ref:
        return "(ref)"
    return None if x is None else f"{x * 100:+.0f}%"


def seed_table_lines(rows: Sequence[SeedRow]) -> Iterator[Line]:
    """One section per model and workload: every engine and layout, with gain, efficiency and TP vs PP."""
    by_wl: dict[tuple[str, str], list[SeedRow]] = {}
    for row in rows:
        by_wl.setdefault((row.model, row.workload), []).append(row)
    for (model, wl), rs in by_wl.items():
        yield "-", f"the seed's table: {model}, {wl}"
        table = []
        for r in rs:
            tp1 = r.layout.num_gpus == 1 and r.layout.pp == 1
            pure_tp = r.layout.pp == 1 and r.layout.num_gpus > 1
            table.append([
                r.layout.id, r.layout.num_gpus, r.engine, r.throughput, r.per_gpu,
                _pct(r.gain, ref=tp1), None if r.efficiency is None else f"{r.efficiency * 100:.0f}%",
                _pct(r.vs_tp, ref=pure_tp), r.tpot_p50,
            ])
        for line in format_table(SEED_HEADERS, table):
            yield None, line
    yield None, ("gain/GPU: tok/s/GPU over TP=1's (same engine, same memory cap); scaling eff.: tok/s over "
                 "N x TP=1's; vs TP: tok/s over pure TP on as many GPUs")


def side_by_side_lines(rows: Sequence[SeedRow]) -> Iterator[Line]:
    """With several engines: per model and workload, one row per layout, the engines side by side."""
    engines = sorted({r.engine for r in rows})
    if len(engines) < 2:
        return
    by_wl: dict[tuple[str, str], dict[Layout, dict[str, SeedRow]]] = {}
    for r in rows:
        by_wl.setdefault((r.model, r.workload), {}).setdefault(r.layout, {})[r.engine] = r
    headers = ["layout", "GPUs"]
    for e in engines:
        headers += [f"{e} tok/s/GPU", f"{e} gain/GPU"]
    for (model, wl), layouts in by_wl.items():
        yield "-", f"engines side by side: {model}, {wl}"
        table = []
        for lay in sorted(layouts, key=layout_order):
            row: list[Any] = [lay.id, lay.num_gpus]
            for e in engines:
                cell = layouts[lay].get(e)
                row += [None, None] if cell is None else [
                    cell.per_gpu, _pct(cell.gain, ref=lay.num_gpus == 1 and lay.pp == 1)]
            table.append(row)
        for line in format_table(headers, table):
            yield None, line


def relative(path: Path) -> str:
    """``path`` relative to the working directory where it can be, as a command to paste wants it."""
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)


def accept_command(sess: MgpuSession, only: Sequence[Verdict] = (), *, anchor: bool = False) -> str:
    """The exact ``pytest-mgpu accept`` command that records this session's results (no re-run).

    It names the run's own results file, never ``.mgpu/last-results.json``, which the next run replaces.
    ``anchor``: the recordings become their entries' anchors, as an intended change must (else the
    next run FAILs on slow drift against the old anchor).
    """
    s = sess.settings
    args = ["pytest-mgpu", "accept", relative(run_results_path(sess))]
    if Path(s.baseline_dir).resolve() != (Path.cwd() / DEFAULT_ROOT).resolve():
        args += ["--baseline-dir", relative(Path(s.baseline_dir))]
    if s.baseline_history != DEFAULT_HISTORY:
        args += ["--history", str(s.baseline_history)]
    if only:
        args += ["--only", ",".join(str(v).lower() for v in only)]
    if anchor:
        args.append("--anchor")
    return shlex.join(args)


def _verdict_of(sess: MgpuSession, r: BenchResult) -> Verdict | None:
    """The gate's verdict on ``r`` (None where it was not gated, e.g. in an A/B)."""
    c = sess.result_comparisons.get((r.module, r.entry_id))
    return c.verdict if c is not None else None


def gate_lines(sess: MgpuSession, args: Sequence[str]) -> list[str]:
    """Gate section of the summary: table, counts, and the command to act on it."""
    comparisons: list[Comparison] = sess.comparisons
    if not comparisons:
        return []
    verbosity = sess.config.get_verbosity()
    # Quiet when all is well: a PASS is one line (none under -q); -v shows every metric of every result.
    shown = comparisons if verbosity >= 0 else [c for c in comparisons if c.verdict is not Verdict.PASS]
    lines = render_table(shown, brief=frozenset() if verbosity >= 1 else frozenset({Verdict.PASS})).splitlines()
    if lines:
        lines.append("")
    lines.append(f"mgpu gate: {summary_line(comparisons)}")
    verdicts = {c.verdict for c in comparisons}
    s = sess.settings
    if s.update_baselines:
        n = len(sess.updated)
        lines.append(f"recorded {n} baseline entr{'y' if n == 1 else 'ies'} under {s.baseline_dir}/{sess.fingerprint} "
                     f"(keeping the last {s.baseline_history} recordings of each)")
        lines.extend(sess.update_notes)
    else:
        if Verdict.FAIL in verdicts:
            lines.append("if the FAIL results are intended changes, record them as the new baselines and anchors "
                         "(no re-run):")
            lines.append("  " + accept_command(sess, [Verdict.FAIL], anchor=True))
        if any(c.verdict is Verdict.PASS and c.unjudged_improvements for c in comparisons):
            lines.append("better beyond the noise against a baseline of one recording, not judged an improvement; "
                         "to record this run as a second recording (improvements are judged from two on):")
            lines.append("  " + accept_command(sess, [Verdict.PASS]))
        wanted = [v for v in (Verdict.NEW, Verdict.MISMATCH, Verdict.IMPROVED) if v in verdicts]
        if wanted:
            words = ", ".join(VERDICT_WORDS[v] for v in wanted)
            lines.append(f"to record the {words} results as baselines from this run (no re-run needed):")
            valid = {c.verdict for c in comparisons if c.verdict is not Verdict.INVALID}
            lines.append("  " + accept_command(sess, wanted if valid - set(wanted) else ()))
    return lines


def summary_lines(sess: MgpuSession, args: Sequence[str]) -> Iterator[Line]:
    """Every line of the mgpu sections of the terminal summary (none when nothing was measured)."""
    if not (sess.results or sess.comparisons or sess.errors):
        return
    yield "=", "mgpu results"
    verbosity = sess.config.get_verbosity()
    if sess.results:
        # By default the per-item table lists only the results that did not PASS (a PASS is one line
        # in the gate section); -v lists all, -q none.
        listed = sess.results if verbosity >= 1 else [] if verbosity < 0 else [
            r for r in sess.results if _verdict_of(sess, r) is not Verdict.PASS]
        if listed:
            for line in format_table(ITEM_HEADERS, item_rows(listed)):
                yield None, line
        for r in sess.results:
            if not r.valid:
                yield None, f"INVALID {r.entry_id}: {r.invalid}"
        rows = seed_rows(sess.results)
        if rows and verbosity >= 0:
            yield from seed_table_lines(rows)
            yield from side_by_side_lines(rows)
        section = ""
        for sep, line in analysis_lines(sess.results, sess.baseline_telemetry):
            # Sweeps (asked for by the test) unless -q; the telemetry and roofline tables with -v;
            # their warnings always.
            section = line if sep else section
            if verbosity >= 1 or line.startswith("WARNING") or (verbosity >= 0 and section.startswith("sweep ")):
                yield sep, line
    lines = gate_lines(sess, args)
    if lines:
        yield "-", "mgpu gate"
        for line in lines:
            yield None, line
    for ext in sess.extensions:
        yield from ext.summary_lines()
    if sess.plots:
        yield None, f"mgpu plots: {len(sess.plots)} PNG file(s) in {sess.plots[0].parent}"
    for err in sess.errors:
        yield None, err
