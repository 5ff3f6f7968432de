"""What installing pytest-mgpu costs a project that has no mgpu test.

    python benchmarks/plugin_overhead.py                 # 100 trivial tests, 15 runs of each
    python benchmarks/plugin_overhead.py --runs 30 --tests 100

Writes a project of ``--tests`` trivial tests into a temporary directory and runs
``python -m pytest -q -p no:cacheprovider`` there ``--runs`` times with the plugin and
``--runs`` times with ``-p no:mgpu``, alternating, so that a busy machine slows both alike. Prints
the wall time and the CPU time (user + system) of each variant and the differences of the medians,
and checks that the plugin prints nothing (no ``mgpu:`` header line) in a project without mgpu tests.

Both are of the whole ``pytest`` process (interpreter start, plugin import, collection, the run):
wall time with ``time.perf_counter`` around ``subprocess.run``, CPU time from ``getrusage`` of the
waited child. On a shared machine the CPU time is the steadier number: other processes stretch
wall time, not the CPU a process uses.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_project(root: Path, tests: int) -> None:
    """A project of ``tests`` trivial tests in one module."""
    body = "".join(f"def test_{i}():\n    assert {i} == {i}\n\n" for i in range(tests))
    (root / "test_trivial.py").write_text(body)


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_once(root: Path, extra: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``pytest`` process in ``root``, and its output."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    cpu0 = _child_cpu()
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    cpu = _child_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"pytest failed ({' '.join(argv)}):\n{out.stdout}{out.stderr}")
    return elapsed, cpu, out.stdout + out.stderr


def describe(name: str, times: list[float]) -> str:
    """One line: median, mean and min in ms."""
    return (
        f"{name:<26} median {statistics.median(times) * 1e3:7.1f} ms   mean {statistics.mean(times) * 1e3:7.1f} ms"
        f"   min {min(times) * 1e3:7.1f} ms"
    )


def main() -> int:
    """Measure, print, and exit 1 if the plugin printed anything in a project without mgpu tests."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--tests", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mgpu-overhead-") as tmp:
        root = Path(tmp)
        write_project(root, args.tests)
        run_once(root, [])  # warm the file cache and __pycache__
        run_once(root, ["-p", "no:mgpu"])
        wall: dict[str, list[float]] = {"with": [], "without": []}
        cpu: dict[str, list[float]] = {"with": [], "without": []}
        header = False
        for _ in range(args.runs):
            w, c, out = run_once(root, [])
            wall["with"].append(w)
            cpu["with"].append(c)
            header = header or any(line.startswith("mgpu") for line in out.splitlines())
            w, c, _ = run_once(root, ["-p", "no:mgpu"])
            wall["without"].append(w)
            cpu["without"].append(c)
        _, _, verbose = run_once(root, ["-v"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.tests} trivial tests, {args.runs} runs each")
    print(describe("wall, with pytest-mgpu", wall["with"]))
    print(describe("wall, with -p no:mgpu", wall["without"]))
    print(describe("CPU, with pytest-mgpu", cpu["with"]))
    print(describe("CPU, with -p no:mgpu", cpu["without"]))
    for name, d in (("wall", wall), ("CPU", cpu)):
        diff = statistics.median(d["with"]) - statistics.median(d["without"])
        print(f"plugin overhead, {name} time (difference of medians): {diff * 1e3:+.1f} ms")
    mgpu_lines = [line for line in verbose.splitlines() if line.startswith("mgpu")]
    print(f"mgpu lines in the output of a project without mgpu tests: {len(mgpu_lines)}")
    for line in mgpu_lines:
        print(f"  {line}")
    return 1 if (header or mgpu_lines) else 0


if __name__ == "__main__":
    sys.exit(main())
