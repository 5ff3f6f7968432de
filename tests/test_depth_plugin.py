"""Telemetry, roofline and sweeps through the whole plugin on the sim (NVML faked: no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
SIM = ["--mgpu-engine", "sim", "-p", "no:cacheprovider", "--mgpu-repeats", "1", "-v"]  # -v: the telemetry and roofline tables

#: The sim has no real GPUs: give each measurement a sampler over a fake NVML card.
FAKE_NVML_CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from fake_nvml import FakeGpu, FakeNvml
from pytest_mgpu.measure import telemetry

CLOCKS = {{clocks}}

def sampler_for(gpu_ids):
    gpu = FakeGpu(util=[100.0], power_w=[612.0], mem_mib=[20480.0], sm_mhz=CLOCKS * 10000, reasons=[0x4])
    return telemetry.GpuSampler([0], interval_s=0.005, nvml=FakeNvml([gpu]))

ORIGINAL = telemetry.sampler_for

def pytest_configure(config):
    telemetry.sampler_for = sampler_for

def pytest_unconfigure(config):  # pytester runs in this process: leave the module as it was
    telemetry.sampler_for = ORIGINAL
"""

SINGLE = """
import math, pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
def test_single(mgpu_bench):
    r = mgpu_bench.run(input_len=64, output_len=24, num_requests=6, request_rate=math.inf, max_concurrency=1,
                       warmup_requests=1)
    assert r.valid, r.invalid
"""


def test_telemetry_beside_throughput_and_a_clock_warning(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_NVML_CONFTEST.format(clocks="[1980.0, 1700.0]"))  # a card that throttles
    pytester.makepyfile(test_perf=SINGLE)
    out = pytester.path / "r.json"
    r = pytester.runpytest(*SIM, "--mgpu-json", str(out))
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "*GPU telemetry during the measured phase (utilisation is shown, not judged)*",
        "result*layout*tok/s/GPU*util %*power W*mem GiB*SM MHz*SM spread*SM vs base",
        "test_single[[]tp1-pp1[]]::in64-out24-n6-qpsinf-c1-text*tp1-pp1*100.0*612.0*20.00*14.1%*",
        "WARNING clocks: test_single[[]tp1-pp1[]]::in64-out24-n6-qpsinf-c1-text: SM clock of GPU 0 moved 14% during "
        "repeat 1/1 (1980 -> 1700 MHz while busy; NVML clock events: sw_power_cap); a throttling card makes a "
        "false regression",
    ])
    (res,) = json.loads(out.read_text())["results"]
    tel = res["repeats"][0]["telemetry"]
    g = tel["gpus"]["0"]
    assert g["samples"] >= 2 and g["sm_clock_busy_mhz"]["p95"] == 1980 and g["power_w"]["mean"] == 612
    assert tel["interval_s"] == 0.005


def test_steady_clock_gives_no_warning(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_NVML_CONFTEST.format(clocks="[1980.0]"))
    pytester.makepyfile(test_perf=SINGLE)
    r = pytester.runpytest(*SIM)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*GPU telemetry*", "test_single*1,980.0*0.0%*"])
    assert "WARNING clocks" not in r.stdout.str()


def test_roofline_for_a_single_stream_result(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=SINGLE)
    out = pytester.path / "r.json"
    r = pytester.runpytest(*SIM, "--mgpu-json", str(out))  # v100-16gb profile: 900 GB/s
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "*decode roofline, single stream: floor = pp x weight bytes per GPU / HBM bandwidth*",
        "result*engine*layout*card*HBM GB/s*weights/GPU GiB*floor ms*TPOT p50 ms*efficiency",
        "test_single[[]tp1-pp1[]]::in64-out24-n6-qpsinf-c1-text*sim*tp1-pp1*NVIDIA V100 SXM2 16GB*900*12.55*14.97*%",
    ])
    assert "GPU telemetry" not in r.stdout.str()  # no NVML, no telemetry section
    (res,) = json.loads(out.read_text())["results"]
    assert res["roofline"]["floor_ms"] == pytest.approx(14.97, abs=0.01) and res["roofline"]["pp"] == 1


SWEEP = """
import pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
def test_sweep(mgpu_bench):
    sw = mgpu_bench.sweep(concurrency=[1, 2, 4], input_len=32, output_len=8, warmup_requests=1)
    assert [p.workload.max_concurrency for p in sw.points] == [1, 2, 4]
    assert sw.kv_cache_tokens and sw.knee.kind in ("memory-bound", "compute-bound", "no-knee")
    for bad in (dict(), dict(concurrency=[1], rate=[1.0]), dict(concurrency=[0]), dict(concurrency=[1, 1])):
        with pytest.raises(ValueError):
            mgpu_bench.sweep(**bad)
"""


def test_sweep_points_are_results_and_the_report_names_the_regime(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=SWEEP)
    out = pytester.path / "r.json"
    r = pytester.runpytest(*SIM, "--mgpu-json", str(out))
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "*sweep test_sweep[[]tp1-pp1[]]::sweep-concurrency (sim, tp1-pp1, concurrency)*",
        "point*tok/s/GPU*out tok/s*TTFT p50 ms*TPOT p50 ms*scaling*run",
        "c=1 *-*ok", "c=2 *ok", "c=4 *ok",
        "regime: *",
        "*mgpu gate*",
        "mgpu gate: 3 new",
    ])
    res = json.loads(out.read_text())["results"]
    assert [x["entry_id"] for x in res] == [
        "test_sweep[tp1-pp1]::in32-out8-n8-qpsinf-c1-text", "test_sweep[tp1-pp1]::in32-out8-n8-qpsinf-c2-text",
        "test_sweep[tp1-pp1]::in32-out8-n16-qpsinf-c4-text"]
    assert [x["sweep"]["x"] for x in res] == [1.0, 2.0, 4.0]
    assert {x["sweep"]["id"] for x in res} == {"sweep-concurrency"} and res[0]["sweep"]["kv_cache_tokens"] > 0


def test_baseline_keeps_telemetry_and_a_slower_clock_warns(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_NVML_CONFTEST.format(clocks="[1980.0]"))
    pytester.makepyfile(test_perf=SINGLE)
    pytester.runpytest(*SIM, "--mgpu-update-baselines").assert_outcomes(passed=1)
    (path,) = (pytester.path / "baselines").rglob("*.json")
    (entry,) = json.loads(path.read_text())["entries"].values()
    tel = entry["recordings"][-1]["telemetry"]
    assert tel["sm_clock_mhz"] == 1980 and tel["power_w"] == 612 and tel["util_pct"] == 100
    pytester.makeconftest(FAKE_NVML_CONFTEST.format(clocks="[1780.0]"))  # the same card, capped lower
    r = pytester.runpytest(*SIM)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "test_single[[]tp1-pp1[]]::in64-out24-n6-qpsinf-c1-text*1,780.0*0.0%*-10.1%",
        "WARNING clocks: test_single[[]tp1-pp1[]]::in64-out24-n6-qpsinf-c1-text: SM clock 1780 MHz while busy vs "
        "1980 MHz in the baseline (-10%); the comparison is between differently clocked cards",
    ])
