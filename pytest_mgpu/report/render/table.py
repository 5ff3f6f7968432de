"""The one table aligner and the one number formatter of every report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt_number(v: float | None) -> str:
    """A metric value: thousands separators, 1 decimal from 100, 2 from 1, 4 significant digits below.

    ``None`` and NaN give ``-``; infinity gives ``inf``.
    """
    if v is None or math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    a = abs(v)
    if a >= 100:
        return f"{v:,.1f}"
    if a >= 1 or v == 0:
        return f"{v:.2f}"
    return f"{v:.4g}"


def fmt_pct(v: float | None, signed: bool = True) -> str:
    """A percentage with one decimal (``+3.2%``; unsigned ``3.2%``), ``-`` for none."""
    if v is None:
        return "-"
    return f"{v:+.1f}%" if signed else f"{v:.1f}%"


def fmt_cell(v: Any) -> str:
    """A table cell: floats through :func:`fmt_number`, ``None`` as ``-``, anything else as ``str``."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt_number(v)
    return str(v)


def format_table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[Any]],
    *,
    align: str | None = None,
    indent: str = "",
    rule: bool = True,
) -> list[str]:
    """Align ``rows`` (under ``headers``, if any) in columns two spaces apart.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first column is left-aligned
    and the others right-aligned. ``rule`` draws dashes under the headers. Cells go through
    :func:`fmt_cell`; trailing spaces are stripped.
    """
    body = [[fmt_cell(v) for v in r] for r in rows]
    cells = ([[str(h) for h in headers]] if headers is not None else []) + body
    if not cells:
        return []
    ncol = len(cells[0])
    align = align or "l" + "r" * (ncol - 1)
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]

    def fmt(r: Sequence[str]) -> str:
        parts = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align))
        return (indent + "  ".join(parts)).rstrip()

    lines = [fmt(r) for r in cells]
    if headers is not None and rule:
        lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return lines
