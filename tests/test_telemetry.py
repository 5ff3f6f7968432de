"""The NVML sampler and its summaries, against a fake NVML (no GPU here)."""

from __future__ import annotations

import time

import pytest
from fake_nvml import FakeGpu, FakeNvml
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.measure.telemetry import (
    CLOCK_MOVE_WARN,
    GpuSampler,
    aggregate,
    busy_clock,
    clock_spread,
    clock_warnings,
    sampler_for,
)

HOUR = 3600.0  # an interval the thread never reaches: samples are taken by hand


def sampled(nv: FakeNvml, n: int, indices: list[int] | None = None) -> GpuSampler:
    """A stopped sampler whose thread never fired, with ``n`` samples: start, n-2 by hand, stop."""
    s = GpuSampler(indices if indices is not None else list(range(len(nv.gpus))), interval_s=HOUR, nvml=nv)
    s.start()
    for _ in range(n - 2):
        s.sample()
    s.stop()
    return s


def test_summary_per_gpu_with_busy_clock_and_clock_events() -> None:
    gpu0 = FakeGpu(util=[0, 100, 100, 100, 100, 0], sm_mhz=[345, 1980, 1980, 1755, 1755, 345],
                   power_w=[80, 650, 700, 690, 700, 90], mem_mib=[70_000, 71_000, 72_000, 72_000, 72_000, 72_000],
                   reasons=[0, 0, 0, 0x4, 0x4, 0])
    gpu1 = FakeGpu(unsupported={"power"})
    nv = FakeNvml([gpu0, gpu1])
    s = sampled(nv, 6)
    assert nv.inits == 1 and nv.shutdowns == 1
    out = s.summary()
    assert out is not None and out["samples"] == 6 and set(out["gpus"]) == {"0", "1"}
    g0 = out["gpus"]["0"]
    assert g0["name"] == "NVIDIA H100 80GB HBM3" and g0["samples"] == 6
    assert g0["util_pct"]["mean"] == pytest.approx(400 / 6, abs=0.01)
    assert g0["power_w"]["max"] == 700 and g0["mem_used_mib"]["max"] == 72_000
    # All samples: the idle 345 MHz is there; busy samples only: 1755..1980.
    assert g0["sm_clock_mhz"]["min"] == 345
    assert (g0["sm_clock_busy_mhz"]["min"], g0["sm_clock_busy_mhz"]["max"]) == (1755, 1980)
    assert g0["clock_events"] == ["sw_power_cap"]
    # A metric the card does not support is left out, the rest is there.
    g1 = out["gpus"]["1"]
    assert "power_w" not in g1 and g1["sm_clock_busy_mhz"]["p50"] == 1980 and g1["clock_events"] == []


def test_summary_window_keeps_the_measured_phase_only() -> None:
    nv = FakeNvml([FakeGpu(sm_mhz=[1000, 1000, 1980, 1980, 1000])])
    s = GpuSampler([0], interval_s=HOUR, nvml=nv).start()
    s.sample()
    t0 = time.perf_counter()
    s.sample()
    s.sample()
    t1 = time.perf_counter()
    s.stop()  # a last sample, after t1
    out = s.summary(t0, t1)
    assert out is not None and out["samples"] == 2 and out["gpus"]["0"]["sm_clock_mhz"]["min"] == 1980
    assert s.summary(t1 + 1, t1 + 2) is None


def test_thread_samples_until_stopped() -> None:
    nv = FakeNvml([FakeGpu()])
    s = GpuSampler([0], interval_s=0.01, nvml=nv).start()
    deadline = time.monotonic() + 30
    while nv.samples[0] < 5 and time.monotonic() < deadline:  # waits for samples, not for a duration
        time.sleep(0.01)
    s.stop()
    n = nv.samples[0]
    assert n >= 5
    time.sleep(0.05)
    assert nv.samples[0] == n  # stopped: no more reads
    out = s.summary()
    assert out is not None and out["samples"] == n and out["interval_s"] == 0.01


def test_no_nvml_records_nothing_and_never_raises() -> None:
    s = GpuSampler([0], nvml=FakeNvml([FakeGpu()], fail_init=True))
    with s:
        pass
    assert s.error is not None and "NVML unavailable" in s.error and s.summary() is None
    bad = GpuSampler([3], nvml=FakeNvml([FakeGpu()]))  # index out of range
    with bad:
        pass
    assert bad.error is not None and "NVML query failed" in bad.error and bad.summary() is None
    assert sampler_for([]) is None


def summary_with(clocks: list[float], reasons: int = 0) -> dict:
    nv = FakeNvml([FakeGpu(sm_mhz=clocks, reasons=[reasons])])
    s = sampled(nv, len(clocks))
    out = s.summary()
    assert out is not None
    return out


def test_clock_warnings_during_a_run_and_against_the_baseline() -> None:
    steady = summary_with([1980] * 20)
    assert clock_warnings("t::w", [steady, steady]) == []
    throttled = summary_with([1980] * 10 + [1700] * 10, reasons=0x40)
    (w,) = clock_warnings("t::w", [steady, throttled])
    assert "SM clock of GPU 0 moved 14% during repeat 2/2 (1980 -> 1700 MHz while busy" in w
    assert "hw_thermal" in w and "false regression" in w
    # Same clocks as the baseline: quiet; 10% lower throughout: a warning naming both clocks.
    assert clock_warnings("t::w", [steady], baseline={"sm_clock_mhz": 1980}) == []
    slow = summary_with([1780] * 20)
    (w,) = clock_warnings("t::w", [slow], baseline={"sm_clock_mhz": 1980})
    assert "SM clock 1780 MHz while busy vs 1980 MHz in the baseline (-10%)" in w


@given(lo=st.floats(300, 2000), hi=st.floats(300, 2000))
def test_spread_warns_exactly_beyond_the_threshold(lo: float, hi: float) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    s = {"gpus": {"0": {"sm_clock_busy_mhz": {"p5": lo, "p50": lo, "p95": hi}}}}
    spread = clock_spread(s)
    assert spread is not None and spread[0] == pytest.approx((hi - lo) / hi)
    assert bool(clock_warnings("e", [s])) == ((hi - lo) / hi > CLOCK_MOVE_WARN)


def test_aggregate_over_repeats_and_gpus() -> None:
    nv = FakeNvml([FakeGpu(power_w=[600], util=[90], sm_mhz=[1900], mem_mib=[30_000]),
                   FakeGpu(power_w=[400], util=[70], sm_mhz=[1800], mem_mib=[50_000])])
    s = sampled(nv, 3)
    one = s.summary()
    agg = aggregate([one, None, one])
    assert agg == {"util_pct": 80.0, "power_w": 500.0, "mem_used_mib": 50_000.0, "sm_clock_mhz": 1800.0,
                   "clock_spread": 0.0}
    assert busy_clock(one) == 1800 and aggregate([None]) is None and busy_clock(None) is None


def test_baseline_recording_keeps_compact_telemetry() -> None:
    from pytest_mgpu.judge.baseline import Recording

    rec = Recording(metrics={"tpot_p50": (5.0,)}, engine_version="1", telemetry={"sm_clock_mhz": 1980.0})
    again = Recording.from_dict(rec.to_dict(), "e")
    assert again.telemetry == {"sm_clock_mhz": 1980.0}
    d = rec.to_dict() | {"telemetry": {"sm_clock_mhz": "nan", "power_w": "x", "util_pct": 99}}
    assert Recording.from_dict(d, "e").telemetry == {"util_pct": 99.0}  # junk is dropped, never judged
    assert Recording.from_dict(rec.to_dict() | {"telemetry": None}, "e").telemetry is None
    assert "telemetry" not in Recording(metrics={"tpot_p50": (5.0,)}, engine_version="1").to_dict()
