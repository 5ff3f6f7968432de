"""Rendering of same-job A/B results: terminal lines, the FAIL message, the Markdown PR comment.

Every view names both engine versions and gives old -> new per metric, the paired change with its
confidence interval, the rounds it took and the GPU time it cost. Nothing here decides; the
verdicts come from :mod:`pytest_mgpu.judge.ab_verdicts`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...judge.ab_results import AbResult, groups_in
from ...judge.ab_verdicts import AbConfig, PairedMetric
from ...judge.verdicts import Verdict
from ...measure.metrics import HIGHER_IS_BETTER
from .table import fmt_number, fmt_pct, format_table
from .text import VERDICT_WORDS

METRIC_HEADERS = ("metric", "old", "new", "change", "90% CI", "fail beyond", "tol", "verdict")
COST_HEADERS = ("result", "GPUs", "rounds", "starts", "start s", "measure s", "stop s", "GPU-min")


def versions(r: AbResult) -> str:
    """``vllm 0.25.1 -> 0.26.0`` (the engine and both versions, even when equal)."""
    return f"{r.engine} {r.old_version} -> {r.engine_version}"


def _ci(m: PairedMetric) -> str:
    if m.ci_low_pct is None or m.ci_high_pct is None:
        return "-"
    return f"[{fmt_pct(m.ci_low_pct)}, {fmt_pct(m.ci_high_pct)}]"


def _threshold(m: PairedMetric) -> str:
    sign = "-" if m.metric in HIGHER_IS_BETTER else "+"
    return f"{sign}{m.threshold_pct:.1f}%"


def metric_rows(r: AbResult) -> list[list[str]]:
    """One row per metric: old, new, paired change, its 90% CI, the FAIL line, tolerance, verdict."""
    if r.decision is None:
        return []
    return [
        [
            m.metric + ("*" if m.gated else ""), fmt_number(m.old), fmt_number(m.new), fmt_pct(m.delta_pct), _ci(m),
            _threshold(m), f"{m.tolerance_pct:g}%", str(m.verdict),
        ]
        for m in r.decision.metrics
    ]


def title(r: AbResult) -> str:
    """``test[tp1-pp1]::wl  PASS  (vllm 0.25.1 -> 0.26.0, 3 rounds, 1.2 GPU-min)``."""
    return f"{r.entry_id}  {r.verdict}  ({versions(r)}, {len(r.rounds)} rounds, {r.gpu_seconds / 60:.1f} GPU-min)"


def legend(rule: AbConfig, markdown: bool = False) -> str:
    """What the columns mean, in one line (the terminal marks gated metrics with ``*``, Markdown says "gated")."""
    gated = "(gated) metrics can FAIL" if markdown else "* gated"
    return (
        f"{gated}; the others only warn. change = paired estimate of new/old over the rounds. FAIL: worse than "
        f"'fail beyond' on average and significant (one-sided paired t, p < {rule.alpha:g}) at two looks in a row; "
        f"PASS: the {100 * (1 - rule.beta):.0f}% upper bound is inside the tolerance"
    )


def cost_rows(results: Sequence[AbResult]) -> list[list[object]]:
    """GPU time per verdict: one row per result and a total."""
    rows: list[list[object]] = []
    tot = {"starts": 0.0, "start_s": 0.0, "measure_s": 0.0, "stop_s": 0.0, "gpu_minutes": 0.0}
    for r in results:
        c = r.cost()
        rows.append([r.entry_id, r.num_gpus, len(r.rounds), int(c["starts"]), f"{c['start_s']:.0f}",
                     f"{c['measure_s']:.0f}", f"{c['stop_s']:.0f}", f"{c['gpu_minutes']:.2f}"])
        for k in tot:
            tot[k] += c[k]
    if results:
        # Items of one engine group were measured on the same starts: count each start once.
        tot["starts"] = sum(g.starts for g in groups_in(results)) + sum(
            r.cost()["starts"] for r in results if r.group is None)
        rows.append(["total", "", "", int(tot["starts"]), f"{tot['start_s']:.0f}", f"{tot['measure_s']:.0f}",
                     f"{tot['stop_s']:.0f}", f"{tot['gpu_minutes']:.2f}"])
    return rows


GROUP_HEADERS = ("engine group", "items", "verdicts", "rounds", "engine starts", "GPU-min")


def group_rows(results: Sequence[AbResult]) -> list[list[object]]:
    """GPU time per engine group: the items measured on shared starts, their verdicts, the starts and GPU-minutes."""
    rows: list[list[object]] = []
    for g in groups_in(results):
        members = [r for r in results if r.group is g]
        counts: dict[str, int] = {}
        for r in members:
            counts[str(r.verdict)] = counts.get(str(r.verdict), 0) + 1
        verdicts = " ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        rows.append([g.name, len(g.items), verdicts, g.rounds, g.starts, f"{g.gpu_minutes:.2f}"])
    return rows


def summary(results: Sequence[AbResult]) -> str:
    """``1 failed, 3 passed; 4 verdicts, 16.4 GPU-min (4.1 per verdict)``."""
    counts: dict[Verdict, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    parts = [f"{counts[v]} {VERDICT_WORDS[v]}" for v in sorted(counts, key=lambda v: -v.severity)]
    gpu_min = sum(r.gpu_seconds for r in results) / 60.0
    per = gpu_min / len(results) if results else 0.0
    return f"{', '.join(parts) or 'no results'}; {len(results)} verdicts, {gpu_min:.1f} GPU-min ({per:.1f} per verdict)"


def terminal_lines(results: Sequence[AbResult], rule: AbConfig) -> list[str]:
    """The A/B section of the terminal summary."""
    lines: list[str] = []
    for r in results:
        lines.append(title(r))
        rows = metric_rows(r)
        if rows:
            lines.extend(format_table(METRIC_HEADERS, rows, align="lrrrrrrl", indent="  ", rule=False))
        if r.decision is not None and r.decision.note:
            lines.append(f"  note: {r.decision.note}")
    if any(metric_rows(r) for r in results):
        lines.append(legend(rule))
    lines.append("")
    lines.append("GPU time per verdict (engine starts + measurements + stops, x GPUs):")
    lines.extend(format_table(COST_HEADERS, cost_rows(results), indent="  "))
    groups = group_rows(results)
    if groups:
        lines.append("")
        lines.append("GPU time per engine group (its items share one engine start per side per round):")
        lines.extend(format_table(GROUP_HEADERS, groups, indent="  "))
    lines.append("")
    lines.append(f"mgpu A/B: {summary(results)}")
    return lines


def fail_message(r: AbResult) -> str:
    """The message a FAIL (or INVALID) fails the test with: old vs new per metric, then why."""
    lines = [f"{r.verdict}: {r.entry_id} ({versions(r)}, {len(r.rounds)} rounds)"]
    rows = metric_rows(r)
    if rows:
        lines.extend(format_table(METRIC_HEADERS, rows, align="lrrrrrrl", indent="  ", rule=False))
    if r.decision is not None:
        for m in r.decision.failed_metrics:
            word = "lower" if m.metric in HIGHER_IS_BETTER else "higher"
            lines.append(
                f"{m.metric} is {abs(m.delta_pct or 0):.1f}% {word} (worse) on the new side ({r.engine} "
                f"{r.engine_version}) than on the old side ({r.engine} {r.old_version}{_old_extra(r)}): "
                f"{fmt_number(m.old)} -> {fmt_number(m.new)}, 90% CI {_ci(m)}, beyond "
                f"{m.threshold_pct:.1f}% (half the tolerance of {m.tolerance_pct:g}%) and significant "
                f"(p = {m.p_worse:.2g}), {m.note}"
            )
        if r.decision.note:
            lines.append(f"note: {r.decision.note}")
    return "\n".join(lines)


def _old_extra(r: AbResult) -> str:
    return f", {r.old_describe}" if r.old_describe else ""


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(results: Sequence[AbResult], rule: AbConfig, title_text: str) -> str:
    """The PR comment: versions, counts, regressions first, every result old -> new, GPU time."""
    out = [f"## {title_text}", "", f"**{summary(results)}**", ""]
    pairs = sorted({f"`{versions(r).replace(' -> ', ' → ')}`" for r in results})
    if pairs:
        out += ["Engine: " + "; ".join(pairs) + " (old → new, measured in the same job, alternating, "
                "an engine restart before every measurement)", ""]
    head = "| result | metric | old | new | change | 90% CI | fail beyond | tol | rounds | verdict |"
    sep = "|---|---|---:|---:|---:|---|---:|---:|---:|---|"

    def row(r: AbResult, m: PairedMetric) -> str:
        name = m.metric + (" (gated)" if m.gated else "")
        return (
            f"| `{_md(r.entry_id)}` | {name} | {fmt_number(m.old)} | {fmt_number(m.new)} | {fmt_pct(m.delta_pct)} | "
            f"{_ci(m)} | {_threshold(m)} | {m.tolerance_pct:g}% | {m.rounds} | **{m.verdict}** |"
        )

    decided = [r for r in results if r.decision is not None and r.decision.metrics]
    regs = [(r, m) for r in decided for m in r.decision.metrics if m.verdict in (Verdict.FAIL, Verdict.WARN)]  # type: ignore[union-attr]
    regs.sort(key=lambda rm: -rm[1].verdict.severity)
    if regs:
        out += ["### Regressions and open questions", "", head, sep, *(row(r, m) for r, m in regs), ""]
    others = [r for r in results if r not in decided]
    if others:
        out += ["### Not compared", ""]
        out += [f"- `{_md(r.entry_id)}`: **{r.verdict}** {r.decision.note if r.decision else ''}" for r in others]
        out.append("")
    if decided:
        out += ["<details><summary>All results</summary>", "", head, sep]
        out += [row(r, m) for r in sorted(decided, key=lambda r: -r.verdict.severity) for m in r.decision.metrics]  # type: ignore[union-attr]
        out += ["", "</details>", ""]
        notes = [f"- `{_md(r.entry_id)}`: {r.decision.note}" for r in decided if r.decision and r.decision.note]
        if notes:
            out += ["Notes:", "", *notes, ""]
    out += ["### GPU time per verdict", "", "| " + " | ".join(COST_HEADERS) + " |",
            "|---|" + "---:|" * (len(COST_HEADERS) - 1)]
    out += ["| " + " | ".join(_md(str(c)) for c in row_) + " |" for row_ in cost_rows(results)]
    groups = group_rows(results)
    if groups:
        out += ["", "### GPU time per engine group", "", "| " + " | ".join(GROUP_HEADERS) + " |",
                "|---|" + "---:|" * (len(GROUP_HEADERS) - 1)]
        out += ["| " + " | ".join(_md(str(c)) for c in row_) + " |" for row_ in groups]
    out += ["", legend(rule, markdown=True), ""]
    return "\n".join(out).rstrip() + "\n"
