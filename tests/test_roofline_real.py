"""benchmarks/roofline_real.py: roofline efficiency per layout from recorded single-stream runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("roofline_real", ROOT / "benchmarks" / "roofline_real.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_h200_baseline_gives_one_row_per_single_stream_layout() -> None:
    rows = _module().rows(ROOT / "baselines/nvidia-h200-x4/perf_tests/test_llama2_7b.py.json", None)
    by_layout = {r["layout"]: r for r in rows}
    assert sorted(by_layout) == ["tp1-pp1", "tp2-pp1", "tp4-pp1"]
    assert all(r["card"] == "NVIDIA H200 SXM 141GB" for r in rows)
    # TP splits the weights: the floor halves from TP=1 to TP=2 (up to the unsplit embeddings' share)
    assert by_layout["tp2-pp1"]["floor_ms"] == pytest.approx(by_layout["tp1-pp1"]["floor_ms"] / 2, rel=0.02)
    assert all(0 < r["efficiency"] < 1 for r in rows)


def test_results_file_reads_the_single_stream_repeats() -> None:
    rows = _module().rows(ROOT / "docs/data/h100-x1/h100-x1-depth.json", None)
    single = [r for r in rows if r["test"] == "test_single_stream"]
    assert len(single) == 1 and single[0]["card"] == "NVIDIA H100 SXM5 80GB"
    assert single[0]["tpot_p50_ms"] == pytest.approx(5.947, abs=0.01)


def test_unknown_card_names_the_way_out(tmp_path: Path) -> None:
    src = (ROOT / "baselines/nvidia-h200-x4/perf_tests/test_llama2_7b.py.json").read_text()
    f = tmp_path / "b.json"
    f.write_text(src.replace('"nvidia-h200-x4"', '"acme-tpu-x4"'))
    with pytest.raises(SystemExit, match="pass --card"):
        _module().rows(f, None)
