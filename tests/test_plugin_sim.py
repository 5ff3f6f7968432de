"""The whole plugin through pytester on the sim engine: measurement, reuse, teardown, gate lifecycle."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# Small, fast workloads: llama-2-7b on the h100 profile runs a 32-request batch in well under a second.
SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider"]

PERF_TEST = """
import math, os, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench, mgpu_engine):
    r = mgpu_bench.run(input_len=64, output_len=16, num_requests=32, request_rate=math.inf, warmup_requests=2)
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{mgpu_engine.layout.id} {mgpu_engine.pid}\\n")
"""


def _pids(path: Path) -> list[tuple[str, int]]:
    return [(a, int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pid_log(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = pytester.path / "pids.txt"
    monkeypatch.setenv("PID_LOG", str(path))
    return path


def test_end_to_end_measures_normalises_and_reports(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    out = pytester.path / "results.json"
    result = pytester.runpytest(*SIM, "--mgpu-repeats", "2", "--mgpu-json", str(out))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*mgpu results*",
            "result*engine*version*layout*GPUs*out tok/s*tok/s/GPU*TTFT p50 ms*TTFT p99 ms*TPOT p50 ms*TPOT p99 ms*",
            "test_serve[[]tp1-pp1[]]::in64-out16-n32-qpsinf*sim*tp1-pp1*1*ok",
            "test_serve[[]tp2-pp1[]]::in64-out16-n32-qpsinf*sim*tp2-pp1*2*ok",
            "*the seed's table*",
            "*tp1-pp1*(ref)*",
            "*tp2-pp1*%*",
            "*NEW*",
            "*no baseline for sim-h100-80gb-x4",
            "mgpu gate: 2 new",
            "to record the new results as baselines from this run (no re-run needed):",
            "  pytest-mgpu accept .mgpu/results-*.json",
        ]
    )
    assert "--mgpu-update-baselines" not in result.stdout.str()
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 2 and doc["fingerprint"] == "sim-h100-80gb-x4"
    by_layout = {r["layout"]["tp"]: r for r in doc["results"]}
    for tp, r in by_layout.items():
        assert r["valid"] and len(r["repeats"]) == 2
        m = r["median"]
        assert m["completed"] == 32 and m["total_output_tokens"] == 32 * 16
        assert m["output_throughput_per_gpu"] == pytest.approx(m["output_throughput"] / tp)
    assert doc["env"]["plugin_version"] and doc["env"]["metric_definition_version"] == 1


def test_engine_started_once_per_key_and_nothing_left_behind(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(
        test_perf=PERF_TEST
        + """
@pytest.mark.layout(tp=1)
def test_again(mgpu_engine):
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{mgpu_engine.layout.id} {mgpu_engine.pid}\\n")
"""
    )
    result = pytester.runpytest(*SIM, "--mgpu-repeats", "1")
    result.assert_outcomes(passed=3)
    pids = _pids(pid_log)
    by_layout: dict[str, set[int]] = {}
    for lay, pid in pids:
        by_layout.setdefault(lay, set()).add(pid)
    assert {k: len(v) for k, v in by_layout.items()} == {"tp1-pp1": 1, "tp2-pp1": 1}
    assert [lay for lay, _ in pids] == ["tp1-pp1", "tp1-pp1", "tp2-pp1"]  # grouped by engine key
    assert not [pid for _, pid in pids if _alive(pid)]


def test_engine_that_fails_to_start_shows_its_log_and_fails_fast(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-engine-opt", "fail_start=1", "--mgpu-repeats", "1")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*sim exited with code 1 before it became ready (tp1-pp1)*", "*--- last 30 lines of *.log ---*"])
    result.stdout.fnmatch_lines(["*sim exited with code 1 before it became ready (tp2-pp1)*"])


def test_engine_crash_mid_run_errors_with_log_tail(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-engine-opt", "crash_after=10", "--mgpu-repeats", "1", "-k", "tp1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*sim (tp1-pp1) died during the workload in64-out16-n32-qpsinf*", "*--- last 30 lines of*"])


def test_hung_engine_times_out_invalid_and_is_killed(pytester: pytest.Pytester, pid_log: Path) -> None:
    """A sim that stops answering mid-run (requests, its schedule, its close): INVALID within the timeout
    plus a few seconds (the engine's start and its kill included), every time."""
    import time

    pytester.makepyfile(test_perf=PERF_TEST)
    t = time.monotonic()
    result = pytester.runpytest(
        *SIM, "--mgpu-engine-opt", "hang_after=10", "--mgpu-repeats", "1", "--mgpu-request-timeout", "3", "-k", "tp1"
    )
    took = time.monotonic() - t
    result.assert_outcomes(failed=1)
    assert took < 3 + 10, f"a 3 s request timeout took {took:.1f} s to end the run"
    result.stdout.fnmatch_lines(["*INVALID test_serve[[]tp1-pp1[]]::in64-out16-n32-qpsinf-text: repeat 1/1: * failed (first: timeout after 3*"])
    assert not [pid for _, pid in _pids(pid_log) if _alive(pid)]


#: Poisson arrivals on the v100 profile: TTFT and TPOT are tens of ms and stable run to run (at
#: rate inf a 32-request batch makes the TTFT median jump between prefill waves).
GATE_TEST = """
import pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=48, request_rate=48.0, warmup_requests=2)
"""


def test_gate_lifecycle_new_update_pass_fail_improved_invalid(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=GATE_TEST)
    args = ["--mgpu-engine", "sim", "-p", "no:cacheprovider"]
    # 1. no baseline -> NEW (passes, but is reported)
    r = pytester.runpytest(*args)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*NEW*", "mgpu gate: 1 new", "  pytest-mgpu accept .mgpu/results-*.json"])
    # 2. update -> written, atomically and diff-friendly
    r = pytester.runpytest(*args, "--mgpu-update-baselines")
    r.assert_outcomes(passed=1)
    path = pytester.path / "baselines" / "sim-v100-16gb-x4" / "test_perf.py.json"
    text = path.read_text()
    assert text.endswith("\n") and "test_serve[tp2-pp1]::in64-out16-n48-qps48-text" in json.loads(text)["entries"]
    r.stdout.fnmatch_lines(["recorded 1 baseline entry under */baselines/sim-v100-16gb-x4 (keeping the last 5 *"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # 3. same engine -> PASS (-v: the per-metric table of a PASS too)
    r = pytester.runpytest(*args, "-v")
    r.assert_outcomes(passed=1)
    # Every metric PASS: the sim is timed by its modelled clock, and at noise=0 an unchanged sim measures
    # the same numbers (benchmarks/sim_noise.py --clock model: sigma 0.0000).
    r.stdout.re_match_lines([r".*output_throughput_per_gpu\*? .* \+?-?0\.0% .* PASS$", r".*tpot_p50\*? .* PASS$"])
    r.stdout.fnmatch_lines(["mgpu gate: 1 passed"])
    assert not re.search(r"\b(FAIL|WARN|IMPROVED)\b", r.stdout.str())
    # 4. 20% slower -> FAIL naming the metric, the delta and the tolerance, confirmed
    r = pytester.runpytest(*args, "--mgpu-engine-opt", "speed=0.8")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(
        ["*tpot_p50 is *% higher (worse) than the baseline: * -> *, beyond the tolerance of 5%*"]
    )
    r.stdout.fnmatch_lines(["*confirmed by a re-measurement*"])
    assert path.read_text() == text  # a failing run never touches the baseline
    # 5. 25% faster against one recording -> PASS, saying it is not judged an improvement (the spread
    # between engine starts is unknown; tests/test_improved_plugin.py: with two recordings it is IMPROVED)
    r = pytester.runpytest(*args, "--mgpu-engine-opt", "speed=1.25")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*PASS*", "  note: *tpot_p50 better by *: not judged an improvement: the baseline has "
                            "one recording*", "mgpu gate: 1 passed"])
    assert "IMPROVED" not in r.stdout.str()
    # 6. a run that returns too few tokens -> INVALID, never FAIL
    r = pytester.runpytest(*args, "--mgpu-engine-opt", "short_tokens=8")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*INVALID test_serve[[]tp2-pp1[]]*returned [[]8[]] output tokens, expected exactly 16*"])
    r.stdout.fnmatch_lines(["mgpu gate: 1 invalid"])
    assert "FAIL:" not in r.stdout.str()


def test_strict_fails_on_missing_baseline(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    r = pytester.runpytest(*SIM, "-k", "tp1", "--mgpu-repeats", "1", "--mgpu-strict")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*NEW test_serve[[]tp1-pp1[]]*: no baseline for sim-h100-80gb-x4 (--mgpu-strict fails on NEW too)"])


def test_baseline_from_other_hardware_is_never_used(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest(*SIM, "-k", "tp1", "--mgpu-repeats", "1", "--mgpu-update-baselines").assert_outcomes(passed=1)
    r = pytester.runpytest("--mgpu-engine", "sim", "--mgpu-sim-gpu", "a100-80gb", "-k", "tp1", "--mgpu-repeats", "1")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*no baseline for sim-a100-80gb-x4; have: sim-h100-80gb-x4*"])


def test_broken_baseline_is_a_clear_error_and_left_alone(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    path = pytester.path / "baselines" / "sim-h100-80gb-x4" / "test_perf.py.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "entries": {')
    r = pytester.runpytest(*SIM, "-k", "tp1", "--mgpu-repeats", "1", "--mgpu-update-baselines")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([f"*{path}*"])
    assert path.read_text() == '{"schema_version": 1, "entries": {'


def test_perf_tolerance_marker_is_validated(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(
        test_perf="""
import pytest

@pytest.mark.perf_tolerance(tpot_p50="lots")
@pytest.mark.model("llama-2-7b")
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=16, output_len=4, num_requests=4, request_rate=float("inf"), warmup_requests=0)
"""
    )
    r = pytester.runpytest(*SIM, "--mgpu-repeats", "1")
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines(["*ERROR at setup of test_serve*", "*test_serve: perf_tolerance: *lots*"])


def test_junit_xml_gets_key_metrics(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    xml = pytester.path / "junit.xml"
    pytester.runpytest(*SIM, "-k", "tp1", "--mgpu-repeats", "1", f"--junitxml={xml}").assert_outcomes(passed=1)
    text = xml.read_text()
    assert 'name="mgpu.in64-out16-n32-qpsinf-text.output_throughput_per_gpu"' in text
    assert 'name="mgpu.in64-out16-n32-qpsinf-text.tpot_p50"' in text


def test_markdown_and_benchmark_exports(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest(*SIM, "-k", "tp1", "--mgpu-repeats", "1", "--mgpu-update-baselines").assert_outcomes(passed=1)
    md, bj = pytester.path / "report.md", pytester.path / "bench.json"
    r = pytester.runpytest(
        *SIM, "--mgpu-repeats", "2", "--mgpu-engine-opt", "speed=0.5", "--mgpu-no-confirm",
        f"--mgpu-report-md={md}", f"--mgpu-benchmark-json={bj}",
    )
    r.assert_outcomes(failed=1, passed=1)  # tp1 regressed 2x; tp2 has no baseline
    text = md.read_text()
    assert text.index("FAIL") < text.index("NEW")  # regressions first
    assert "test_serve[tp1-pp1]::in64-out16-n32-qpsinf" in text
    doc = json.loads(bj.read_text())
    names = [b["name"] for b in doc["benchmarks"]]
    assert len(names) == 2 and all("test_serve" in n for n in names)
    assert {"machine_info", "commit_info", "datetime", "version"} <= set(doc)


def test_sigterm_to_pytest_still_stops_the_engine(pytester: pytest.Pytester, pid_log: Path) -> None:
    """A CI runner's SIGTERM (or `timeout`) reaches pytest, not the engine's own process group."""
    import signal
    import subprocess
    import sys
    import time

    pytester.makepyfile(
        test_hang="""
import os, time, pytest

@pytest.mark.model("llama-2-7b")
def test_slow(mgpu_engine):
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{mgpu_engine.layout.id} {mgpu_engine.pid}\\n")
    time.sleep(120)
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mgpu-engine", "sim", str(pytester.path)],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not pid_log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_log.exists(), "the inner test never started its engine"
    (_, engine_pid), = _pids(pid_log)
    assert _alive(engine_pid)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    deadline = time.monotonic() + 10
    while _alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(engine_pid)


def test_missing_engine_stops_the_run_with_install_hint(pytester: pytest.Pytester, pid_log: Path) -> None:
    """TensorRT-LLM is not installed here: the run stops before any test, never green with nothing measured."""
    pytester.makepyfile(test_perf=PERF_TEST)
    r = pytester.runpytest("--mgpu-engine", "trtllm", "-p", "no:cacheprovider", "-rs", "-k", "tp1")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["ERROR: --mgpu-engine trtllm cannot run: *pip install tensorrt-llm*--mgpu-engine-python*"])
