"""benchmarks/calibrate_real.py: reads any number of baseline and results files, counts a session once."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("calibrate_real", ROOT / "benchmarks" / "calibrate_real.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_sessions_are_read_once_from_every_kind_of_file() -> None:
    mod = _module()
    files = sorted((ROOT / "docs" / "data").glob("*.json")) + [ROOT / "baselines/nvidia-h200-x4/perf_tests/test_llama2_7b.py.json"]
    entries = mod.load(files)
    e = entries[("nvidia-h200-x4", "test_poisson_32qps[tp2-pp1]::in128-out128-n256-qps32")]
    assert len(e.sessions) == 3 and e.layout == "tp2-pp1"  # session 2 is also the committed baseline
    noise = mod.estimate([s["tpot_p50"] for s in e.sessions], 0.005)
    assert noise.sessions == 3 and noise.repeats == 3 and noise.drift is not None and 0 < noise.in_run < 0.05


def test_table_prints(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module()
    assert mod.main([str(ROOT / "docs/data/h200-x4-session3-results.json"),
                     str(ROOT / "docs/data/h200-x4-session1-test_llama2_7b.py.json"),
                     "--metrics", "tpot_p50", "--trials", "20", "--history", "2"]) == 0
    out = capsys.readouterr().out
    assert "MDR @1" in out and "MDR @2" in out
    row = next(ln for ln in out.splitlines() if "test_poisson_32qps" in ln and "tp2-pp1" in ln)
    assert row.split()[4] == "2" and "/2" in row  # two sessions, two ordered pairs replayed


def test_a_results_file_and_the_baseline_recorded_from_it_are_one_session(tmp_path: Path) -> None:
    from pytest_mgpu.judge.baseline import BaselineStore
    from pytest_mgpu.judge.results import BenchResult

    mod = _module()
    results = ROOT / "docs/data/h200-x4-session3-results.json"
    doc = json.loads(results.read_text())
    store = BaselineStore(tmp_path)
    res = store.update("nvidia-h200-x4", doc["results"][0]["module"], [BenchResult.from_dict(r) for r in doc["results"]])
    entries = mod.load([results, res.path])
    assert {len(e.sessions) for e in entries.values()} == {1}
