"""The client's numbers against the sim's ground truth (what the server put on the wire).

The sim's ``GET /sim/requests`` records, per request, when it arrived and when its first and last
token chunks were handed to the socket. The client's TTFT and TPOT medians must match them within
5% at 32 QPS and at rate inf (the acceptance criterion of the client).
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_mgpu.engines.base import EngineSpec, RunningEngine
from pytest_mgpu.engines.sim import SimAdapter
from pytest_mgpu.gpus import GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure.client import run_workload
from pytest_mgpu.measure.workload import Workload
from pytest_mgpu.models import resolve_model

pytest.importorskip("aiohttp")

TOLERANCE = 0.05


def host_busy() -> str | None:
    """Why this host is too busy for a comparison timed in real time, or None.

    The client's wall-clock view lags the server's writes by however long the host keeps it off
    the CPU: on this 2-core machine at load average 5 (vLLM on CPU beside it) the TTFT error
    reached +6%. The numbers the plugin gates come from the modelled clock and are checked
    without this condition.
    """
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        return f"host too busy for a wall-clock comparison (load average {load:.1f} on {cores} cores)"
    return None


needs_quiet_host = pytest.mark.skipif(host_busy() is not None, reason=host_busy() or "")


def start(tmp: Path, model: str, layout: Layout, **options: str) -> RunningEngine:
    """A sim server for ``model`` started by :class:`SimAdapter`."""
    spec = EngineSpec("sim", resolve_model(model), layout, options=tuple(sorted(options.items())),
                      python=sys.executable)
    return SimAdapter().start(spec, GpuInventory(), [], tmp, start_timeout_s=30)


def get_truth(base_url: str) -> list[dict[str, Any]]:
    """The server's records of finished requests."""
    with urllib.request.urlopen(base_url + "/sim/requests", timeout=10) as resp:
        return list(json.loads(resp.read())["requests"])


def reset(base_url: str) -> None:
    """Forget the server's records."""
    req = urllib.request.Request(base_url + "/sim/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def llama_v100_tp2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = start(tmp_path_factory.mktemp("sim-gt"), "llama-2-7b", Layout(tp=2), gpu="v100-16gb")
    yield eng
    SimAdapter().stop(eng)


@needs_quiet_host
@pytest.mark.parametrize("rate", [32.0, math.inf], ids=["qps32", "qpsinf"])
def test_client_medians_match_ground_truth(llama_v100_tp2: RunningEngine, rate: float) -> None:
    """Client TTFT/TPOT medians are within 5% of the server's true medians.

    llama-2-7b, TP=2 on the v100-16gb profile, 32 requests of 512 in / 32 out: prefill is
    compute-bound (~50 ms a request), so the true TTFT median is ~0.4 s at 32 QPS and ~0.9 s at
    rate inf, and TPOT is ~40-50 ms. The client adds a few ms to TTFT (request write, reading a
    burst of chunks from all running streams on a busy 2-core machine), which is what this test
    bounds. At rate inf as many warm-up requests as measured ones open the connections that the
    measured requests then reuse: otherwise up to 32 TCP connects per burst, timed by the client
    (vLLM's definition) but invisible to the server, would count against the client.

    Observed on a 2-core machine shared with other jobs, and with 2 extra busy-loop processes
    (13 runs, docs/sim.md): TTFT error +0.3% to +1.03%, TPOT error within ±0.2%, so the 5%
    bound has a margin of about 5x.
    """
    eng = llama_v100_tp2
    n = 32
    wl = Workload(input_len=512, output_len=32, num_requests=n, request_rate=rate,
                  warmup_requests=n if math.isinf(rate) else 4, seed=7)
    reset(eng.base_url)
    out = run_workload(eng.base_url, "llama-2-7b", wl, timeout_s=120)
    failed = [r.error for r in out.records if not r.success]
    assert not failed, failed[:3]
    assert all(r.output_tokens == wl.output_len for r in out.records)

    truth = get_truth(eng.base_url)
    assert len(truth) == n + wl.warmup_requests
    # Warm-ups all finish before the first measured request is sent: the last n arrivals are ours.
    measured = sorted(truth, key=lambda r: r["arrival_s"])[-n:]
    assert all(r["output_tokens"] == wl.output_len for r in measured)

    client_ttft = float(np.median([r.ttft * 1e3 for r in out.records]))
    client_tpot = float(np.median([r.tpot * 1e3 for r in out.records if r.tpot is not None]))
    true_ttft = float(np.median([r["ttft_ms"] for r in measured]))
    true_tpot = float(np.median([r["tpot_ms"] for r in measured]))
    assert true_ttft > 100.0, "workload too light: the client's fixed overhead would dominate TTFT"
    err_ttft = (client_ttft - true_ttft) / true_ttft
    err_tpot = (client_tpot - true_tpot) / true_tpot
    msg = (f"rate={rate}: TTFT client {client_ttft:.2f} ms vs true {true_ttft:.2f} ms ({err_ttft:+.2%}); "
           f"TPOT client {client_tpot:.3f} ms vs true {true_tpot:.3f} ms ({err_tpot:+.2%})")
    print(msg)
    assert abs(err_ttft) < TOLERANCE, msg
    assert abs(err_tpot) < TOLERANCE, msg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = start(tmp_path_factory.mktemp("sim-tiny"), "tiny-llama", Layout(tp=1), overhead_ms="1")
    yield eng
    SimAdapter().stop(eng)


def test_truth_is_wire_time_not_model_time(tiny: RunningEngine) -> None:
    """Truth times are when chunks were written: never before the modelled step end, and ordered."""
    wl = Workload(input_len=32, output_len=16, num_requests=16, request_rate=math.inf, warmup_requests=0)
    reset(tiny.base_url)
    out = run_workload(tiny.base_url, "tiny-llama", wl, timeout_s=60)
    assert all(r.success for r in out.records)
    truth = get_truth(tiny.base_url)
    assert len(truth) == 16
    for r in truth:
        assert r["arrival_s"] <= r["first_token_s"] <= r["finish_s"]
        # asyncio may fire a timer at most one clock tick early; writes are then never earlier.
        assert r["first_token_s"] >= r["model_first_token_s"] - 1e-6
        assert r["finish_s"] >= r["model_finish_s"] - 1e-6
        assert r["ttft_ms"] == pytest.approx((r["first_token_s"] - r["arrival_s"]) * 1e3, abs=1e-6)
        assert r["tpot_ms"] == pytest.approx((r["finish_s"] - r["first_token_s"]) * 1e3 / 15, abs=1e-6)
        assert r["model_tpot_ms"] == pytest.approx(
            (r["model_finish_s"] - r["model_first_token_s"]) * 1e3 / 15, abs=1e-6)


def test_zero_delay_truth_has_no_model_times(tmp_path: Path) -> None:
    """In zero-delay mode there is no modelled time; the truth is the write times alone."""
    eng = start(tmp_path, "tiny-llama", Layout(), zero="1")
    try:
        wl = Workload(input_len=8, output_len=100, num_requests=4, request_rate=math.inf, warmup_requests=0)
        out = run_workload(eng.base_url, "tiny-llama", wl, timeout_s=30)
        assert all(r.success and r.output_tokens == 100 for r in out.records)
        truth = get_truth(eng.base_url)
        assert len(truth) == 4
        for r in truth:
            assert "model_ttft_ms" not in r
            assert r["output_tokens"] == 100
            assert r["arrival_s"] <= r["first_token_s"] <= r["finish_s"]
    finally:
        SimAdapter().stop(eng)


@pytest.fixture(scope="module")
def llama_scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = start(tmp_path_factory.mktemp("sim-gt-scaled"), "llama-2-7b", Layout(tp=2), gpu="v100-16gb",
                time_scale=str(SCALE))
    yield eng
    SimAdapter().stop(eng)


SCALE = 2.0


def run_modelled(eng: RunningEngine, rate: float) -> tuple[Workload, Any, dict[int, dict[str, Any]]]:
    """The ground-truth workload through the plugin's path (``sim_clock=True``): (workload, outcome, truth by index)."""
    n = 32
    wl = Workload(input_len=512, output_len=32, num_requests=n, request_rate=rate,
                  warmup_requests=n if math.isinf(rate) else 4, seed=7)
    reset(eng.base_url)
    out = run_workload(eng.base_url, "llama-2-7b", wl, timeout_s=120, sim_clock=True)
    assert out.meta["clock"] == "model" and out.meta["time_scale"] == SCALE
    assert all(r.success and r.output_tokens == wl.output_len for r in out.records), [r.error for r in out.records]
    truth = [r for r in get_truth(eng.base_url) if "index" in r]
    measured_run = max(r["run"] for r in truth)
    return wl, out, {r["index"]: r for r in truth if r["run"] == measured_run}


@pytest.mark.parametrize("rate", [32.0, math.inf], ids=["qps32", "qpsinf"])
def test_modelled_clock_stamps_are_the_truth(llama_scaled: RunningEngine, rate: float) -> None:
    """On the modelled clock (the plugin's way of timing the sim), the client's numbers are the truth.

    The client's per-request TTFT, TPOT and E2EL from the chunks' stamps equal the server's
    modelled truth for the same request (run and index), to the stamps' 1 ns; and the client
    counted every chunk for real: as many wall-clock reads as stamps as tokens. Deterministic.
    """
    wl, out, by_index = run_modelled(llama_scaled, rate)
    assert sorted(by_index) == list(range(wl.num_requests))
    for i, rec in enumerate(out.records):
        t = by_index[i]
        assert rec.clock == "model"
        assert rec.ttft * 1e3 == pytest.approx(t["model_ttft_ms"], abs=1e-5)
        assert rec.tpot is not None and rec.tpot * 1e3 == pytest.approx(t["model_tpot_ms"], abs=1e-5)
        assert rec.latency * 1e3 == pytest.approx(t["model_e2el_ms"], abs=1e-5)
        assert rec.wall_chunk_times is not None
        assert len(rec.wall_chunk_times) == len(rec.chunk_times) == wl.output_len


@needs_quiet_host
@pytest.mark.parametrize("rate", [32.0, math.inf], ids=["qps32", "qpsinf"])
def test_modelled_clock_wall_view_follows_the_stamps(llama_scaled: RunningEngine, rate: float) -> None:
    """The wall clock saw the model's timing divided by the time scale.

    The client's wall-clock TTFT and TPOT medians are within 5% of the stamps' medians divided by
    ``SCALE``, the bound of the real-time test above (same workload; at 2x the client's few ms of
    overhead weigh twice as much). Timed in real time, so on a quiet host only.
    """
    _, out, _ = run_modelled(llama_scaled, rate)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    wall_ttft = med([(r.wall_chunk_times[0] - r.wall_start) * 1e3 for r in out.records])  # type: ignore[index,operator]
    wall_tpot = med([(r.wall_chunk_times[-1] - r.wall_chunk_times[0]) / (r.output_tokens - 1) * 1e3  # type: ignore[index]
                     for r in out.records])
    model_ttft = med([r.ttft * 1e3 for r in out.records]) / SCALE
    model_tpot = med([r.tpot * 1e3 for r in out.records if r.tpot is not None]) / SCALE
    err_ttft = (wall_ttft - model_ttft) / model_ttft
    err_tpot = (wall_tpot - model_tpot) / model_tpot
    msg = (f"rate={rate} at {SCALE:g}x: wall TTFT {wall_ttft:.2f} ms vs stamps/{SCALE:g} {model_ttft:.2f} ms "
           f"({err_ttft:+.2%}); wall TPOT {wall_tpot:.3f} ms vs {model_tpot:.3f} ms ({err_tpot:+.2%})")
    print(msg)
    assert abs(err_ttft) < TOLERANCE, msg
    assert abs(err_tpot) < TOLERANCE, msg
