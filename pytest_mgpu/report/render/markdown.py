"""The Markdown gate report, fit for a pull-request comment (regressions first)."""

from __future__ import annotations

from collections.abc import Sequence

from ...judge.verdicts import Comparison, MetricComparison, Verdict
from .table import fmt_number, fmt_pct
from .text import context_line, options_text, summary_line, versions


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(comparisons: Sequence[Comparison], title: str = "Performance comparison") -> str:
    """A PR comment: counts per verdict, engine versions, regressions first, then the full table."""
    out = [f"## {title}", "", f"**{summary_line(comparisons)}**", ""]
    engines = sorted({versions(c) for c in comparisons if versions(c)})
    if engines:
        out.append("Engine: " + "; ".join(f"`{v.replace(' -> ', ' → ')}`" for v in engines))
        out.append("")
    opts = sorted({options_text(c) for c in comparisons})
    if opts:
        shown = (f"`{_md(o.removeprefix('engine options: '))}`" for o in opts)
        out.append("Engine options in effect: " + "; ".join(shown))
        out.append("")
    head = "| result | metric | baseline | now | delta % | noise % | noise from | tol % | verdict |"
    sep = "|---|---|---:|---:|---:|---:|---|---:|---|"

    def row(c: Comparison, m: MetricComparison) -> str:
        name = m.metric + (" (gated)" if m.gated else "")
        return (
            f"| `{_md(c.entry_id)}` | {name} | {fmt_number(m.base)} | {fmt_number(m.now)} | "
            f"{fmt_pct(m.delta_pct)} | {fmt_pct(m.noise_pct, False)} | {m.noise_source} | {m.tolerance_pct:g}% | "
            f"**{m.verdict}** |"
        )

    regs = [(c, m) for c in comparisons for m in c.metrics if m.verdict in (Verdict.FAIL, Verdict.WARN)]
    regs.sort(key=lambda cm: -cm[1].verdict.severity)
    if regs:
        out += ["### Regressions", "", head, sep, *(row(c, m) for c, m in regs), ""]
    others = [c for c in comparisons if not c.metrics]
    if others:
        out += ["### Not compared", ""]
        out += [f"- `{_md(c.entry_id)}`: **{c.verdict}** {_md(c.note)} ({_md(context_line(c))})" for c in others]
        out.append("")
    compared = sorted((c for c in comparisons if c.metrics), key=lambda c: -c.verdict.severity)
    if compared:
        out += ["<details><summary>All results</summary>", "", head, sep]
        out += [row(c, m) for c in compared for m in c.metrics]
        out += ["", "</details>", ""]
        notes = [f"- `{_md(c.entry_id)}`: {_md(context_line(c))}" + (f". {_md(c.note)}" if c.note else "")
                 for c in compared]
        out += ["What ran, and notes:", "", *notes, ""]
    return "\n".join(out).rstrip() + "\n"
