"""The sim timed like a real engine (sim option ``clock=wall``): the gate, the A/B and a shard on the
wall-clock path that vLLM and TensorRT-LLM take (pytester).

Everywhere else the plugin's tests time the sim by its modelled clock, so the client's wall-clock
path (send instants, chunk read times, ``RequestRecord.clock == "wall"``) would otherwise only run
against real engines. Here the sim paces in real time (``--mgpu-sim-time-scale 1``) and declines
announced schedules, and ``mgpu_bench`` times it by the client's own clock.

Tolerances come from the measured wall-clock noise of this workload: ``python benchmarks/sim_noise.py
--clock wall --noise 0 --gpu v100-16gb --tp 2 --requests 48 --rate 48 --input-len 64 --output-len 16
--warmup 2 --repeats 8`` on the 2-core dev machine at load average 3.1 gave a per-repeat log sigma
of 0.4% for output tok/s per GPU, 1.9% for TPOT p50 and 4.5% for TTFT p50 (robust 5.7%). The median of
3 repeats against another such median then moves by about 1.2 x sigma x sqrt(2/3): 0.4%, 1.9% and
5.6% at one sigma; the tolerances below are about 3 sigma of that (5%, 10%, 20%), so an unchanged
sim PASSes on these metrics. The p99 metrics are warn-only and may WARN on a busy host; they never
fail a run. A caused regression (``speed=0.5``: every step twice as long) is far beyond all of it.
"""

from __future__ import annotations

import json
import re

import pytest

from pytest_mgpu.cli import main as cli

pytest_plugins = ["pytester"]

WALL = ["--mgpu-engine", "sim", "-p", "no:cacheprovider", "--mgpu-engine-opt", "clock=wall",
        "--mgpu-sim-time-scale", "1", "--mgpu-repeats", "3", "--mgpu-json-records"]
TOL = ["--mgpu-tolerance", "tpot_p50=10%", "--mgpu-tolerance", "ttft_p50=20%"]
GATED = ("output_throughput_per_gpu", "ttft_p50", "tpot_p50")

TEST = """
import pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=48, request_rate=48.0, warmup_requests=2)
"""


def wall_records(doc: dict) -> list[dict]:
    """Every request record of every result, after checking that each was timed by the wall clock."""
    recs = [rec for r in doc["results"] for rep in r["repeats"] for rec in rep["records"]]
    assert recs and {rec["clock"] for rec in recs} == {"wall"}
    assert all(rec["wall_start"] is None for rec in recs)  # no modelled view beside it: a real engine's path
    return recs


def gated_verdicts(doc: dict) -> dict[str, set[str]]:
    """Per gated metric, the verdicts it got over the comparisons of ``doc``."""
    out: dict[str, set[str]] = {m: set() for m in GATED}
    for c in doc["comparisons"]:
        for m in c["metrics"]:
            if m["metric"] in out:
                out[m["metric"]].add(m["verdict"])
    return out


def test_gate_on_the_wall_clock_passes_unchanged_and_fails_a_caused_regression(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    k = ["-k", "tp2"]
    pytester.runpytest(*WALL, *k, "--mgpu-update-baselines").assert_outcomes(passed=1)
    out = pytester.path / "r.json"
    r = pytester.runpytest(*WALL, *TOL, *k, f"--mgpu-json={out}")
    r.assert_outcomes(passed=1)
    doc = json.loads(out.read_text())
    wall_records(doc)
    assert gated_verdicts(doc) == {m: {"PASS"} for m in GATED}, r.stdout.str()
    assert "FAIL" not in r.stdout.str()
    # Twice as slow: FAIL, confirmed by a re-measurement, on the throughput and TPOT.
    r = pytester.runpytest(*WALL, *TOL, *k, "--mgpu-engine-opt", "speed=0.5", f"--mgpu-json={out}")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*tpot_p50 is *% higher (worse) than the baseline: * -> *, beyond the tolerance of 10%*"])
    r.stdout.fnmatch_lines(["*confirmed by a re-measurement*"])
    doc = json.loads(out.read_text())
    wall_records(doc)
    v = gated_verdicts(doc)
    assert v["tpot_p50"] == {"FAIL"} and v["output_throughput_per_gpu"] == {"FAIL"}


AB_TOL = 'pytest.mark.perf_tolerance(output_throughput_per_gpu="10%", tpot_p50="10%", ttft_p50="20%")'


def test_ab_on_the_wall_clock_passes_unchanged_and_fails_a_slower_new_side(pytester: pytest.Pytester) -> None:
    import sys

    pytester.makepyfile(test_ab=TEST.replace('@pytest.mark.layout(tp=1)\n', f"@{AB_TOL}\n"))
    ab = [*WALL, f"--mgpu-ab={sys.executable}"]
    out = pytester.path / "ab.json"
    r = pytester.runpytest(*ab, f"--mgpu-json={out}")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["mgpu A/B: 1 passed; 1 verdicts, *"])
    doc = json.loads(out.read_text())
    wall_records(doc)
    assert doc["results"][0]["ab"]["verdict"] == "PASS"
    r = pytester.runpytest(*ab, "--mgpu-engine-opt", "speed=0.5", "--mgpu-ab-opt", "speed=1.0", f"--mgpu-json={out}")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["FAIL: test_serve[[]tp2-pp1[]]::in64-out16-n48-qps48-text (sim * -> *, * rounds)"])
    doc = json.loads(out.read_text())
    wall_records(doc)
    ab_doc = doc["results"][0]["ab"]
    assert ab_doc["verdict"] == "FAIL"
    assert {m["metric"] for m in ab_doc["metrics"] if m["verdict"] == "FAIL"} >= {"tpot_p50", "output_throughput_per_gpu"}


def test_shards_on_the_wall_clock_merge_into_one_passing_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    pytester.runpytest(*WALL, "--mgpu-update-baselines").assert_outcomes(passed=2)
    files = []
    for i in (1, 2):
        out = pytester.path / f"shard-{i}.json"
        r = pytester.runpytest(*WALL, *TOL, "--mgpu-shard", f"{i}/2", f"--mgpu-json={out}")
        r.assert_outcomes(passed=1)  # one layout (one engine) per shard
        r.stdout.fnmatch_lines([f"mgpu shard {i}/2: 1 of 2 items, 1 engine group(s), *"])
        wall_records(json.loads(out.read_text()))
        files.append(out)
    merged = pytester.path / "merged.json"
    assert cli(["merge", *map(str, files), "--json", str(merged)]) == 0
    doc = json.loads(merged.read_text())
    assert sorted(re.search(r"\[(.*)\]", r["entry_id"]).group(1) for r in doc["results"]) == ["tp1-pp1", "tp2-pp1"]  # type: ignore[union-attr]
    assert gated_verdicts(doc) == {m: {"PASS"} for m in GATED}
    assert [s["shard"] for s in doc["env"]["shards"]] == ["1/2", "2/2"]
