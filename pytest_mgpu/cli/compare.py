"""``pytest-mgpu compare A B``: compare B (results or baselines) with the base A; exit 1 when a result fails."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import CliError
from ..judge.baseline import BaselineEntry, parse_baseline_data
from ..judge.drift import check_drift, with_drift
from ..judge.results import BenchResult
from ..judge.verdicts import Comparison, GateConfig, Measured, Tolerance, compare, fails
from ..report.render.markdown import render_markdown
from ..report.render.text import render_table, summary_line
from ..run.options import add_gate_options
from .files import load_json, read_results, write_output


@dataclass
class Side:
    """One side of a comparison: where it came from and its measurements by (module, entry id)."""

    path: Path
    kind: str  # "baseline" or "results"
    items: dict[tuple[str | None, str], Measured]
    fingerprint: str | None = None


def load_side(path: str | Path) -> Side:
    """Read a baseline file (``entries``) or a ``--mgpu-json`` results file (``results``)."""
    p = Path(path)
    data = load_json(p)
    if isinstance(data, dict) and "entries" in data:
        header, entries = parse_baseline_data(data, p)  # BaselineError: exit 2, naming file and entry
        module = header.get("module")
        return Side(p, "baseline", {(module, e.entry_id): e for e in entries.values()}, header.get("fingerprint"))
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        items: dict[tuple[str | None, str], Measured] = {}
        fp = data.get("fingerprint")
        for r, _ in read_results(data, p):
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


def recorded_settings(m: Measured | None) -> dict[str, Any] | None:
    """The gate settings recorded with a result, or with a baseline entry's latest recording."""
    if isinstance(m, BenchResult):
        return m.gate_settings
    if isinstance(m, BaselineEntry):
        return m.latest.gate_settings
    return None


def effective_config(recorded: Mapping[str, Any] | None, args: argparse.Namespace) -> GateConfig:
    """The suite's recorded gate settings (defaults if none), with the options given on the command line on top."""
    try:
        cfg = GateConfig.from_dict(recorded) if recorded else GateConfig()
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise CliError(f"recorded gate settings are malformed ({exc}); pass the gate options explicitly") from None
    def given(name: str, recorded_value: float) -> float:
        value = getattr(args, name, None)
        return recorded_value if value is None else float(value)

    cfg = replace(cfg, noise_k=given("noise_k", cfg.noise_k), noise_floor=given("noise_floor", cfg.noise_floor),
                  drift=given("drift", cfg.drift))
    tol: dict[str, Tolerance] = dict(args.tolerance or [])
    gate = [m for group in (args.gate or []) for m in group]
    return replace(cfg.with_overrides(tol, gate), strict=bool(args.strict))


def compare_sides(
    base: Side, now: Side, config: GateConfig | argparse.Namespace
) -> tuple[list[Comparison], list[str], dict[str, int]]:
    """Compare every item of ``now`` with its match in ``base``; also list base items not in ``now``.

    ``config`` is one :class:`GateConfig` for all, or the CLI's arguments: then each item is judged
    with the gate settings recorded with it (the now side's, else the base's), the given options on
    top. The third value counts where the settings came from.
    """
    out: list[Comparison] = []
    used: set[int] = set()
    sources = {"recorded": 0, "defaults": 0}
    for (module, eid), item in sorted(now.items.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        b = _match(base, module, eid)
        if b is not None:
            used.add(id(b))
        if isinstance(config, GateConfig):
            cfg = config
        else:
            rec = recorded_settings(item) or recorded_settings(b)
            sources["recorded" if rec else "defaults"] += 1
            cfg = effective_config(rec, config)
        c = compare(item, b, cfg, fingerprint=base.fingerprint)
        if isinstance(b, BaselineEntry):  # a baseline file has anchors: slow drift is judged as in the suite
            c = with_drift(c, check_drift(item, b, cfg))
        out.append(c)
    missing = sorted(e for (_, e), v in base.items.items() if id(v) not in used)
    return out, missing, sources


def _given_overrides(args: argparse.Namespace) -> list[str]:
    out = [f"--tolerance {m}={t}" for m, t in (args.tolerance or [])]
    out += [f"--gate {','.join(g)}" for g in (args.gate or [])]
    out += [f"--{n.replace('_', '-')} {getattr(args, n)}" for n in ("noise_k", "noise_floor", "drift")
            if getattr(args, n, None) is not None]
    return out


def run(args: argparse.Namespace) -> int:
    """``pytest-mgpu compare A B``: A is the base, B the new measurement."""
    base, now = load_side(args.base), load_side(args.now)
    comps, missing, sources = compare_sides(base, now, args)
    print(f"base: {base.path} ({base.kind}{', ' + base.fingerprint if base.fingerprint else ''})")
    print(f"now:  {now.path} ({now.kind}{', ' + now.fingerprint if now.fingerprint else ''})")
    how = f"gate settings: as recorded by the suite for {sources['recorded']} result(s)"
    if sources["defaults"]:
        how += f", the defaults for {sources['defaults']} (none recorded)"
    given = _given_overrides(args)
    print(how + ("; overridden on the command line: " + " ".join(given) if given else ""))
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
        write_output(args.markdown, render_markdown(comps, title=args.title))
        print(f"wrote {args.markdown}")
    return 1 if any(fails(c.verdict, args.strict) for c in comps) else 0


def add_parser(sub: Any) -> None:
    """Register ``compare`` with the ``pytest-mgpu`` subcommands."""
    c = sub.add_parser("compare", help="Compare B against the base A; exit 1 when a result fails")
    c.add_argument("base", help="Baseline file or --mgpu-json results file (the base)")
    c.add_argument("now", help="Baseline file or --mgpu-json results file (the new measurement)")
    c.add_argument("--markdown", metavar="PATH", help="Also write a Markdown report (for a PR comment)")
    c.add_argument("--title", default="Performance comparison", help="Title of the Markdown report")
    add_gate_options(c.add_argument, prefix="--", recorded=True)
    c.set_defaults(func=run)
