"""The gate through pytester on the sim engine: identity, corrupt numbers, one failure rule, one set of
numbers, what was running, history and ``accept``, exports and file modes (issue 8, issue 9 part 1)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_mgpu.cli import main as cli

pytest_plugins = ["pytester"]

#: The sim on the h100 profile: a 16-request batch of tiny-llama or llama-2-7b runs in well under a second.
SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "2"]
FP = "sim-h100-80gb-x4"
#: No widened tolerances: mgpu_bench times the sim by its modelled clock, and at the sim's default
#: noise=0 its gated metrics repeat exactly (`python benchmarks/sim_noise.py --clock model`: observed
#: sigma 0.0000 over 8 repeats, on the 2-core dev machine at load average 4.6), so an unchanged sim
#: is PASS at the default 5%.

#: One layout, no model mark: --mgpu-model decides.
ONE = """
import math, pytest

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""

#: Poisson arrivals: TTFT and TPOT are stable run to run (see test_plugin_sim.GATE_TEST).
STEADY = """
import pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=48, request_rate=48.0, warmup_requests=2)
"""
STEADY_ARGS = ["--mgpu-engine", "sim", "-p", "no:cacheprovider"]
STEADY_FP = "sim-v100-16gb-x4"


def baseline_doc(pytester: pytest.Pytester, fp: str = FP, module: str = "test_perf.py") -> dict[str, Any]:
    """The decoded baseline file of ``module``."""
    return json.loads((pytester.path / "baselines" / fp / f"{module}.json").read_text())


def latest_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """The metrics dict of an entry's latest recording, in either file format (1: flat, 2: recordings)."""
    return entry["recordings"][-1]["metrics"] if "recordings" in entry else entry["metrics"]


def set_samples(entry: dict[str, Any], metric: str, samples: Any) -> None:
    """Put ``samples`` as ``metric``'s samples into an entry of either file format."""
    metrics = latest_metrics(entry)
    if "recordings" in entry:
        metrics[metric] = samples
    else:
        metrics[metric] = {"samples": samples, "median": 1.0, "noise": 0.0}


def edit_baseline(pytester: pytest.Pytester, edit: Callable[[dict[str, Any]], None], fp: str = FP) -> Path:
    """Apply ``edit`` to the decoded baseline file of test_perf.py and write it back (NaN allowed)."""
    path = pytester.path / "baselines" / fp / "test_perf.py.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))
    return path


def esc(text: str) -> str:
    """``text`` for fnmatch: brackets matched literally."""
    return "".join("[[]" if ch == "[" else "[]]" if ch == "]" else ch for ch in text)


def gate_rows(stdout: str) -> dict[str, dict[str, list[str]]]:
    """The gate table as {entry id: {metric: cells}} (cells: name, baseline, now, delta, noise, tol, verdict)."""
    out: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 2 and "::" in cells[0] and not line.startswith(" "):
            current = out.setdefault(cells[0], {})
        elif current is not None and line.startswith("  ") and len(cells) == 7:
            current[cells[0].rstrip("*")] = cells
    return out


def number(cell: str) -> float:
    """A table cell's number (thousands separators removed)."""
    return float(cell.replace(",", ""))


def gate_row(stdout: str, metric: str) -> list[str]:
    """The cells of the gate table's row for ``metric`` (name, baseline, now, delta, noise, tol, verdict)."""
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0].rstrip("*") == metric:
            return cells
    raise AssertionError(f"no gate row for {metric}:\n{stdout}")


# --- identity --------------------------------------------------------------------------------


def test_model_is_part_of_identity(pytester: pytest.Pytester) -> None:
    """Issue 8: a baseline of tiny-llama used to FAIL a llama-2-7b run at -44% tok/s/GPU, naming no model."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    r = pytester.runpytest(*SIM, "--mgpu-model", "llama-2-7b")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "test_serve[[]tp1-pp1[]]::in32-out8-n16-qpsinf-text  MISMATCH",
        "*note: baseline is for model tiny-llama; this run: llama-2-7b; not compared",
        "mgpu gate: 1 mismatched",
        "*pytest-mgpu accept .mgpu/results-*.json",
    ])
    assert "FAIL" not in r.stdout.str()
    strict = pytester.runpytest(*SIM, "--mgpu-model", "llama-2-7b", "--mgpu-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*MISMATCH test_serve*baseline is for model tiny-llama*(--mgpu-strict fails on MISMATCH too)"])
    # The same model again is compared as before.
    same = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "-v")  # -v: a PASS's context line
    assert "MISMATCH" not in same.stdout.str() and "noise from the repeats" in same.stdout.str()


def test_same_test_name_in_two_classes_gets_two_entries(pytester: pytest.Pytester) -> None:
    """Issue 8: TestFast::test_serve and TestSlow::test_serve shared one entry and were compared with each other."""
    pytester.makepyfile(test_perf="""
import math, pytest

class TestFast:
    @pytest.mark.engine_opts(speed=4.0)
    @pytest.mark.layout(tp=1)
    def test_serve(self, mgpu_bench):
        mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)

class TestSlow:
    @pytest.mark.engine_opts(speed=0.25)
    @pytest.mark.layout(tp=1)
    def test_serve(self, mgpu_bench):
        mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
""")
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["recorded 2 baseline entries under*"])
    entries = baseline_doc(pytester)["entries"]
    assert sorted(entries) == [
        "TestFast::test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text",
        "TestSlow::test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text",
    ]
    again = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "-v")  # -v: a PASS's metric table
    again.assert_outcomes(passed=2)
    # Each class is compared with its own numbers: the two baselines are far apart, as the engines (16x).
    rows = gate_rows(again.stdout.str())
    fast = number(rows["TestFast::test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text"]["tpot_p50"][1])
    slow = number(rows["TestSlow::test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text"]["tpot_p50"][1])
    assert slow > 3 * fast, (fast, slow)


# --- corrupt numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corrupt", "why"),
    [
        (lambda e: set_samples(e, "tpot_p50", [float("nan"), float("nan")]), "not a finite number > 0"),
        (lambda e: set_samples(e, "output_throughput_per_gpu", []), "non-empty list"),
        (lambda e: set_samples(e, "ttft_p50", [-3.0, 4.0]), "not a finite number > 0"),
        (lambda e: latest_metrics(e).clear(), "'metrics' is empty"),
    ],
    ids=["nan", "empty", "negative", "no-metrics"],
)
def test_corrupt_numbers_are_a_broken_baseline(
    pytester: pytest.Pytester, corrupt: Callable[[dict[str, Any]], None], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8: NaN, [], negative samples or ``metrics: {}`` gave NEW and exit 0 in the plugin and in compare."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines", "--mgpu-json", "r.json")
    eid = "test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text"
    path = edit_baseline(pytester, lambda doc: corrupt(doc["entries"][eid]))
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([f"*baseline file {esc(str(path))}: broken entry '{esc(eid)}': *{why}*"])
    assert "NEW" not in r.stdout.str() and "During handling" not in r.stdout.str()
    capsys.readouterr()
    assert cli(["compare", str(path), str(pytester.path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and eid in err and why in err
    assert cli(["show", str(pytester.path / "baselines")]) == 2
    assert f"BROKEN: baseline file {path}: broken entry '{eid}'" in capsys.readouterr().out
    assert cli(["accept", str(pytester.path / "r.json"), "--baseline-dir", str(pytester.path / "baselines")]) == 2
    assert eid in capsys.readouterr().err


def test_invalid_says_what_was_invalid(pytester: pytest.Pytester) -> None:
    """Issue 8: "INVALID …: None" when the run had no usable value of a metric the baseline has."""
    pytester.makepyfile(test_perf="""
import math, pytest

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=1, num_requests=16, request_rate=math.inf, warmup_requests=1)
""")
    # One output token: TPOT and ITL are undefined (0); they are not recorded, and the rest is compared.
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    r.assert_outcomes(passed=1)
    assert "INVALID" not in r.stdout.str()
    # A baseline that has a TPOT the run cannot produce: INVALID, naming the metric and the numbers.
    edit_baseline(pytester, lambda doc: [set_samples(e, "tpot_p50", [5.0, 5.1]) for e in doc["entries"].values()])
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["INVALID test_serve[[]tp1-pp1[]]::in32-out1-n16-qpsinf-text: not comparable: tpot_p50: not positive "
                            "(baseline 5.05, this run 0)*"])
    assert ": None" not in r.stdout.str()


# --- what was running, one set of numbers ------------------------------------------------------


def test_reports_say_what_was_running_and_which_measurement(pytester: pytest.Pytester) -> None:
    """Issue 8: a FAIL with --mgpu-engine-opt speed=0.8 did not mention it; the table and the gate's "now" differed."""
    pytester.makepyfile(test_perf=STEADY)
    pytester.runpytest(*STEADY_ARGS, "--mgpu-update-baselines").assert_outcomes(passed=1)
    md, js = pytester.path / "report.md", pytester.path / "results.json"
    # A small k: the FAIL (2x slower) must be confirmed even when a busy machine widens the noise band.
    r = pytester.runpytest(*STEADY_ARGS, "--mgpu-engine-opt", "speed=0.5", "--mgpu-engine-opt", "noise=0.03",
                           "--mgpu-noise-k", "0.5", f"--mgpu-report-md={md}", f"--mgpu-json={js}")
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    # The FAIL message and the gate table name the options and how they differ from the baseline's.
    r.stdout.fnmatch_lines([
        "FAIL: test_serve[[]tp2-pp1[]]::in64-out16-n48-qps48-text",
        "  sim 0.1.0; engine options: gpu=v100-16gb, noise=0.03, speed=0.5, time_scale=50 (baseline: noise unset, speed unset); "
        "now = re-measurement (confirm step); noise from the repeats",
    ])
    # One set of numbers: the results table shows the measurement the verdict used, and says so.
    row = next(ln for ln in out.splitlines() if ln.startswith("test_serve[tp2-pp1]::") and "sim" in ln.split())
    assert row.endswith("ok, re-measured")
    table_per_gpu = row.split()[6]
    assert gate_row(out, "output_throughput_per_gpu")[2] == table_per_gpu
    doc = json.loads(js.read_text())
    (res,) = doc["results"]
    assert res["engine_options"] == {"gpu": "v100-16gb", "noise": "0.03", "speed": "0.5", "time_scale": "50"}
    assert res["measurement"] == "re-measurement" and len(res["first_measurement"]["repeats"]) == 3
    comp = res["comparison"]
    assert comp["verdict"] == "FAIL" and comp["measurement"] == "re-measurement"
    now = {m["metric"]: m["now"] for m in comp["metrics"]}
    assert now["output_throughput_per_gpu"] == pytest.approx(res["median"]["output_throughput_per_gpu"])
    assert comp["engine_options"]["speed"] == "0.5" and comp["base_engine_options"] == {"gpu": "v100-16gb", "time_scale": "50"}
    text = md.read_text()
    assert "speed=0.5" in text and "(baseline: noise unset, speed unset)" in text and "re-measurement" in text


def test_cli_judges_like_the_suite(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8: ``pytest-mgpu compare`` ignored perf_tolerance marks and FAILed where the suite passed."""
    pytester.makepyfile(test_perf=STEADY.replace(
        '@pytest.mark.layout(tp=2)',
        '@pytest.mark.layout(tp=2)\n@pytest.mark.perf_tolerance(output_throughput_per_gpu="45%", ttft_p50="80%", '
        'tpot_p50="45%", ttft_p99="80%", tpot_p99="80%")',
    ))
    pytester.runpytest(*STEADY_ARGS, "--mgpu-update-baselines").assert_outcomes(passed=1)
    js = pytester.path / "results.json"
    r = pytester.runpytest(*STEADY_ARGS, "--mgpu-engine-opt", "speed=0.8", f"--mgpu-json={js}")
    r.assert_outcomes(passed=1)
    base = pytester.path / "baselines" / STEADY_FP / "test_perf.py.json"
    capsys.readouterr()
    assert cli(["compare", str(base), str(js)]) == 0
    out = capsys.readouterr().out
    assert "gate settings: as recorded by the suite for 1 result(s)" in out and "45%" in out and "FAIL" not in out
    # The command line still overrides what was recorded: no tolerance and no noise band fail any slowdown.
    code = cli(["compare", str(base), str(js), "--tolerance", "tpot_p50=0%", "--noise-k", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "overridden on the command line: --tolerance tpot_p50=0% --noise-k 0.0" in out, out


# --- history and accept ----------------------------------------------------------------------


def test_history_accept_and_show(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 9 part 1: recordings are kept (ini N), their spread is the noise, accept records a finished run."""
    pytester.makepyfile(test_perf=ONE)
    pytester.makeini("[pytest]\nmgpu_baseline_history = 2\n")
    js = pytester.path / "r.json"
    for _ in range(3):
        pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    (entry,) = baseline_doc(pytester)["entries"].values()
    assert len(entry["recordings"]) == 2  # the ini's N
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", f"--mgpu-json={js}", "-v")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*; noise from 2 baseline recordings"])
    # show prints the history and the numbers the gate uses.
    capsys.readouterr()
    assert cli(["show", str(pytester.path / "baselines")]) == 0
    out = capsys.readouterr().out
    assert "gate baseline (geometric mean of 2 recordings, ± their spread): output_throughput_per_gpu=" in out
    assert len([ln for ln in out.splitlines() if re.match(r"\s+[12]\s+\d{4}-", ln)]) == 2
    # accept records the finished run without re-running it: a third recording would push out the first.
    first_date = entry["recordings"][0]["env"]["date"]
    last = pytester.path / ".mgpu" / "last-results.json"
    comparison = json.loads(last.read_text())["results"][0]["comparison"]
    assert comparison["verdict"] == "PASS" and comparison["metrics"][0]["noise_source"] == "2 recordings"
    assert cli(["accept", str(last), "--baseline-dir", str(pytester.path / "baselines"), "--history", "2"]) == 0
    assert "recorded 1 entry" in capsys.readouterr().out
    (entry2,) = baseline_doc(pytester)["entries"].values()
    assert len(entry2["recordings"]) == 2 and entry2["recordings"][-1]["env"]["date"] >= first_date
    assert entry2["recordings"][0] == entry["recordings"][1]
    # --only: nothing of this run was NEW.
    assert cli(["accept", str(last), "--baseline-dir", str(pytester.path / "baselines"), "--only", "new"]) == 0
    assert "recorded 0 result(s)" in capsys.readouterr().out


def test_accept_skips_invalid_like_update(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """The same checks as --mgpu-update-baselines: an invalid result is skipped and said so."""
    pytester.makepyfile(test_perf=ONE)
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-engine-opt", "short_tokens=4")
    r.assert_outcomes(failed=1)
    capsys.readouterr()
    assert cli(["accept", str(pytester.path / ".mgpu" / "last-results.json"),
                "--baseline-dir", str(pytester.path / "baselines")]) == 0
    out = capsys.readouterr().out
    assert "skipped test_serve[tp1-pp1]::in32-out8-n16-qpsinf-text: invalid (repeat 1/2:" in out
    assert not (pytester.path / "baselines").exists()


# --- files ---------------------------------------------------------------------------------------


def test_each_export_is_independent(pytester: pytest.Pytester) -> None:
    """Issue 8: one failed export lost the summary and the other exports."""
    pytester.makepyfile(test_perf=ONE + """
import os, shutil

def test_spoil_json_dir():
    shutil.rmtree("out", ignore_errors=True)
    with open("out", "w") as fh:
        fh.write("a file where --mgpu-json's directory should be")
""")
    md, bj = pytester.path / "report.md", pytester.path / "bench.json"
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-json", "out/r.json",
                           f"--mgpu-report-md={md}", f"--mgpu-benchmark-json={bj}")
    r.stdout.fnmatch_lines(["*mgpu gate*", "mgpu gate: 1 new", "*ERROR writing --mgpu-json *out/r.json: *"])
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    assert md.exists() and bj.exists() and (pytester.path / ".mgpu" / "last-results.json").exists()
    assert "Traceback" not in r.stdout.str() + r.stderr.str()


def test_baselines_and_reports_follow_the_umask(pytester: pytest.Pytester) -> None:
    """Issue 8: files were 0600 whatever the umask, and a 0644 baseline became 0600 on update."""
    pytester.makepyfile(test_perf=ONE)
    md = pytester.path / "report.md"
    old = os.umask(0o022)
    try:
        pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines", f"--mgpu-report-md={md}")
        path = pytester.path / "baselines" / FP / "test_perf.py.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and stat.S_IMODE(md.stat().st_mode) == 0o644
        os.umask(0o002)
        pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines")
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_unknown_top_level_keys_survive_an_update(pytester: pytest.Pytester) -> None:
    """Issue 8: keys a newer (or another) tool put in a baseline file were dropped on update."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    edit_baseline(pytester, lambda doc: doc.update({"x_owner": "perf-team", "x_notes": ["keep me"]}))
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    doc = baseline_doc(pytester)
    assert doc["x_owner"] == "perf-team" and doc["x_notes"] == ["keep me"]
    assert doc["schema_version"] == 2 and len(next(iter(doc["entries"].values()))["recordings"]) == 2
