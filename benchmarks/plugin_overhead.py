"""What installing pytest-mgpu costs a project that has no mgpu test.

    python benchmarks/plugin_overhead.py                 # 100 trivial tests, 15 runs of each
    python benchmarks/plugin_overhead.py --runs 30 --tests 100

Writes a project of ``--tests`` trivial tests into a temporary directory and runs
``python -m pytest -q -p no:cacheprovider`` there ``--runs`` times with the plugin and
``--runs`` times with ``-p no:mgpu``, alternating, so that a busy machine slows both alike. Prints
the wall time of each variant (median, mean, min) and the difference of the medians, and checks
that the plugin prints nothing (no ``mgpu:`` header line) in a project without mgpu tests.

The wall time is that of the whole ``pytest`` process (interpreter start, plugin import, collection,
the run), measured from this process with ``time.perf_counter`` around ``subprocess.run``.
"""

from __future__ import annotations

import argparse
import os
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


def run_once(root: Path, extra: list[str]) -> tuple[float, str]:
    """Wall seconds of one ``pytest`` process in ``root``, and its output."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"pytest failed ({' '.join(argv)}):\n{out.stdout}{out.stderr}")
    return elapsed, out.stdout + out.stderr


def describe(name: str, times: list[float]) -> str:
    """One line: median, mean and min in ms."""
    return (
        f"{name:<22} median {statistics.median(times) * 1e3:7.1f} ms   mean {statistics.mean(times) * 1e3:7.1f} ms"
        f"   min {min(times) * 1e3:7.1f} ms   ({len(times)} runs)"
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
        with_plugin: list[float] = []
        without: list[float] = []
        header = False
        for _ in range(args.runs):
            t, out = run_once(root, [])
            with_plugin.append(t)
            header = header or any(line.startswith("mgpu") for line in out.splitlines())
            t, _ = run_once(root, ["-p", "no:mgpu"])
            without.append(t)
        _, verbose = run_once(root, ["-v"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.tests} trivial tests")
    print(describe("with pytest-mgpu", with_plugin))
    print(describe("with -p no:mgpu", without))
    diff = statistics.median(with_plugin) - statistics.median(without)
    print(f"plugin overhead (difference of medians): {diff * 1e3:+.1f} ms")
    mgpu_lines = [line for line in verbose.splitlines() if line.startswith("mgpu")]
    print(f"mgpu lines in the output of a project without mgpu tests: {len(mgpu_lines)}")
    for line in mgpu_lines:
        print(f"  {line}")
    return 1 if (header or mgpu_lines) else 0


if __name__ == "__main__":
    sys.exit(main())
