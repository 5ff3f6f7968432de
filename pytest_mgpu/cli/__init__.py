"""``pytest-mgpu``: compare two baseline/results files, show the baseline store, accept a finished run,
export to pytest-benchmark, merge the results of a sharded run, bisect a list of builds.

Exit codes: 0 nothing fails, 1 a result fails (:func:`~pytest_mgpu.judge.verdicts.fails`: INVALID or
FAIL; with ``--strict`` also WARN, MISMATCH and NEW), 2 a usage or file error, 141 the reader of
the output went away (``pytest-mgpu show | head``), as a tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BaselineError, CliError
from ..judge.baseline import (
    DEFAULT_HISTORY,
    DEFAULT_ROOT,
    BaselineEntry,
    BaselineStore,
    Recording,
    atomic_write_text,
    check_fingerprint,
    parse_baseline_data,
)
from ..judge.drift import check_drift, trend, trend_values, with_drift
from ..judge.results import BenchResult, json_text
from ..judge.verdicts import DEFAULT_GATED, Comparison, GateConfig, Measured, Tolerance, Verdict, compare, fails
from ..layout import Layout
from ..measure.workload import Workload
from ..report.benchmark_export import to_benchmark_json
from ..report.render.markdown import render_markdown
from ..report.render.table import fmt_number, format_table
from ..report.render.text import render_table, summary_line
from ..run.options import add_gate_options


@dataclass
class Side:
    """One side of a comparison: where it came from and its measurements by (module, entry id)."""

    path: Path
    kind: str  # "baseline" or "results"
    items: dict[tuple[str | None, str], Measured]
    fingerprint: str | None = None


def write_output(path: str | Path, text: str) -> None:
    """Write an output file the user named, creating its folder; CliError (exit 2) when that fails."""
    p = Path(path)
    try:
        atomic_write_text(p, text)
    except OSError as exc:
        raise CliError(f"cannot write {p}: {exc.strerror or exc}") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON ({exc}); pass a baseline file or a --mgpu-json results file") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc})") from None


def _results(data: Mapping[str, Any], p: Path) -> list[tuple[BenchResult, Mapping[str, Any]]]:
    """The results of a ``--mgpu-json`` document, each with its raw dict; CliError names a malformed one."""
    out = []
    for i, raw in enumerate(data["results"]):
        try:
            out.append((BenchResult.from_dict(raw), raw))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CliError(
                f"{p}: result #{i + 1} is malformed ({exc!r}); regenerate the file with --mgpu-json"
            ) from None
    return out


def load_side(path: str | Path) -> Side:
    """Read a baseline file (``entries``) or a ``--mgpu-json`` results file (``results``)."""
    p = Path(path)
    data = _load_json(p)
    if isinstance(data, dict) and "entries" in data:
        header, entries = parse_baseline_data(data, p)  # BaselineError: exit 2, naming file and entry
        module = header.get("module")
        return Side(p, "baseline", {(module, e.entry_id): e for e in entries.values()}, header.get("fingerprint"))
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        items: dict[tuple[str | None, str], Measured] = {}
        fp = data.get("fingerprint")
        for r, _ in _results(data, p):
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


def cmd_compare(args: argparse.Namespace) -> int:
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


def cmd_show(args: argparse.Namespace) -> int:
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


def _parse_only(text: str | None) -> set[Verdict] | None:
    if not text:
        return None
    out = set()
    for word in text.split(","):
        try:
            out.add(Verdict(word.strip().upper()))
        except ValueError:
            raise CliError(f"--only {text!r}: {word!r} is not a verdict; use e.g. new,improved") from None
    return out


def cmd_accept(args: argparse.Namespace) -> int:
    """``pytest-mgpu accept RESULTS``: record a finished run's results as baselines, without re-running it.

    The same checks as ``--mgpu-update-baselines``: invalid results are skipped, corrupt numbers
    and broken baseline files are refused, an entry of another identity is replaced and said so.
    """
    p = Path(args.results)
    data = _load_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise CliError(f"{p}: not a --mgpu-json results file (no 'results' list)")
    pairs = _results(data, p)
    fingerprint = data.get("fingerprint") or next((r.env.get("fingerprint") for r, _ in pairs), None)
    if not fingerprint:
        raise CliError(f"{p}: records no hardware fingerprint; regenerate it with --mgpu-json")
    try:
        check_fingerprint(str(fingerprint))
    except BaselineError as exc:
        raise CliError(f"{p}: {exc}") from None
    only = _parse_only(args.only)
    if args.history < 1:
        raise CliError(f"--history must be >= 1, got {args.history}")
    by_module: dict[tuple[str, str], list[BenchResult]] = {}
    left_out = 0
    failed: list[str] = []  # results that FAILed in that run and are recorded anyway (no --only)
    for r, raw in pairs:
        if only is not None:
            comp = raw.get("comparison")
            if not isinstance(comp, Mapping):
                raise CliError(f"{p}: {r.entry_id} has no verdict (the file predates them); accept without --only")
            try:
                verdict = Verdict(str(comp.get("verdict")))
            except ValueError:
                raise CliError(
                    f"{p}: {r.entry_id} has the unknown verdict {comp.get('verdict')!r} (known: "
                    f"{', '.join(v.value for v in Verdict)}); regenerate the file, or accept without --only"
                ) from None
            if verdict not in only:
                left_out += 1
                continue
        else:
            comp = raw.get("comparison")
            if isinstance(comp, Mapping) and comp.get("verdict") == Verdict.FAIL.value and not r.invalid:
                failed.append(r.entry_id)
        # With several engines side by side each result has its own fingerprint (the sim's beside the GPU's).
        fp = str(r.env.get("fingerprint") or fingerprint)
        try:
            check_fingerprint(fp)
        except BaselineError as exc:
            raise CliError(f"{p}: {exc}") from None
        if not r.invalid:
            try:  # refuse the whole file before writing anything: a corrupt number must not be recorded
                Recording.from_result(r)
            except BaselineError as exc:
                raise CliError(f"{p}: {exc}") from None
        by_module.setdefault((fp, r.module), []).append(r)
    store = BaselineStore(args.baseline_dir)
    written = already = 0
    written_ids: set[str] = set()
    for (fp, module), results in sorted(by_module.items()):
        res = store.update(fp, module, results, history=args.history, anchor=args.anchor)
        written += len(res.written)
        written_ids.update(res.written)
        already += len(res.already)
        if res.written:
            print(f"{res.path}: recorded {len(res.written)} entr{'y' if len(res.written) == 1 else 'ies'}")
        for eid, run in res.already.items():
            print(f"  already recorded {eid}: this run ({run}) is in its history; not added again")
        for eid, why in res.skipped.items():
            print(f"  skipped {eid}: invalid ({why})")
        for eid, why in res.replaced.items():
            print(f"  replaced {eid}: {why}")
        for eid, why in res.new_level.items():
            print(f"  {eid}: new level ({why}); earlier recordings kept but not used by the gate")
    tail = f"; {left_out} left out by --only" if left_out else ""
    if already and not written:
        env = data.get("env")
        run_id = env.get("run_id") if isinstance(env, Mapping) else None
        print(f"nothing to record: {p}{f' (run {run_id})' if run_id else ''} is already in the baselines "
              f"({already} entr{'y' if already == 1 else 'ies'}); accepting a run twice changes nothing")
        return 0
    where = ", ".join(str(Path(args.baseline_dir) / fp) for fp in sorted({fp for fp, _ in by_module}))
    failed = [eid for eid in failed if eid in written_ids]
    if failed:
        print(f"warning: recorded {len(failed)} result(s) that FAILed in that run: {', '.join(failed)}; their "
              f"regression is now the baseline. To record only some verdicts: --only new,improved,mismatch")
    pinned = "; each is its entry's new anchor (slow drift is measured from it)" if args.anchor else ""
    print(f"recorded {written} result(s) under {where or Path(args.baseline_dir) / str(fingerprint)} "
          f"(keeping the last {args.history} recordings of each, and its anchor){tail}{pinned}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``pytest-mgpu export-benchmark RESULTS OUT``: write pytest-benchmark JSON."""
    p = Path(args.results)
    data = _load_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise CliError(f"{args.results}: not a --mgpu-json results file (no 'results' list)")
    results = [r for r, _ in _results(data, p)]
    write_output(args.out, json_text(to_benchmark_json(results), indent=4))
    print(f"wrote {args.out}; read it with: pytest-benchmark compare {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pytest-mgpu`` argument parser."""
    ap = argparse.ArgumentParser(prog="pytest-mgpu", description="Compare, inspect and record pytest-mgpu baselines")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="Compare B against the base A; exit 1 when a result fails")
    c.add_argument("base", help="Baseline file or --mgpu-json results file (the base)")
    c.add_argument("now", help="Baseline file or --mgpu-json results file (the new measurement)")
    c.add_argument("--markdown", metavar="PATH", help="Also write a Markdown report (for a PR comment)")
    c.add_argument("--title", default="Performance comparison", help="Title of the Markdown report")
    add_gate_options(c.add_argument, prefix="--", recorded=True)
    c.set_defaults(func=cmd_compare)
    s = sub.add_parser("show", help="List baseline fingerprints, files and entries, with each entry's history")
    s.add_argument("root", nargs="?", default=DEFAULT_ROOT, help=f"Baseline directory (default {DEFAULT_ROOT}/)")
    s.add_argument("--entry", metavar="TEXT", help="Only entries whose id contains TEXT")
    s.set_defaults(func=cmd_show)
    a = sub.add_parser("accept", help="Record a finished run (--mgpu-json or .mgpu/last-results.json) as baselines")
    a.add_argument("results", help="A --mgpu-json results file, e.g. .mgpu/last-results.json")
    a.add_argument("--baseline-dir", default=DEFAULT_ROOT, metavar="DIR",
                   help=f"Baseline store (default {DEFAULT_ROOT}/)")
    a.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                   help=f"Recordings each entry keeps (default {DEFAULT_HISTORY}, as ini mgpu_baseline_history)")
    a.add_argument("--only", metavar="VERDICT[,VERDICT]",
                   help="Only results with these verdicts in that run, e.g. new,improved,mismatch")
    a.add_argument("--anchor", action="store_true",
                   help="Pin the recorded results as their entries' anchors: slow drift is measured from them on")
    a.set_defaults(func=cmd_accept)
    e = sub.add_parser("export-benchmark", help="Convert a --mgpu-json results file to pytest-benchmark JSON")
    e.add_argument("results", help="A --mgpu-json results file")
    e.add_argument("out", help="Where to write the pytest-benchmark JSON")
    e.set_defaults(func=cmd_export)
    from ..report.merge import add_parser as add_merge
    from .bisect import add_parser as add_bisect

    add_merge(sub)
    add_bisect(sub)
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
    except BrokenPipeError:
        # The reader went away (`pytest-mgpu show | head`): stop quietly, as a killed-by-SIGPIPE tool would.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except CliError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2
    except BaselineError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m pytest_mgpu.cli
    raise SystemExit(main())
