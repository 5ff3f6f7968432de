"""The sim's results do not depend on when the host got round to running the server or the client.

A busy host (another job on the machine) delays the sim server's writes and the client's reads
and sends. Before the modelled clock, the sim restarted its clock whenever it lagged by more
than 2 ms and the client timed chunks by the wall clock, so a busy host became a "regression"
(issue 10: two confirmed FAILs on an unchanged checkout). These tests inject the lag
deterministically (the sim's ``host_lag_ms``/``host_lag_every`` fault blocks the server's event
loop; a patched client sends requests late) and check that the measured numbers do not move.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_mgpu.engines.base import EngineSpec, RunningEngine
from pytest_mgpu.engines.sim import SimAdapter
from pytest_mgpu.gpus import GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure import client
from pytest_mgpu.measure.metrics import RequestRecord, invalid_reason, summarize
from pytest_mgpu.measure.workload import Workload
from pytest_mgpu.models import resolve_model
from pytest_mgpu.sim.model import PerfModel, SimOptions, load_shape
from pytest_mgpu.sim.scheduler import simulate

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "-p", "no:cacheprovider", "--mgpu-repeats", "2"]

PERF_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=128, output_len=32, num_requests=32, request_rate=math.inf, warmup_requests=2)
    mgpu_bench.run(input_len=128, output_len=32, num_requests=32, request_rate=64.0, warmup_requests=2)
"""

GATED = ("output_throughput_per_gpu", "ttft_p50", "tpot_p50", "tpot_p99", "itl_p50", "e2el_p50")


def _medians(path: Path) -> dict[str, dict[str, float]]:
    data = json.loads(path.read_text())
    return {r["entry_id"]: r["median"] for r in data["results"]}


def test_busy_host_does_not_move_the_numbers_or_the_verdict(pytester: pytest.Pytester) -> None:
    """Record on a quiet server, re-run with the server blocked 40 ms every 3rd step: same numbers, PASS."""
    pytester.makepyfile(test_perf=PERF_TEST)
    quiet, busy = pytester.path / "quiet.json", pytester.path / "busy.json"
    rec = pytester.runpytest(*SIM, "--mgpu-update-baselines", "--mgpu-json", str(quiet))
    rec.assert_outcomes(passed=1)
    run = pytester.runpytest(*SIM, "--mgpu-json", str(busy), "--mgpu-engine-opt", "host_lag_ms=40",
                             "--mgpu-engine-opt", "host_lag_every=3")
    a, b = _medians(quiet), _medians(busy)
    assert a.keys() == b.keys() and len(a) == 2
    for entry in a:
        for m in GATED:
            assert b[entry][m] == pytest.approx(a[entry][m], rel=1e-6), (entry, m, a[entry][m], b[entry][m])
    run.assert_outcomes(passed=1)
    out = run.stdout.str()
    assert " FAIL " not in out and " WARN " not in out, out


# --- the client and the server directly ----------------------------------------------------------

LLAMA = resolve_model("llama-2-7b")


def start_sim(tmp: Path, layout: Layout, **options: str) -> RunningEngine:
    spec = EngineSpec("sim", LLAMA, layout, options=tuple(sorted(options.items())), python=sys.executable)
    return SimAdapter().start(spec, GpuInventory(), [], tmp, start_timeout_s=30)


@pytest.fixture(scope="module")
def sim_tp2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = start_sim(tmp_path_factory.mktemp("sim-clock"), Layout(tp=2), time_scale="20")
    yield eng
    SimAdapter().stop(eng)


def measure(eng: RunningEngine, wl: Workload) -> tuple[dict[str, float], list[RequestRecord]]:
    out = client.run_workload(eng.base_url, "llama-2-7b", wl, timeout_s=120, sim_clock=True)
    assert out.meta["clock"] == "model"
    assert invalid_reason(out.records, wl.num_requests, wl.output_len) is None
    return summarize(out.records, eng.num_gpus, out.dispatch_start), out.records


def assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    for m in ("output_throughput_per_gpu", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "e2el_p99",
              "duration_s"):
        assert b[m] == pytest.approx(a[m], rel=1e-9), (m, a[m], b[m])


@pytest.mark.parametrize("rate", [math.inf, 48.0], ids=["qpsinf", "qps48"])
def test_late_client_sends_do_not_move_the_numbers(sim_tp2: RunningEngine, rate: float,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other request leaves the client 60 ms late (a busy client host): the sim waits for it."""
    wl = Workload(input_len=128, output_len=32, num_requests=24, request_rate=rate, warmup_requests=2)
    on_time, _ = measure(sim_tp2, wl)
    original = client._one_request

    async def late(*args: object, **kwargs: object) -> None:
        if int(args[6]) % 2:  # type: ignore[call-overload]
            await asyncio.sleep(0.06)
        await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_one_request", late)
    delayed, _ = measure(sim_tp2, wl)
    assert_same(on_time, delayed)


def test_slow_client_reads_do_not_move_the_numbers(sim_tp2: RunningEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reads every response 40 ms late; with max_concurrency the next send waits on it too."""
    wl = Workload(input_len=128, output_len=16, num_requests=12, request_rate=math.inf, max_concurrency=3,
                  warmup_requests=0)
    on_time, _ = measure(sim_tp2, wl)
    original = client._consume

    async def slow(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(0.04)
        await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_consume", slow)
    delayed, _ = measure(sim_tp2, wl)
    assert_same(on_time, delayed)


def test_max_concurrency_holds_in_modelled_time(sim_tp2: RunningEngine) -> None:
    """At most c requests in flight on the modelled clock; a waiting request starts when a slot frees."""
    wl = Workload(input_len=128, output_len=16, num_requests=20, request_rate=math.inf, max_concurrency=4,
                  warmup_requests=0)
    _, recs = measure(sim_tp2, wl)
    events = sorted([(r.start, 1) for r in recs] + [(r.end, -1) for r in recs], key=lambda e: (e[0], e[1]))
    in_flight = peak = 0
    for _, d in events:
        in_flight += d
        peak = max(peak, in_flight)
    assert peak == 4
    ends = sorted(r.end for r in recs)
    # vLLM's semaphore: request k (k >= c) starts when the (k - c + 1)-th earlier request finished.
    for k, r in enumerate(recs):
        assert r.start == pytest.approx(0.0 if k < 4 else ends[k - 4], abs=1e-9), k


def test_single_stream_matches_the_offline_model(sim_tp2: RunningEngine) -> None:
    """max_concurrency=1: each request runs alone, exactly as the offline scheduler predicts one request."""
    wl = Workload(input_len=128, output_len=32, num_requests=5, request_rate=math.inf, max_concurrency=1,
                  warmup_requests=1)
    _, recs = measure(sim_tp2, wl)
    alone = simulate(PerfModel(load_shape(LLAMA.path), 2, 1, None, SimOptions()), [0.0], 128, 32)[0]
    for prev, r in zip(recs, recs[1:]):
        assert r.start == pytest.approx(prev.end, abs=1e-9)
    for r in recs:  # stamps carry 9 decimals: 1 ns, so each difference is good to 2 ns
        assert r.ttft == pytest.approx(alone.ttft, abs=2e-9)
        assert r.tpot == pytest.approx(alone.tpot, abs=2e-9)


def test_numbers_do_not_depend_on_the_time_scale(tmp_path: Path, sim_tp2: RunningEngine) -> None:
    """The same workload on a sim paced 3x and one unpaced: the same numbers as at 20x."""
    wl = Workload(input_len=128, output_len=16, num_requests=16, request_rate=64.0, warmup_requests=2)
    ref, _ = measure(sim_tp2, wl)
    for scale in ("3", "inf"):
        eng = start_sim(tmp_path, Layout(tp=2), time_scale=scale)
        try:
            got, _ = measure(eng, wl)
        finally:
            SimAdapter().stop(eng)
        assert_same(ref, got)


def test_stamps_survive_a_read_that_ends_between_an_events_newlines() -> None:
    """Found by the perf suite: a read ending in ``}\\n`` emits the event early, the next starts with ``\\n``."""
    ev = b'data: {"mgpu_t":1.500000000,"mgpu_a":0.250000000,"id":"cmpl-1","choices":[{"index":0,"text":" t1"}]}'
    stream = client.SSEStream()
    first = stream.feed(ev + b"\n")
    second = stream.feed(b"\n" + ev.replace(b"1.5000", b"1.7500").replace(b'"mgpu_a":0.250000000,', b"") + b"\n\n")
    assert len(first) == 1 and len(second) == 1 and second[0].startswith(b"\n")
    assert client.parse_stamps(first[0]) == (1.5, 0.25)
    assert client.parse_stamps(second[0]) == (1.75, None)
    with pytest.raises(client.SSEParseError, match="without a modelled time stamp"):
        client.parse_stamps(b'data: {"id":"x","choices":[]}')
    with pytest.raises(client.SSEParseError, match="malformed"):
        client.parse_stamps(b'data: {"mgpu_t":1.2.3,"id":"x"}')


def test_time_scale_is_part_of_a_results_identity(pytester: pytest.Pytester) -> None:
    """A baseline recorded at one time scale is not silently compared with a run at another (issue 10)."""
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest(*SIM, "--mgpu-update-baselines").assert_outcomes(passed=1)
    again = pytester.runpytest(*SIM, "--mgpu-sim-time-scale", "20")
    out = again.stdout.str()
    assert "MISMATCH" in out and "time-scale" in out, out
    same = pytester.runpytest(*SIM, "--mgpu-sim-time-scale", "50")
    same.assert_outcomes(passed=1)
    assert "MISMATCH" not in same.stdout.str()
