"""``pytest-mgpu bisect BUILDS.toml [-- PYTEST_ARGS]``: which build between a good and a bad one made it slower.

``BUILDS.toml`` lists the builds in order, as ``[[build]]`` tables::

    [[build]]
    name = "0.30.0"                       # the first build is good
    python = ".venv-0.30.0/bin/python"    # the interpreter its engine runs under (default: this one)
    env = { VLLM_USE_V1 = "1" }           # its engine's environment (optional)
    engine_opts = { max-num-seqs = "256" }  # its engine options (optional)

    [[build]]
    name = "0.32.0"                       # the last build is bad
    python = ".venv-0.32.0/bin/python"

The search is binary: each step runs pytest (a subprocess, with ``PYTEST_ARGS``) as a same-job A/B
of the candidate (the new side: ``--mgpu-engine-python``, ``--mgpu-engine-env``,
``--mgpu-engine-opt``) against the first build (the old side: ``--mgpu-ab``, ``--mgpu-ab-env``,
``--mgpu-ab-opt``). A step whose A/B FAILs marks the candidate bad; PASS, IMPROVED and WARN
(inconclusive) mark it good, the WARN said so. A step that errors (pytest cannot run, an INVALID
result, nothing measured) stops the search and is reported: it is never taken as good.

The A/B's old side inherits the new side's environment and options and overrides them with its
own, so every key a later build sets must be set by the first build too; a file that breaks this
is refused before anything runs, as is any other malformed file (exit 2).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CliError

BUILD_KEYS = ("name", "python", "env", "engine_opts")


@dataclass(frozen=True)
class Build:
    """One build of the list: a name, the interpreter its engine runs under, its env and engine options."""

    name: str
    python: str
    env: tuple[tuple[str, str], ...] = ()
    engine_opts: tuple[tuple[str, str], ...] = ()


def _table(value: Any, where: str, key: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise CliError(f"{where}: '{key}' must be a table of KEY = \"VALUE\", e.g. {key} = {{ speed = \"0.85\" }}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise CliError(f"{where}: {key}.{k} must be a string or a number, got {type(v).__name__}")
        out[str(k)] = str(v)
    return tuple(sorted(out.items()))


def load_builds(path: str | Path) -> list[Build]:
    """Read and check ``BUILDS.toml``; every problem is a :class:`CliError` naming the file, the build and the fix."""
    try:  # lazy: only the bisect command reads TOML
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ImportError:
            raise CliError("pytest-mgpu bisect reads TOML with tomllib (Python 3.11+); "
                           "on 3.10: pip install tomli") from None
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{p}: no such file; pass a TOML file of [[build]] tables") from None
    except OSError as exc:
        raise CliError(f"{p}: cannot read ({exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{p}: not valid TOML ({exc})") from None
    other = sorted(k for k in data if k != "build")
    if other:
        raise CliError(f"{p}: unknown top-level key(s) {', '.join(other)}; the file holds only [[build]] tables")
    raw = data.get("build")
    if not isinstance(raw, list) or not all(isinstance(b, dict) for b in raw):
        raise CliError(f"{p}: no [[build]] tables; list the builds in order, each with at least name = \"...\"")
    if len(raw) < 2:
        raise CliError(f"{p}: {len(raw)} build(s); a bisect needs at least two (the first good, the last bad)")
    builds: list[Build] = []
    for i, b in enumerate(raw, 1):
        where = f"{p}: build {i}"
        unknown = sorted(set(b) - set(BUILD_KEYS))
        if unknown:
            raise CliError(f"{where}: unknown key(s) {', '.join(unknown)}; a build has {', '.join(BUILD_KEYS)}")
        name = b.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CliError(f"{where}: needs name = \"...\" (a non-empty string)")
        where = f"{p}: build {i} ({name})"
        python = b.get("python", sys.executable)
        if not isinstance(python, str) or not python.strip():
            raise CliError(f"{where}: python must be the path of an interpreter, e.g. python = \".venv/bin/python\"")
        builds.append(Build(name.strip(), python, _table(b.get("env"), where, "env"),
                            _table(b.get("engine_opts"), where, "engine_opts")))
    seen: set[str] = set()
    for b in builds:
        if b.name in seen:
            raise CliError(f"{p}: two builds are named {b.name!r}; names must be unique")
        seen.add(b.name)
    first = builds[0]
    for b in builds[1:]:
        for key, mine, theirs in (("env", b.env, first.env), ("engine_opts", b.engine_opts, first.engine_opts)):
            missing = sorted(set(dict(mine)) - set(dict(theirs)))
            if missing:
                raise CliError(
                    f"{p}: build {b.name!r} sets {key} {', '.join(missing)} but the first build ({first.name!r}) does "
                    f"not; the A/B's old side would inherit the candidate's value: set it in the first build too"
                )
    return builds


def ab_args(good: Build, candidate: Build, json_path: Path) -> list[str]:
    """The pytest options of one step: the candidate as the new side, the first build as the old side."""
    args = [f"--mgpu-ab={good.python}", f"--mgpu-engine-python={candidate.python}"]
    args += [f"--mgpu-ab-env={k}={v}" for k, v in good.env]
    args += [f"--mgpu-ab-opt={k}={v}" for k, v in good.engine_opts]
    args += [f"--mgpu-engine-env={k}={v}" for k, v in candidate.env]
    args += [f"--mgpu-engine-opt={k}={v}" for k, v in candidate.engine_opts]
    return [*args, f"--mgpu-json={json_path}"]


@dataclass
class Step:
    """One step of the search: the candidate, the A/B's verdict and what it cost."""

    index: int
    build: Build
    verdict: str  # FAIL, PASS, IMPROVED, WARN, or ERROR
    gpu_minutes: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def bad(self) -> bool:
        """Whether the candidate is slower than the first build (its A/B FAILed)."""
        return self.verdict == "FAIL"

    def line(self, good: Build) -> str:
        """``step 2: b3 vs b0: FAIL (2 FAIL, 1 PASS), 0.12 GPU-min -> bad``."""
        head = f"step {self.index}: {self.build.name} vs {good.name}: {self.verdict}"
        if self.verdict == "ERROR":
            return f"{head}, {self.gpu_minutes:.2f} GPU-min: {self.error}"
        counts = ", ".join(f"{n} {v}" for v, n in sorted(self.counts.items()))
        how = "bad" if self.bad else "good" + (" (inconclusive, taken as good)" if self.verdict == "WARN" else "")
        return f"{head} ({counts}), {self.gpu_minutes:.2f} GPU-min -> {how}"


#: Severity of the A/B verdicts, worst last (a step's verdict is the worst of its results).
_ORDER = ("IMPROVED", "PASS", "WARN", "FAIL")

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run_pytest(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, text=True, check=False)


def run_step(index: int, good: Build, candidate: Build, pytest_args: Sequence[str], workdir: Path,
             runner: Runner = _run_pytest) -> Step:
    """Run one A/B (pytest as a subprocess) and read its verdicts from the ``--mgpu-json`` file."""
    out = workdir / f"step-{index}-{candidate.name.replace(os.sep, '_')}.json"
    proc = runner([*pytest_args, *ab_args(good, candidate, out)])
    step = Step(index, candidate, "ERROR")
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    if proc.returncode not in (0, 1):
        step.error = f"pytest exited with {proc.returncode}: {tail}"
        return step
    try:
        doc = json.loads(out.read_text(encoding="utf-8"))
        ab = doc["ab"]
    except (OSError, ValueError, KeyError, TypeError):
        step.error = f"pytest wrote no A/B results (exit {proc.returncode}): {tail}"
        return step
    counts = {str(k): int(v) for k, v in (ab.get("verdicts") or {}).items()}
    step.counts = counts
    step.gpu_minutes = float(ab.get("gpu_minutes") or 0.0)
    if not counts:
        step.error = "no A/B result: the selected tests measured nothing"
    elif set(counts) - set(_ORDER):
        step.error = "not every result could be compared: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    elif proc.returncode == 1 and "FAIL" not in counts:
        step.error = f"pytest reported failures that are not A/B regressions (a test errored): {tail}"
    else:
        step.verdict = max(counts, key=_ORDER.index)
    return step


def bisect(builds: Sequence[Build], pytest_args: Sequence[str], *, print_: Callable[[str], None] = print,
           runner: Runner = _run_pytest, workdir: Path | None = None) -> int:
    """Binary search for the first bad build; prints each step and ``first bad build: NAME``.

    Returns 0 when the first bad build was named, 1 when a step errored (the search stopped there).
    """
    good_i, bad_i = 0, len(builds) - 1
    good = builds[0]
    steps_max = math.ceil(math.log2(len(builds) - 1)) if len(builds) > 2 else 0
    print_(f"bisect: {len(builds)} builds; first good: {good.name}, last bad: {builds[-1].name}; "
           f"at most {steps_max} A/B step(s), each candidate against {good.name}")
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="mgpu-bisect-") as tmp:
        where = workdir or Path(tmp)
        while bad_i - good_i > 1:
            mid = (good_i + bad_i) // 2
            step = run_step(len(steps) + 1, good, builds[mid], pytest_args, where, runner)
            steps.append(step)
            print_(step.line(good))
            if step.verdict == "ERROR":
                total = sum(s.gpu_minutes for s in steps)
                print_(f"bisect stopped: step {step.index} ({builds[mid].name}) errored, so the first bad build lies "
                       f"after {builds[good_i].name} and at or before {builds[bad_i].name}; {total:.2f} GPU-min spent")
                return 1
            if step.bad:
                bad_i = mid
            else:
                good_i = mid
    total = sum(s.gpu_minutes for s in steps)
    assumed = "" if any(s.build == builds[bad_i] for s in steps) else " (the last build, given as bad; not measured)"
    print_(f"first bad build: {builds[bad_i].name}{assumed}")
    print_(f"bisect: {len(steps)} step(s), {total:.2f} GPU-min")
    return 0


def cmd_bisect(args: Any) -> int:
    """``pytest-mgpu bisect BUILDS.toml [-- PYTEST_ARGS]``."""
    builds = load_builds(args.builds)
    rest = list(args.pytest_args or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    bad = [a for a in rest if a.split("=", 1)[0] in ("--mgpu-ab", "--mgpu-engine-python", "--mgpu-json")]
    if bad:
        raise CliError(f"bisect sets {', '.join(sorted({a.split('=', 1)[0] for a in bad}))} itself from the "
                       f"builds; drop it from PYTEST_ARGS")
    return bisect(builds, rest)


def add_parser(sub: Any) -> None:
    """Register ``bisect`` with the ``pytest-mgpu`` subcommands."""
    import argparse

    b = sub.add_parser("bisect", help="Find the first slow build in an ordered list (binary search of same-job A/Bs)")
    b.add_argument("builds",
                   help="TOML file of [[build]] tables (name, python, env, engine_opts): first good, last bad")
    b.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="-- then the pytest arguments of each A/B (tests, --mgpu-engine, rounds, ...)")
    b.set_defaults(func=cmd_bisect)
