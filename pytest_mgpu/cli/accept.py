"""``pytest-mgpu accept RESULTS``: record a finished run (``--mgpu-json``) as baselines, without re-running it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BaselineError, CliError
from ..judge.baseline import DEFAULT_HISTORY, DEFAULT_ROOT, BaselineStore, Recording, check_fingerprint
from ..judge.results import BenchResult
from ..judge.verdicts import Verdict
from .files import load_json, read_results


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


def run(args: argparse.Namespace) -> int:
    """``pytest-mgpu accept RESULTS``: record a finished run's results as baselines, without re-running it.

    The same checks as ``--mgpu-update-baselines``: invalid results are skipped, corrupt numbers
    and broken baseline files are refused, an entry of another identity is replaced and said so.
    """
    p = Path(args.results)
    data = load_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise CliError(f"{p}: not a --mgpu-json results file (no 'results' list)")
    pairs = read_results(data, p)
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


def add_parser(sub: Any) -> None:
    """Register ``accept`` with the ``pytest-mgpu`` subcommands."""
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
    a.set_defaults(func=run)
