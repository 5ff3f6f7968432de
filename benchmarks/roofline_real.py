"""Roofline efficiency per layout from recorded GPU runs: decode floor / measured single-stream TPOT p50.

The floor is the plugin's own (:func:`pytest_mgpu.report.regime.roofline`): pp x weight bytes per GPU /
the card's HBM bandwidth. Inputs are baseline files (schema 1 or 2; the newest recording of each
entry) and ``--mgpu-json`` results files; only single-stream entries (concurrency 1) count. The
card comes from the file's fingerprint (``nvidia-h200-x4`` -> H200) unless ``--card`` names it.

    python benchmarks/roofline_real.py baselines/nvidia-h200-x4/perf_tests/test_llama2_7b.py.json \\
        docs/data/h100-x1/h100-x1-depth.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from pytest_mgpu.models import resolve_model
from pytest_mgpu.report.regime import roofline


def _card_name(fingerprint: str) -> str:
    """``nvidia-h200-x4`` -> ``nvidia h200`` (what :func:`pytest_mgpu.cards.card_for_name` matches)."""
    return re.sub(r"-x\d+(-n\d+)?$", "", fingerprint).replace("-", " ")


def _layout(entry_id: str, data: dict[str, Any]) -> tuple[int, int]:
    layout = data.get("layout")
    if isinstance(layout, dict):
        return int(layout.get("tp", 1)), int(layout.get("pp", 1))
    m = re.search(r"tp(\d+)-pp(\d+)", entry_id)
    if not m:
        raise ValueError(f"no layout in {entry_id!r}")
    return int(m.group(1)), int(m.group(2))


def _single_stream(entry_id: str, data: dict[str, Any]) -> bool:
    workload = data.get("workload")
    if isinstance(workload, dict):
        return workload.get("max_concurrency") == 1
    return entry_id.endswith("-c1")


def rows(path: Path, card: str | None) -> list[dict[str, Any]]:
    """One row per single-stream entry of ``path``: layout, measured TPOT p50, floor, efficiency."""
    doc = json.loads(path.read_text())
    fingerprint = str(doc.get("fingerprint") or "")
    out: list[dict[str, Any]] = []
    if "results" in doc:  # --mgpu-json
        items = [(r["entry_id"], r, [rep["summary"]["tpot_p50"] for rep in r["repeats"]
                                     if not rep.get("invalid") and rep.get("summary", {}).get("tpot_p50")])
                 for r in doc["results"]]
        fingerprint = fingerprint or str(doc.get("env", {}).get("fingerprint", ""))
    else:  # a baseline file
        items = []
        for eid, e in doc["entries"].items():
            if "recordings" in e:
                samples = list(e["recordings"][-1]["metrics"].get("tpot_p50", []))
            else:
                samples = list(e["metrics"].get("tpot_p50", {}).get("samples", []))
            items.append((eid, e, samples))
    for eid, e, samples in items:
        if not samples or not _single_stream(eid, e):
            continue
        tp, pp = _layout(eid, e)
        model = resolve_model(str(e.get("model") or "llama-2-7b"))
        name = card or _card_name(fingerprint)
        r = roofline(model, tp, pp, gpu_names=[name])
        if r is None:
            raise SystemExit(f"{path}: no bandwidth known for card {name!r}; pass --card")
        tpot = statistics.median(samples)
        out.append({"file": path.name, "test": eid.split("[")[0], "card": r.card, "layout": f"tp{tp}-pp{pp}", "tpot_p50_ms": tpot,
                    "floor_ms": r.floor_ms, "efficiency": r.floor_ms / tpot, "repeats": len(samples)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table (Markdown) for the files given."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--card", help="NVML-style card name for every file (default: from the fingerprint)")
    args = ap.parse_args(argv)
    table = [row for f in args.files for row in rows(f, args.card)]
    if not table:
        print("no single-stream entries found", file=sys.stderr)
        return 1
    print("| card | test | layout | TPOT p50 (ms) | floor (ms) | efficiency | repeats | file |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in table:
        print(f"| {r['card']} | {r['test']} | {r['layout']} | {r['tpot_p50_ms']:.2f} | {r['floor_ms']:.2f} | "
              f"{100 * r['efficiency']:.0f}% | {r['repeats']} | {r['file']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
