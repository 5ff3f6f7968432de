"""The surviving mutants of the last ``nox -s mutants`` run, each with what it changes, by kind.

Run from the repository root after ``nox -s mutants`` (it reads ``mutants/``, mutmut's work tree, and
``mutmut results``)::

    python scripts/mutant_report.py            # counts by kind and module, then every survivor
    python scripts/mutant_report.py --markdown # the same as a Markdown table (docs/mutants.md)

Each survivor is shown as the smallest statement the mutation changed, before and after. The kind is
read from the change:

* ``wording``: only the text of a message changes (an exception's message, a note, a separator in
  one), or an exception loses its message: what the user reads, not what is decided;
* ``logic``: anything else. Each needs a test, or a reason why it cannot change behaviour.
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Why a surviving mutant cannot change what the gate decides, by mutant (``module.function#N``, a regex).
#: A survivor that none of these explains is printed as ``unexplained``: it needs a test.
WHY: list[tuple[str, str]] = [
    (r"judge\.ab_verdicts\.(_betacf|betainc)#",
     "numerics of the incomplete beta function (guards against dividing by ~0, the iteration cap, the "
     "convergence test, the branch point of the continued fraction): they move t_sf by far less than its "
     "1e-9 agreement with scipy (tests/test_ab_verdicts.py); betainc's x >= 1 branch is unreachable from t_sf"),
    (r"judge\.ab_verdicts\.t_sf#",
     "t_sf at t = 0, t = +-inf or t^2 = df: both branches give the same value there"),
    (r"judge\.ab_verdicts\.look#|judge\.verdicts\.compare_metric#139$",
     "> against >= between a statistic of measured data and its threshold: equal with probability 0"),
    (r"judge\.verdicts\.compare_metric#(141|150|151)$",
     "r = 0 or 0 < r < 1 on a path where r > 0 beyond tolerance was taken before, and r = 0 is never "
     "beyond tolerance: no input reaches a difference"),
    (r"judge\.ab_verdicts\.decide_metric#(150|157|185)$",
     "drops verdict=WARN from replace(): the metric's verdict is already WARN (PairedMetric starts as WARN)"),
    (r"judge\.verdicts\.(log_std#1[04]|baseline_stats#69)$",
     "the reference the logs are taken against (first or second value, v/ref or v*ref) shifts every log "
     "alike, which leaves their standard deviation unchanged"),
    (r"judge\.verdicts\._okey#8$", "lstrip('XX-XX') also strips X: no engine option starts with X"),
    (r"judge\.verdicts\.compare#28$", "getattr(None, 'engine_options', None) is None as well"),
    (r"judge\.baseline\._sig#",
     "rounding 0, 1 or a non-finite value: samples are finite and > 0 before they are rounded, and "
     "float(1) == 1.0"),
    (r"judge\.baseline\.current_umask#",
     "how the umask is read: /proc/self/status, or the probe for systems without /proc (restored at once); "
     "the same mask either way (tests/test_baseline.py checks the file's mode under several umasks)"),
    (r"judge\.baseline\.atomic_write_text#",
     "the temporary file's name, its encoding spelled 'utf-8', 'UTF-8' or left to a UTF-8 locale, and "
     "mkdir's parents for a folder that exists: the same file, mode and content (tests/test_baseline.py "
     "checks those and that no temporary file is left)"),
    (r"(report\.merge\.load_shard#(5|7)|judge\.baseline\.read_baseline_file#(4|6))$",
     "the encoding spelled 'utf-8', 'UTF-8' or left to the locale: the same on a UTF-8 system"),
    (r"judge\.baseline\.parse_baseline_data#(1|2)$",
     "the default path of data that comes from no file: every caller passes one"),
    (r"judge\.baseline\.parse_baseline_data#(39|40|41|42)$",
     "the quotes stripped from a KeyError in the broken-entry message: wording"),
    (r"(judge\.baseline\.parse_baseline_data#(47|48)|judge\.baseline\.BaselineStore\.update#(30|3[5-9]|40))$",
     "a known top-level key kept among the unknown ones: dumps_baseline writes the known keys after them, "
     "so they win"),
    (r"judge\.baseline\.BaselineStore\.update#(52|64)$",
     "the entry id inside the entry: the file keys entries by id and does not store it inside"),
    (r"judge\.baseline\.dumps_baseline#",
     "allow_nan: no NaN or infinity reaches a baseline (check_samples refuses them); a second guard"),
    (r"judge\.baseline\.same_run#8$",
     "with one run id missing the two envs differ (one holds run_id), so the content test is False too"),
    (r"judge\.baseline\.check_fingerprint#4$", "'XXXX' does not match the lowercase pattern either"),
    (r"judge\.baseline\.add_recording#4$",
     "sets anchor=False on recordings that were not pinned: the same recordings"),
    (r"judge\.baseline\.BaselineStore\.compare#(9|14|17)$",
     "the fingerprints a NEW note lists: this run's has no entry (that is why it is NEW), so excluding it "
     "or not lists the same, and the list is not used when there is a baseline"),
    (r"judge\.baseline\.BaselineEntry\.from_dict#37$", "an empty prefix given as '' or None: both are no prefix"),
    (r"report\.merge\.comparison_to_dict#",
     "json.dumps' default=str: every field of a comparison is JSON-native after dataclasses.asdict"),
    (r"run\.shard\.assign#3$", "every shard starts with the same load, 0 or 1: the greedy choices are the same"),
    (r"run\.shard\.(units_of|select)#",
     "reads pytest items, their stash and the config at collection: exercised by the pytester shard tests "
     "(tests/test_shard.py), which the session leaves out because each runs pytest several times"),
]


def why(name: str, kind_: str) -> str:
    """The reason a survivor cannot change a decision, or ``unexplained``."""
    if kind_ == "wording":
        return "wording of a message: no verdict, exit code or stored number depends on it"
    return next((text for pattern, text in WHY if re.search(pattern, short(name))), "unexplained")


def survivors(root: Path) -> tuple[list[str], int, dict[str, int]]:
    """The survivors' names, the number of mutants and the count per status (``mutmut results --all``)."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=root, capture_output=True, text=True).stdout
    status: dict[str, int] = collections.Counter()
    names = []
    for line in out.splitlines():
        name, sep, st = line.strip().rpartition(": ")
        if not sep:
            continue
        status[st] += 1
        if st == "survived":
            names.append(name)
    return names, sum(status.values()), dict(status)


def functions(root: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every mutant and original function in mutmut's copy of the package, by mutant name."""
    funcs: dict[str, Any] = {}
    for f in sorted((root / "mutants").rglob("*.py")):
        if "tests" in f.relative_to(root / "mutants").parts:
            continue
        mod = ".".join(f.relative_to(root / "mutants").with_suffix("").parts)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
                funcs[f"{mod}.{node.name}"] = node
    return funcs


def first_difference(a: Any, b: Any, stmt: tuple[Any, Any] = (None, None), path: tuple[str, ...] = ()) -> Any:
    """``(statement before, statement after, path of fields)`` where two function trees first differ."""
    if isinstance(a, ast.stmt):
        stmt = (a, b)
    if type(a) is not type(b):
        return (*stmt, path)
    if isinstance(a, ast.AST):
        for name in a._fields:
            if name == "name" and isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            found = first_difference(getattr(a, name, None), getattr(b, name, None), stmt, (*path, type(a).__name__))
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return (*stmt, path)
        for x, y in zip(a, b):
            found = first_difference(x, y, stmt, path)
            if found:
                return found
        return None
    return None if a == b else (*stmt, (*path, repr(a), repr(b)))


def one_line(node: ast.AST | None) -> str:
    """A statement as one line (a compound statement: its first line)."""
    if node is None:
        return "?"
    text = ast.unparse(node)
    return text.split("\n")[0] if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try)) else " ".join(
        text.split())


def raised(node: ast.Raise) -> str:
    """The exception a ``raise`` statement raises, without its arguments."""
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return ast.dump(exc) if exc is not None else ""


def kind(before: ast.AST | None, after: ast.AST | None, path: tuple[str, ...]) -> str:
    """``wording`` or ``logic`` (see the module's docstring)."""
    if isinstance(before, ast.Raise) and isinstance(after, ast.Raise) and raised(before) == raised(after):
        return "wording"  # the same exception, another message
    if "JoinedStr" in path:
        return "wording"
    if len(path) >= 2 and path[-2].startswith(("'", '"')):
        old = ast.literal_eval(path[-2])
        if isinstance(old, str) and old and (" " in old.strip() or old.strip() in (",", ";") or old != old.strip()):
            return "wording"
    return "logic"


def report(root: Path) -> tuple[list[tuple[str, str, str, str]], int, dict[str, int]]:
    """``(name, kind, before, after)`` for every survivor; the number of mutants; counts per status."""
    names, total, status = survivors(root)
    funcs = functions(root)
    rows = []
    for name in names:
        a, b = funcs.get(re.sub(r"__mutmut_\d+$", "__mutmut_orig", name)), funcs.get(name)
        found = first_difference(a, b) if a is not None and b is not None else None
        before, after, path = found if found else (None, None, ())
        rows.append((name, kind(before, after, path), one_line(before), one_line(after)))
    return rows, total, status


def short(name: str) -> str:
    """``module.function#N`` from a mutant's name."""
    name = name.removeprefix("pytest_mgpu.")
    name = re.sub(r"\.x_|\.xǁ", ".", name).replace("ǁ", ".")
    return re.sub(r"__mutmut_(\d+)$", r"#\1", name)


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit 2 when there is no mutmut run to read."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a survivor is unexplained")
    ap.add_argument("--root", type=Path, default=ROOT, help="the directory mutmut ran in (default: the repository)")
    args = ap.parse_args(argv)
    if not (args.root / "mutants").is_dir():
        print(f"error: {args.root / 'mutants'} does not exist; run `nox -s mutants` first", file=sys.stderr)
        return 2
    rows, total, status = report(args.root)
    by_kind = collections.Counter(k for _, k, _, _ in rows)
    by_module = collections.Counter((n.split(".x")[0].removeprefix("pytest_mgpu."), k) for n, k, _, _ in rows)
    print(f"{total} mutants: " + ", ".join(f"{n} {s}" for s, n in sorted(status.items(), key=lambda x: -x[1])))
    print(f"survivors by kind: {by_kind['wording']} wording, {by_kind['logic']} logic")
    for (module, k), n in sorted(by_module.items()):
        print(f"  {module}: {n} {k}")
    unexplained = [r for r in rows if why(r[0], r[1]) == "unexplained"]
    print(f"unexplained: {len(unexplained)}")
    for k in ("logic", "wording"):
        subset = [r for r in rows if r[1] == k]
        if args.markdown:
            print(f"\n### {k} ({len(subset)})\n\n| mutant | before | after | why it survives |\n|---|---|---|---|")
            for name, _, before, after in subset:
                cell = [x.replace("|", "\\|")[:120] for x in (before, after)]
                print(f"| `{short(name)}` | `{cell[0]}` | `{cell[1]}` | {why(name, k)} |")
        else:
            print(f"\n{k} ({len(subset)}):")
            for name, _, before, after in subset:
                print(f"  {short(name)}: {why(name, k)}\n    - {before[:200]}\n    + {after[:200]}")
    return 1 if unexplained and args.strict else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        sys.exit(141)
