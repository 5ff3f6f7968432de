"""``pytest-mgpu show [ROOT]``: the baseline store's fingerprints, files and entries, with each entry's history."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from ..errors import CliError
from ..judge.baseline import DEFAULT_ROOT, BaselineEntry, BaselineStore
from ..judge.drift import trend_values
from ..judge.verdicts import DEFAULT_GATED
from ..layout import Layout
from ..measure.workload import Workload
from ..report.render.table import fmt_number, format_table
from ..report.render.text import trend


def _entry_lines(e: BaselineEntry) -> list[str]:
    """One entry for ``show``: identity, the numbers the gate uses, and the history of recordings."""
    lay, wl = e.layout, e.workload
    lat = e.latest
    date = str(lat.env.get("date", "?"))
    commit = str(lat.env.get("commit") or "?")[:10]
    lines = [f"    {e.entry_id}  {e.engine} {e.engine_version}  {date}  commit {commit}  repeats {e.repeats}"]
    opts = lat.engine_options
    optext = ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) if opts is not None else "not recorded"
    try:
        where = f"layout {Layout.from_dict(lay).id}, workload {Workload.from_dict(wl).name}"
    except (TypeError, ValueError):
        where = f"layout {lay}, workload {wl}"
    lines.append(f"      model {e.model}, {where}; engine options: {optext}")
    used = len(e.active)
    parts = []
    for m in DEFAULT_GATED:
        st = e.stats(m)
        if st.value is None:
            continue
        spread = st.var_between**0.5 if st.recordings >= 2 else st.latest_noise
        parts.append(f"{m}={fmt_number(st.value)} ±{100 * spread:.1f}%")
    if parts:
        src = f"geometric mean of {used} recordings, ± their spread" if used >= 2 else "1 recording, ± its repeats"
        lines.append(f"      gate baseline ({src}): " + "  ".join(parts))
    rows = []
    first_active = len(e.recordings) - used
    for i, r in enumerate(e.recordings):
        row: list[Any] = [
            str(i + 1) + ("" if i >= first_active else " (not used)") + (" anchor" if i == e.anchor_index else ""),
            str(r.env.get("date", "?")), r.engine_version, str(r.env.get("commit") or "?")[:10], r.repeats,
        ]
        for m in DEFAULT_GATED:
            vals = r.metrics.get(m, ())
            row.append(fmt_number(statistics.median(vals)) if vals else "-")
        rows.append(row)
    headers = ("recording", "date", "version", "commit", "repeats", *(f"{m} median" for m in DEFAULT_GATED))
    lines += format_table(headers, rows, align="llllr" + "r" * len(DEFAULT_GATED), indent="      ")
    lines.append(f"      trend from the anchor ({e.describe_anchor()}) to the latest:")
    for m in DEFAULT_GATED:
        medians = trend_values(e, m)
        if medians:
            lines.append(f"        {m}: {trend(medians)}")
    return lines


def run(args: argparse.Namespace) -> int:
    """``pytest-mgpu show [ROOT]``: fingerprints, files and entries with their history and gate numbers."""
    root = Path(args.root)
    if not root.is_dir():
        raise CliError(f"{root}: no such directory; baselines are written there by pytest --mgpu-update-baselines")
    store = BaselineStore(root)
    broken = 0
    files = list(store.iter_all())
    if not files:
        print(f"{root}: no baseline files")
        return 0
    current = None
    for f in files:
        if f.fingerprint != current:
            current = f.fingerprint
            print(f"{current}/")
        if f.error:
            broken += 1
            print(f"  {f.module}  BROKEN: {f.error}")
            continue
        entries = {k: v for k, v in sorted(f.entries.items()) if not args.entry or args.entry in k}
        if args.entry and not entries:
            continue
        print(f"  {f.module}  ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
        for e in entries.values():
            for line in _entry_lines(e):
                print(line)
    if broken:
        print(f"{broken} broken file{'s' if broken != 1 else ''}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> None:
    """Register ``show`` with the ``pytest-mgpu`` subcommands."""
    s = sub.add_parser("show", help="List baseline fingerprints, files and entries, with each entry's history")
    s.add_argument("root", nargs="?", default=DEFAULT_ROOT, help=f"Baseline directory (default {DEFAULT_ROOT}/)")
    s.add_argument("--entry", metavar="TEXT", help="Only entries whose id contains TEXT")
    s.set_defaults(func=run)
