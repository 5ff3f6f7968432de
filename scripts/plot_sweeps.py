"""Plot every sweep in a ``--mgpu-json`` results file (e.g. one that came back from a GPU machine).

    python3 scripts/plot_sweeps.py depth.json OUT_DIR        # needs matplotlib

Prints each sweep's regime and the PNG it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_mgpu.judge.results import BenchResult
from pytest_mgpu.report.sweep import group_sweeps, plot_file_name, plot_sweep


def main() -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("out_dir", type=Path)
    a = ap.parse_args()
    doc = json.loads(a.results.read_text())
    sweeps = group_sweeps([BenchResult.from_dict(r) for r in doc["results"]])
    if not sweeps:
        print(f"no sweep in {a.results}")
        return 1
    for sw in sweeps:
        path = plot_sweep(sw, a.out_dir / plot_file_name(sw))
        print(f"{sw.id}: {sw.describe()}\n  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
