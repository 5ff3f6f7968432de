"""Draw the seed's charts (and every sweep) from ``--mgpu-json`` results files, as ``--mgpu-plot`` does.

    python3 scripts/plot_results.py OUT_DIR results.json [more.json ...]      # needs matplotlib

For results that come back from a GPU machine without matplotlib; prints the PNGs it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_mgpu.judge.results import BenchResult
from pytest_mgpu.report.plots import matplotlib_missing, write_plots


def main() -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("results", type=Path, nargs="+")
    a = ap.parse_args()
    why = matplotlib_missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    results = [BenchResult.from_dict(r) for f in a.results for r in json.loads(f.read_text())["results"]]
    for path in write_plots(results, a.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
