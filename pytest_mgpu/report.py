"""The terminal summary as lines: per-item results, per-layout scaling (the seed's Tables 3-4), gate summary.

Only computes numbers and yields lines; :class:`~pytest_mgpu.session.MgpuSession` writes them to the
terminal. Each line is ``(sep, text)``: ``sep`` is ``"="`` or ``"-"`` for a section title, else None.
"""

from __future__ import annotations

import os
import shlex
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analysis import analysis_lines
from .baseline import DEFAULT_HISTORY, DEFAULT_ROOT
from .layout import Layout
from .outputs import last_results_path
from .render.table import format_table
from .render.text import VERDICT_WORDS, render_table, summary_line
from .results import BenchResult
from .verdicts import Comparison, Verdict

if TYPE_CHECKING:  # pragma: no cover - import cycle: the session writes what this module yields
    from .session import MgpuSession

Line = tuple["str | None", str]

ITEM_HEADERS = ("result", "engine", "version", "layout", "GPUs", "out tok/s", "tok/s/GPU",
                "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "run")
SCALING_HEADERS = ("engine", "model", "workload", "layout", "GPUs", "out tok/s", "tok/s/GPU",
                   "per-GPU gain vs TP=1", "TPOT p50 ms")


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


def accept_command(sess: MgpuSession, only: Sequence[Verdict] = ()) -> str:
    """The exact ``pytest-mgpu accept`` command that records this session's results (no re-run)."""
    s = sess.settings

    def rel(p: Path) -> str:
        try:
            return os.path.relpath(p)
        except ValueError:  # pragma: no cover - another drive on Windows
            return str(p)

    args = ["pytest-mgpu", "accept", rel(last_results_path(sess))]
    if Path(s.baseline_dir).resolve() != (Path.cwd() / DEFAULT_ROOT).resolve():
        args += ["--baseline-dir", rel(Path(s.baseline_dir))]
    if s.baseline_history != DEFAULT_HISTORY:
        args += ["--history", str(s.baseline_history)]
    if only:
        args += ["--only", ",".join(str(v).lower() for v in only)]
    return shlex.join(args)


def gate_lines(sess: MgpuSession, args: Sequence[str]) -> list[str]:
    """Gate section of the summary: table, counts, and the command to act on it."""
    comparisons: list[Comparison] = sess.comparisons
    if not comparisons:
        return []
    lines = render_table(comparisons).splitlines()
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
    if sess.results:
        for line in format_table(ITEM_HEADERS, item_rows(sess.results)):
            yield None, line
        for r in sess.results:
            if not r.valid:
                yield None, f"INVALID {r.entry_id}: {r.invalid}"
        rows = scaling_rows(sess.results)
        if rows:
            yield "-", "per-GPU scaling (output tokens/s normalised by tp x pp)"
            for line in format_table(SCALING_HEADERS, rows):
                yield None, line
        yield from analysis_lines(sess.results, sess.baseline_telemetry)
    lines = gate_lines(sess, args)
    if lines:
        yield "-", "mgpu gate"
        for line in lines:
            yield None, line
    if sess.ab is not None and sess.ab_results:
        from .ab import ab_title  # lazy: the A/B module imports the session, which imports this one
        from .render.ab import terminal_lines

        yield "-", ab_title(sess).removeprefix("pytest-mgpu ").replace("→", "->")
        for line in terminal_lines(sess.ab_results, sess.ab.rule):
            yield None, line
        if sess.settings.update_baselines:
            n = len(sess.updated)
            yield None, (f"recorded the new side as {n} baseline entr{'y' if n == 1 else 'ies'} under "
                         f"{sess.settings.baseline_dir}/{sess.fingerprint}")
    for err in sess.errors:
        yield None, err
