"""``pytest-mgpu``: compare two baseline/results files, show the baseline store, export to pytest-benchmark.

Exit codes: 0 no regression, 1 a regression (FAIL, or WARN with ``--strict``), 2 a usage or file error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .baseline import DEFAULT_ROOT, BaselineStore, parse_baseline_data
from .benchmark_export import to_benchmark_json
from .errors import BaselineError, CliError
from .options import add_gate_options
from .render.markdown import render_markdown
from .render.table import fmt_number
from .render.text import render_table, summary_line
from .results import BenchResult
from .settings import gate_config_from_options
from .verdicts import DEFAULT_GATED, Comparison, GateConfig, Measured, compare


@dataclass
class Side:
    """One side of a comparison: where it came from and its measurements by (module, entry id)."""

    path: Path
    kind: str  # "baseline" or "results"
    items: dict[tuple[str | None, str], Measured]
    fingerprint: str | None = None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON ({exc}); pass a baseline file or a --mgpu-json results file") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc})") from None


def load_side(path: str | Path) -> Side:
    """Read a baseline file (``entries``) or a ``--mgpu-json`` results file (``results``)."""
    p = Path(path)
    data = _load_json(p)
    if isinstance(data, dict) and "entries" in data:
        try:
            header, entries = parse_baseline_data(data, p)
        except BaselineError as exc:
            raise CliError(str(exc)) from None
        module = header.get("module")
        return Side(p, "baseline", {(module, e.entry_id): e for e in entries.values()}, header.get("fingerprint"))
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        items: dict[tuple[str | None, str], Measured] = {}
        fp = None
        for i, raw in enumerate(data["results"]):
            try:
                r = BenchResult.from_dict(raw)
            except (KeyError, TypeError, ValueError) as exc:
                raise CliError(
                    f"{p}: result #{i + 1} is malformed ({exc!r}); regenerate the file with --mgpu-json"
                ) from None
            items[(r.module, r.entry_id)] = r
            fp = fp or r.env.get("fingerprint")
        return Side(p, "results", items, fp)
    raise CliError(
        f"{p}: neither a baseline file (with 'entries') nor a results file (with 'results'); "
        f"pass a file under baselines/ or one written by --mgpu-json"
    )


def _match(base: Side, module: str | None, entry_id: str) -> Measured | None:
    if (module, entry_id) in base.items:
        return base.items[(module, entry_id)]
    same = [v for (m, e), v in base.items.items() if e == entry_id and (m is None or module is None or m == module)]
    return same[0] if len(same) == 1 else None


def compare_sides(base: Side, now: Side, config: GateConfig) -> tuple[list[Comparison], list[str]]:
    """Compare every item of ``now`` with its match in ``base``; also list base items not in ``now``."""
    out: list[Comparison] = []
    used: set[int] = set()
    for (module, eid), item in sorted(now.items.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        b = _match(base, module, eid)
        if b is not None:
            used.add(id(b))
        out.append(compare(item, b, config, fingerprint=base.fingerprint))
    missing = sorted(e for (_, e), v in base.items.items() if id(v) not in used)
    return out, missing


def cmd_compare(args: argparse.Namespace) -> int:
    """``pytest-mgpu compare A B``: A is the base, B the new measurement."""
    config = gate_config_from_options(lambda n: getattr(args, n), prefix="")
    base, now = load_side(args.base), load_side(args.now)
    comps, missing = compare_sides(base, now, config)
    print(f"base: {base.path} ({base.kind}{', ' + base.fingerprint if base.fingerprint else ''})")
    print(f"now:  {now.path} ({now.kind}{', ' + now.fingerprint if now.fingerprint else ''})")
    if base.fingerprint and now.fingerprint and base.fingerprint != now.fingerprint:
        print(f"warning: comparing different hardware ({base.fingerprint} vs {now.fingerprint})")
    print()
    if comps:
        print(render_table(comps))
        print()
    for eid in missing:
        print(f"not in {now.path.name}: {eid}")
    print(summary_line(comps))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(comps, title=args.title), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 1 if any(config.is_failure(c.verdict) for c in comps) else 0


def cmd_show(args: argparse.Namespace) -> int:
    """``pytest-mgpu show [ROOT]``: fingerprints, files and entries with their key metrics."""
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
        print(f"  {f.module}  ({len(f.entries)} entr{'y' if len(f.entries) == 1 else 'ies'})")
        for eid, e in sorted(f.entries.items()):
            date = str(e.env.get("date", "?"))
            commit = str(e.env.get("commit") or "?")[:10]
            print(f"    {eid}  {e.engine} {e.engine_version}  {date}  commit {commit}  repeats {e.repeats}")
            key = "  ".join(
                f"{m}={fmt_number(e.median(m))}" + (f"±{100 * e.metrics[m].noise:.1f}%" if e.metrics[m].noise else "")
                for m in DEFAULT_GATED
                if m in e.metrics
            )
            if key:
                print(f"      {key}")
    if broken:
        print(f"{broken} broken file{'s' if broken != 1 else ''}", file=sys.stderr)
        return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``pytest-mgpu export-benchmark RESULTS OUT``: write pytest-benchmark JSON."""
    data = _load_json(Path(args.results))
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise CliError(f"{args.results}: not a --mgpu-json results file (no 'results' list)")
    try:
        results = [BenchResult.from_dict(r) for r in data["results"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{args.results}: malformed result ({exc!r}); regenerate it with --mgpu-json") from None
    Path(args.out).write_text(json.dumps(to_benchmark_json(results), indent=4) + "\n", encoding="utf-8")
    print(f"wrote {args.out}; read it with: pytest-benchmark compare {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pytest-mgpu`` argument parser."""
    ap = argparse.ArgumentParser(prog="pytest-mgpu", description="Compare and inspect pytest-mgpu baselines")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="Compare B against the base A; exit 1 on a regression")
    c.add_argument("base", help="Baseline file or --mgpu-json results file (the base)")
    c.add_argument("now", help="Baseline file or --mgpu-json results file (the new measurement)")
    c.add_argument("--markdown", metavar="PATH", help="Also write a Markdown report (for a PR comment)")
    c.add_argument("--title", default="Performance comparison", help="Title of the Markdown report")
    add_gate_options(c.add_argument, prefix="--")
    c.set_defaults(func=cmd_compare)
    s = sub.add_parser("show", help="List baseline fingerprints, files and entries")
    s.add_argument("root", nargs="?", default=DEFAULT_ROOT, help=f"Baseline directory (default {DEFAULT_ROOT}/)")
    s.set_defaults(func=cmd_show)
    e = sub.add_parser("export-benchmark", help="Convert a --mgpu-json results file to pytest-benchmark JSON")
    e.add_argument("results", help="A --mgpu-json results file")
    e.add_argument("out", help="Where to write the pytest-benchmark JSON")
    e.set_defaults(func=cmd_export)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytest-mgpu`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2
    except BaselineError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2
