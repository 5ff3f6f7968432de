"""Terminal text of the gate: the per-result comparison table, the side-by-side FAIL message, counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...judge.verdicts import Comparison, Verdict, verdict_counts
from ...measure.metrics import HIGHER_IS_BETTER
from .table import fmt_number, fmt_pct, format_table

#: Columns of the comparison table (one row per metric).
COMPARISON_HEADERS = ("metric", "baseline", "now", "delta %", "noise %", "tol %", "verdict")

#: How each verdict is counted in the summary line.
VERDICT_WORDS = {
    Verdict.INVALID: "invalid", Verdict.FAIL: "failed", Verdict.WARN: "warned", Verdict.MISMATCH: "mismatched",
    Verdict.NEW: "new", Verdict.IMPROVED: "improved", Verdict.PASS: "passed",
}


def _opts(options: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "none"


def options_text(c: Comparison) -> str:
    """The engine options in effect, and how they differ from the baseline's.

    E.g. ``engine options: gpu=h100-80gb, speed=0.8 (baseline: speed unset)``.
    """
    if c.options is None:
        return "engine options: not recorded"
    text = f"engine options: {_opts(c.options)}"
    changed = c.options_changed
    if changed:
        text += " (baseline: " + ", ".join(f"{k}={b}" if b is not None else f"{k} unset" for k, b, _ in changed) + ")"
    elif c.base_options is None and c.metrics:
        text += " (baseline: not recorded)"
    return text


def context_line(c: Comparison) -> str:
    """What was running and which numbers are shown: engine and versions, options, measurement, noise source."""
    parts = []
    v = versions(c)
    if v:
        parts.append(v)
    parts.append(options_text(c))
    if c.measurement != "first":
        parts.append(f"now = {c.measurement} (confirm step)")
    recs = max((m.recordings for m in c.metrics), default=0)
    if c.metrics:
        parts.append(f"noise from {recs} baseline recordings" if recs >= 2 else "noise from the repeats")
    return "; ".join(parts)


def versions(c: Comparison) -> str:
    """The engine and its version(s): ``vllm 0.26.0`` or ``vllm 0.26.0 -> 0.27.0`` when they differ."""
    eng = f"{c.engine} " if c.engine else ""
    if c.base_engine_version and c.now_engine_version and c.base_engine_version != c.now_engine_version:
        return f"{eng}{c.base_engine_version} -> {c.now_engine_version}"
    return f"{eng}{c.now_engine_version or c.base_engine_version or ''}".strip()


def comparison_rows(c: Comparison) -> list[list[str]]:
    """One row per metric: name (``*`` if gated), baseline, now, delta, noise band, tolerance, verdict."""
    return [
        [
            m.metric + ("*" if m.gated else ""),
            fmt_number(m.base),
            fmt_number(m.now),
            fmt_pct(m.delta_pct),
            fmt_pct(m.noise_pct, signed=False),
            f"{m.tolerance_pct:g}%",
            str(m.verdict),
        ]
        for m in c.metrics
    ]


def drift_line(c: Comparison) -> str:
    """``since the anchor (recording 1, the first): output_throughput_per_gpu -8.7%, ...``: the cumulative
    change of the gated metrics, where the anchor is not the latest recording and the note does not say it."""
    d = c.drift
    if not d or not d.get("recordings_kept_since") or d.get("verdict") != "PASS":
        return ""
    parts = [f"{name} {fmt_pct(m.get('delta_pct'))}" for name, m in (d.get("metrics") or {}).items() if m.get("gated")]
    return f"since the anchor ({d.get('anchor')}): " + ", ".join(parts) if parts else ""


def brief_line(c: Comparison, width: int = 0) -> str:
    """One line for a result: its verdict and the deltas of its gated metrics (the id padded to ``width``).

    E.g. ``test_x[tp2-pp1]::in128-...  PASS  output_throughput_per_gpu +0.4%, ttft_p50 -1.2%, tpot_p50 +0.3%``.
    """
    deltas = ", ".join(f"{m.metric} {fmt_pct(m.delta_pct)}" for m in c.metrics if m.gated)
    return f"{c.entry_id.ljust(width)}  {c.verdict}" + (f"  {deltas}" if deltas else "")


def render_table(comparisons: Sequence[Comparison], brief: frozenset[Verdict] = frozenset()) -> str:
    """Terminal table: per result a title line, then metric | baseline | now | delta % | noise % | tol % | verdict.

    A result whose verdict is in ``brief`` gets one line instead (:func:`brief_line`).
    """
    lines: list[str] = []
    full = False
    width = max((len(c.entry_id) for c in comparisons if c.verdict in brief), default=0)
    for c in comparisons:
        if c.verdict in brief:
            lines.append(brief_line(c, width))
            # A better value that one recording cannot judge, or an improvement the re-measurement
            # did not confirm: the one line would hide what happened.
            if c.note and (c.unjudged_improvements or c.measurement != "first"):
                lines.append(f"  note: {c.note}")
            since = drift_line(c)  # every comparison reports the change since its anchor, a PASS too
            if since:
                lines.append(f"  {since}")
            continue
        full = full or bool(c.metrics)
        lines.append(f"{c.entry_id}  {c.verdict}")
        lines.append(f"  {context_line(c)}")
        if c.metrics:
            lines.extend(format_table(COMPARISON_HEADERS, comparison_rows(c), align="lrrrrrl", indent="  ", rule=False))
        if c.note:
            lines.append(f"  note: {c.note}")
        since = drift_line(c)
        if since:
            lines.append(f"  {since}")
    if full:
        lines.append("* gated metric; the others only warn. noise % = k x noise of the difference")
    return "\n".join(lines)


def side_by_side(comparison: Comparison) -> str:
    """A FAIL message: baseline vs now per metric, then the failing metrics with delta and tolerance."""
    c = comparison
    lines = [f"{c.verdict}: {c.entry_id}", f"  {context_line(c)}"]
    if c.metrics:
        rows = []
        for m in c.metrics:
            mark = "<-- " + str(m.verdict) if m.verdict in (Verdict.FAIL, Verdict.WARN) else ""
            rows.append([m.metric, fmt_number(m.base), fmt_number(m.now), fmt_pct(m.delta_pct), mark])
        lines.extend(format_table(("", "baseline", "now", "delta", ""), rows, align="lrrrl", indent="  ", rule=False))
    for m in c.metrics:
        if m.verdict is Verdict.FAIL:
            word = "lower" if m.metric in HIGHER_IS_BETTER else "higher"
            lines.append(
                f"{m.metric} is {abs(m.delta_pct or 0):.1f}% {word} (worse) than the baseline: "
                f"{fmt_number(m.base)} -> {fmt_number(m.now)}, beyond the tolerance of {m.tolerance_pct:g}% "
                f"and the noise band of {m.noise_pct or 0:.1f}%"
            )
    if c.note:
        lines.append(f"note: {c.note}")
    return "\n".join(lines)


def summary_line(comparisons: Sequence[Comparison]) -> str:
    """E.g. ``1 failed, 2 passed, 1 new``, worst first."""
    counts = verdict_counts(comparisons)
    parts = [f"{counts[v]} {VERDICT_WORDS[v]}" for v in sorted(counts, key=lambda v: -v.severity)]
    return ", ".join(parts) or "no results"


def trend(values: Sequence[float]) -> str:
    """``1921 -> 1863 -> 1807 (-5.9%)``: a metric's recording medians from the anchor on, and the change."""
    if not values:
        return "-"
    change = (values[-1] / values[0] - 1.0) * 100.0 if values[0] > 0 else float("nan")
    return " -> ".join(fmt_number(v) for v in values) + f" ({change:+.1f}%)"
