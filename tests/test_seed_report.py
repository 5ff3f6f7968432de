"""The seed's table (per engine and layout: tok/s, per GPU, gain over TP=1, scaling efficiency, TP vs PP,
TPOT p50), engines side by side, and ``--mgpu-plot`` PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure.workload import Workload
from pytest_mgpu.report.plots import matplotlib_missing
from pytest_mgpu.report.summary import seed_rows, side_by_side_lines

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "-p", "no:cacheprovider", "--mgpu-repeats", "1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(engine: str, tp: int, pp: int, tput: float, tpot: float = 10.0, cap: float | None = None) -> BenchResult:
    lay = Layout(tp, pp, cap)
    r = BenchResult(nodeid="t", test_name=f"test_x[{lay.id}]", module="m.py", workload=Workload(request_rate=math.inf),
                    layout=lay, engine=engine, engine_version="1", model="llama-2-7b")
    r.repeats = [RepeatResult(summary={"output_throughput": tput, "output_throughput_per_gpu": tput / lay.num_gpus,
                                       "tpot_p50": tpot})]
    return r


def test_seed_rows_gain_efficiency_and_tp_vs_pp() -> None:
    rows = seed_rows([
        result("vllm", 1, 1, 100.0), result("vllm", 2, 1, 314.0), result("vllm", 1, 2, 250.0),
        result("vllm", 4, 1, 400.0), result("vllm", 2, 2, 360.0), result("vllm", 1, 4, 200.0),
        result("vllm", 2, 1, 150.0, cap=16),  # no TP=1 with this cap: no gain, no efficiency
    ])
    by = {r.layout.id: r for r in rows}
    assert [r.layout.id for r in rows] == ["tp1-pp1", "tp2-pp1", "tp1-pp2", "tp4-pp1", "tp2-pp2", "tp1-pp4",
                                           "tp2-pp1-mem16"]
    assert by["tp1-pp1"].gain == 0.0 and by["tp1-pp1"].efficiency == 1.0 and by["tp1-pp1"].vs_tp is None
    assert by["tp2-pp1"].gain == pytest.approx(0.57)  # the seed's +57%: 157 tok/s per GPU vs 100
    assert by["tp2-pp1"].efficiency == pytest.approx(314 / (2 * 100))
    assert by["tp2-pp1"].vs_tp == 0.0
    assert by["tp1-pp2"].vs_tp == pytest.approx(250 / 314 - 1)  # PP=2 against TP=2
    assert by["tp2-pp2"].vs_tp == pytest.approx(360 / 400 - 1)  # TP2xPP2 against TP=4
    assert by["tp1-pp4"].efficiency == pytest.approx(200 / 400)
    assert by["tp2-pp1-mem16"].gain is None and by["tp2-pp1-mem16"].efficiency is None


def test_engines_side_by_side_each_against_its_own_tp1() -> None:
    rows = seed_rows([result("vllm", 1, 1, 100.0), result("vllm", 2, 1, 314.0),
                      result("trtllm", 1, 1, 120.0), result("trtllm", 2, 1, 432.0)])
    text = "\n".join(line for _, line in side_by_side_lines(rows))
    assert "trtllm tok/s/GPU  trtllm gain/GPU  vllm tok/s/GPU  vllm gain/GPU" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("tp2-pp1"))
    assert line.split() == ["tp2-pp1", "2", "216.0", "+80%", "157.0", "+57%"]
    assert not list(side_by_side_lines(seed_rows([result("vllm", 1, 1, 100.0)])))  # one engine: no such table


PERF_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
@pytest.mark.layout(tp=1, pp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=32, request_rate=math.inf, warmup_requests=2)
"""


@pytest.mark.skipif(matplotlib_missing() is not None, reason="matplotlib (the plot extra) is not installed")
def test_seed_table_and_plots_after_a_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    plots = pytester.path / "plots"
    result = pytester.runpytest(*SIM, "--mgpu-plot", str(plots))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "*the seed's table: llama-2-7b, in64-out16-n32-qpsinf*",  # (the prompt mode may follow)
        "layout*GPUs*engine*out tok/s*tok/s/GPU*gain/GPU vs TP=1*scaling eff.*vs TP, same GPUs*TPOT p50 ms*",
        "tp1-pp1 * 1 * sim * (ref) * 100% * - *",
        "tp2-pp1 * 2 * sim * +*% * (ref) *",
        "tp1-pp2 * 2 * sim * -*% *",
        f"mgpu plots: 2 PNG file(s) in {plots}",
    ])
    files = sorted(p.name for p in plots.iterdir())
    assert len(files) == 2
    assert files[0].startswith("seed-llama-2-7b-in64-out16-n32-qpsinf") and files[0].endswith("-tok_s_per_gpu.png")
    assert files[1].startswith("seed-llama-2-7b-in64-out16-n32-qpsinf") and files[1].endswith("-tpot_p50.png")
    for f in plots.iterdir():
        data = f.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_without_matplotlib_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert matplotlib_missing() is not None
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-plot", "plots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mgpu-plot needs matplotlib, which is not installed: pip install matplotlib (the plot extra*"])
    assert not Path(pytester.path / "plots").exists()
