"""Results are never lost or misstated: accept, merge, shards, the CLI (issue 17, the records part).

Each test provokes one case of the issue and failed before its fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_mgpu.cli import main
from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure.workload import Workload

pytest_plugins = ["pytester"]

FP = "sim-v100-16gb-x4"
MOD = "perf_tests/test_llama.py"
BASE = {"output_throughput_per_gpu": 1000.0, "ttft_p50": 50.0, "tpot_p50": 10.0, "ttft_p99": 90.0, "tpot_p99": 14.0,
        "request_throughput": 8.0}
SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "2"]
SIM_FP = "sim-h100-80gb-x4"
ONE = """
import math, pytest

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""


def make_result(test: str = "test_serve[tp2-pp1]", factors: dict[str, float] | None = None,
                run_id: str | None = "20260102T030405Z-host-0a1b2c3d", **values: float) -> BenchResult:
    """A hand-built result: BASE x factor over three repeats; ``values`` set a metric in every repeat."""
    factors = factors or {}
    reps = [RepeatResult({**{m: v * factors.get(m, 1.0) * j for m, v in BASE.items()}, **values})
            for j in (1.0, 1.01, 0.99)]
    env: dict[str, Any] = {"fingerprint": FP, "date": "2026-01-02T03:04:05+00:00", "commit": "0123456789abcdef"}
    if run_id:
        env["run_id"] = run_id
    return BenchResult(
        nodeid=f"{MOD}::{test}", test_name=test, module=MOD, workload=Workload(), layout=Layout(tp=2),
        engine="sim", engine_version="0.1.0", model="tiny", repeats=reps, env=env,
    )


def results_file(path: Path, *results: BenchResult, **extra: Any) -> Path:
    """Write a ``--mgpu-json`` style file."""
    path.write_text(json.dumps({"schema_version": 2, "fingerprint": FP, "results": [r.to_dict() for r in results],
                                **extra}))
    return path


def recordings(root: Path, eid: str = "test_serve[tp2-pp1]::in128-out128-n256-qps32") -> list[dict[str, Any]]:
    doc = json.loads((root / FP / f"{MOD}.json").read_text())
    return list(doc["entries"][eid]["recordings"])


# --- 1. accepting the same run twice --------------------------------------------------------


@pytest.mark.parametrize("run_id", ["20260102T030405Z-host-0a1b2c3d", None], ids=["run-id", "older-file"])
def test_accepting_a_run_twice_records_it_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               run_id: str | None) -> None:
    """Issue 17.1: a second accept of one file added a second identical recording (narrower noise band)."""
    f = results_file(tmp_path / "r.json", make_result(run_id=run_id), env={"run_id": run_id})
    root = tmp_path / "baselines"
    assert main(["accept", str(f), "--baseline-dir", str(root)]) == 0
    capsys.readouterr()
    assert main(["accept", str(f), "--baseline-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "nothing to record" in out and "already in the baselines" in out
    assert "already recorded test_serve[tp2-pp1]::in128-out128-n256-qps32" in out
    assert len(recordings(root)) == 1
    # Another run of the same item is still added.
    other = results_file(tmp_path / "r2.json", make_result(run_id="20260103T000000Z-host-ffffffff",
                                                           factors={"ttft_p50": 1.02}))
    assert main(["accept", str(other), "--baseline-dir", str(root)]) == 0
    assert len(recordings(root)) == 2


def test_a_run_records_its_identity(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.1: each recording carries the run that made it; accepting that run's file again is a no-op."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines", "--mgpu-json", "r.json")
    doc = json.loads((pytester.path / "r.json").read_text())
    run = doc["env"]["run_id"]
    assert run and all(r["env"]["run_id"] == run for r in doc["results"])
    base = json.loads((pytester.path / "baselines" / SIM_FP / "test_perf.py.json").read_text())
    (entry,) = base["entries"].values()
    assert [r["env"]["run_id"] for r in entry["recordings"]] == [run]
    capsys.readouterr()
    assert main(["accept", str(pytester.path / "r.json"), "--baseline-dir", str(pytester.path / "baselines")]) == 0
    assert "already in the baselines" in capsys.readouterr().out
    base = json.loads((pytester.path / "baselines" / SIM_FP / "test_perf.py.json").read_text())
    assert len(next(iter(base["entries"].values()))["recordings"]) == 1


# --- 2. zero or negative gated metrics ------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_zero_or_negative_gated_metric_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  value: float) -> None:
    """Issue 17.2: accept recorded the file (exit 0) and silently left the metric out of the baseline."""
    bad = make_result()
    bad.repeats[1].summary["ttft_p50"] = value
    f = results_file(tmp_path / "r.json", make_result("test_ok"), bad)
    root = tmp_path / "baselines"
    assert main(["accept", str(f), "--baseline-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and bad.entry_id in err and "gated metric ttft_p50" in err and "<= 0" in err
    assert not root.exists()  # nothing recorded, not even the good result


def test_one_token_workload_still_records(tmp_path: Path) -> None:
    """TPOT of a one-token workload is 0 in every repeat: undefined, not corrupt."""
    r = make_result(tpot_p50=0.0, tpot_p99=0.0)
    r.workload = Workload(output_len=1)
    root = tmp_path / "baselines"
    assert main(["accept", str(results_file(tmp_path / "r.json", r)), "--baseline-dir", str(root)]) == 0
    rec = json.loads((root / FP / f"{MOD}.json").read_text())["entries"][r.entry_id]["recordings"][0]
    assert "tpot_p50" not in rec["metrics"] and "ttft_p50" in rec["metrics"]


def test_baseline_entry_lacking_a_gated_metric_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.2: an entry without a gated metric made it NEW: a 3.3x slower run ended WARN, exit 0."""
    root = tmp_path / "baselines"
    assert main(["accept", str(results_file(tmp_path / "r.json", make_result())), "--baseline-dir", str(root)]) == 0
    path = root / FP / f"{MOD}.json"
    doc = json.loads(path.read_text())
    eid = make_result().entry_id
    del doc["entries"][eid]["recordings"][0]["metrics"]["ttft_p50"]
    path.write_text(json.dumps(doc))
    slow = results_file(tmp_path / "slow.json", make_result(factors={"ttft_p50": 3.3}, run_id="other"))
    capsys.readouterr()
    assert main(["compare", str(path), str(slow)]) == 2
    err = capsys.readouterr().err
    assert eid in err and "lacks the gated metric ttft_p50" in err


def test_plugin_fails_on_an_entry_lacking_a_gated_metric(pytester: pytest.Pytester) -> None:
    """Issue 17.2, in the plugin: NEW for the metric (a pass) became a clear baseline error."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    path = pytester.path / "baselines" / SIM_FP / "test_perf.py.json"
    doc = json.loads(path.read_text())
    for e in doc["entries"].values():
        for rec in e["recordings"]:
            del rec["metrics"]["tpot_p50"]
    path.write_text(json.dumps(doc))
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*lacks the gated metric tpot_p50*"])
    assert "Traceback" not in r.stdout.str()


# --- 3. merge of a shard whose A/B failed ---------------------------------------------------


def ab_shard(tmp_path: Path, name: str, shard: str, test: str, verdict: str) -> str:
    """A shard file of an A/B run: the new side's result with its ``ab`` block, no gate comparisons."""
    d = make_result(test).to_dict()
    d["ab"] = {"verdict": verdict, "old_version": "0.1.0", "new_version": "0.1.1", "rounds": 3,
               "note": "regression: tpot_p50 +9.0%" if verdict == "FAIL" else ""}
    doc = {"schema_version": 2, "fingerprint": FP, "env": {"shard": shard, "commit": "abc"}, "results": [d],
           "comparisons": [], "ab": {"verdicts": {verdict: 1}, "gpu_minutes": 1.5, "rule": {}}}
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_merge_keeps_the_ab_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.3: a shard whose A/B failed merged to "no results", exit 0."""
    a = ab_shard(tmp_path, "1.json", "1/2", "test_a[tp1-pp1]", "FAIL")
    b = ab_shard(tmp_path, "2.json", "2/2", "test_b[tp1-pp1]", "PASS")
    out_json = tmp_path / "m.json"
    assert main(["merge", a, b, "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "no results" not in out and "1 failed, 1 passed" in out
    doc = json.loads(out_json.read_text())
    assert sorted(c["verdict"] for c in doc["comparisons"]) == ["FAIL", "PASS"]
    assert doc["ab"]["verdicts"] == {"FAIL": 1, "PASS": 1}
    # The merged document merges again to the same verdicts (nothing counted twice).
    assert main(["merge", str(out_json)]) == 1
    assert "1 failed, 1 passed" in capsys.readouterr().out
    ok = ab_shard(tmp_path, "3.json", "1/2", "test_a[tp1-pp1]", "WARN")
    assert main(["merge", ok, b]) == 0 and main(["merge", ok, b, "--strict"]) == 1


# --- 5. each run its own results file -------------------------------------------------------


def test_the_printed_accept_command_records_its_own_run(pytester: pytest.Pytester,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.5: the printed command named .mgpu/last-results.json, so after a second run it recorded
    the other run into the baselines."""
    import shlex

    pytester.makepyfile(test_perf=ONE)
    commands, runs = [], []
    for model in ("tiny-llama", "llama-2-7b"):
        r = pytester.runpytest(*SIM, "--mgpu-model", model)
        line = next(ln.strip() for ln in r.stdout.lines if ln.strip().startswith("pytest-mgpu accept "))
        commands.append(line)
        runs.append(json.loads((pytester.path / ".mgpu" / "last-results.json").read_text())["env"]["run_id"])
    assert commands[0] != commands[1] and ".mgpu/results-" in commands[0] and "last-results" not in commands[0]
    capsys.readouterr()
    assert main(shlex.split(commands[0])[1:]) == 0  # the first run's command, after the second run
    doc = json.loads((pytester.path / "baselines" / SIM_FP / "test_perf.py.json").read_text())
    (entry,) = doc["entries"].values()
    assert entry["model"] == "tiny-llama" and entry["recordings"][0]["env"]["run_id"] == runs[0]
    assert sorted(p.name for p in (pytester.path / ".mgpu").glob("*.json")) == sorted(
        ["last-results.json", f"results-{runs[0]}.json", f"results-{runs[1]}.json"])


# --- 6. a tiny positive sample ---------------------------------------------------------------


def test_a_tiny_sample_is_a_broken_baseline_not_a_crash(pytester: pytest.Pytester,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.6: 1e-300 in one of three recordings crashed the gate (OverflowError), compare printed a
    traceback and show printed inf."""
    pytester.makepyfile(test_perf=ONE)
    for _ in range(3):
        pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines", "--mgpu-json", "r.json")
    path = pytester.path / "baselines" / SIM_FP / "test_perf.py.json"
    doc = json.loads(path.read_text())
    (entry,) = doc["entries"].values()
    assert len(entry["recordings"]) == 3
    samples = entry["recordings"][1]["metrics"]["tpot_p50"]
    samples[:] = [1e-300] * len(samples)
    path.write_text(json.dumps(doc))
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([f"*baseline file {path}: broken entry *recording 2: metric 'tpot_p50': sample 1e-300 *"])
    assert "OverflowError" not in r.stdout.str()
    capsys.readouterr()
    assert main(["compare", str(path), str(pytester.path / "r.json")]) == 2
    assert "sample 1e-300" in capsys.readouterr().err
    assert main(["show", str(pytester.path / "baselines")]) == 2
    out = capsys.readouterr().out
    assert "BROKEN" in out and "sample 1e-300" in out and not re.search(r"\binf\b", out)


def test_a_tiny_sample_in_a_results_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.6: the number that later crashed the gate must not be recorded in the first place."""
    f = results_file(tmp_path / "r.json", make_result(ttft_p50=1e-300))
    assert main(["accept", str(f), "--baseline-dir", str(tmp_path / "b")]) == 2
    assert "1e-300" in capsys.readouterr().err


# --- 7. v1 baselines, migrated then updated -------------------------------------------------


def test_a_migrated_v1_recording_stays_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.7: after a v1 baseline was updated, its recording showed as "(not used)" without a word,
    because v1 recorded no engine options."""
    r = make_result()
    root = tmp_path / "baselines"
    path = root / FP / f"{MOD}.json"
    path.parent.mkdir(parents=True)
    v1 = {"engine": "sim", "engine_version": "0.1.0", "model": "tiny", "nodeid": r.nodeid,
          "layout": Layout(tp=2).to_dict(), "repeats": 3, "workload": Workload().to_dict(),
          "env": {"date": "2025-12-01T00:00:00+00:00", "commit": "old"},
          "metrics": {m: {"samples": [v, v * 1.01, v * 0.99]} for m, v in BASE.items()}}
    path.write_text(json.dumps({"schema_version": 1, "fingerprint": FP, "module": MOD, "entries": {r.entry_id: v1}}))
    assert main(["accept", str(results_file(tmp_path / "r.json", r)), "--baseline-dir", str(root)]) == 0
    assert "new level" not in capsys.readouterr().out
    assert main(["show", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(not used)" not in out and "geometric mean of 2 recordings" in out
    # Another engine version is a new level, and accept says so.
    r2 = make_result(run_id="later")
    r2.engine_version = "0.2.0"
    assert main(["accept", str(results_file(tmp_path / "r2.json", r2)), "--baseline-dir", str(root)]) == 0
    assert "new level (engine version 0.1.0 -> 0.2.0)" in capsys.readouterr().out
    assert main(["show", str(root)]) == 0
    assert capsys.readouterr().out.count("(not used)") == 2


# --- crashes instead of clear errors ----------------------------------------------------------


def test_output_paths_in_a_missing_folder_are_created(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: merge --json, compare --markdown and export-benchmark into a missing folder: FileNotFoundError."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "baselines"
    r = results_file(tmp_path / "r.json", make_result())
    assert main(["accept", str(r), "--baseline-dir", str(root)]) == 0
    base = root / FP / f"{MOD}.json"
    assert main(["compare", str(base), str(r), "--markdown", "nodir/x.md"]) == 0
    assert main(["export-benchmark", str(r), "nodir2/b.json"]) == 0
    shard = ab_shard(tmp_path, "s.json", "1/1", "test_a[tp1-pp1]", "PASS")
    assert main(["merge", shard, "--json", "nodir3/m.json", "--markdown", "nodir4/m.md"]) == 0
    for p in ("nodir/x.md", "nodir2/b.json", "nodir3/m.json", "nodir4/m.md"):
        assert (tmp_path / p).stat().st_size > 0
    # A folder that cannot be made: exit 2, naming the path.
    (tmp_path / "afile").write_text("")
    capsys.readouterr()
    assert main(["export-benchmark", str(r), "afile/b.json"]) == 2
    assert "cannot write afile/b.json" in capsys.readouterr().err


def test_show_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """Issue 17: `pytest-mgpu show | head` printed a BrokenPipeError traceback."""
    import subprocess
    import sys

    root = tmp_path / "baselines"
    many = [make_result(f"test_{i}[tp2-pp1]") for i in range(400)]
    assert main(["accept", str(results_file(tmp_path / "r.json", *many)), "--baseline-dir", str(root)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "pytest_mgpu.cli", "show", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141


@pytest.mark.parametrize(("edit", "what"), [
    (lambda d: d.update(env="a string"), "'env' is str"),
    (lambda d: d.update(results=[1, 2]), "result #1 is malformed"),
    (lambda d: d.update(comparisons=[1]), "a comparison is malformed"),
])
def test_a_corrupt_shard_file_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                edit: Any, what: str) -> None:
    """Issue 17: a shard file with `env` a string or `results` [1, 2] gave an AttributeError traceback."""
    good = json.loads(Path(ab_shard(tmp_path, "a.json", "1/1", "test_a[tp1-pp1]", "PASS")).read_text())
    edit(good)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(good))
    assert main(["merge", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and what in err


def test_accept_only_with_an_unknown_verdict_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: `accept --only` on a file holding an unknown verdict gave a ValueError traceback."""
    r = make_result()
    d = r.to_dict()
    d["comparison"] = {"verdict": "BETTER"}
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"schema_version": 2, "fingerprint": FP, "results": [d]}))
    assert main(["accept", str(f), "--only", "new", "--baseline-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and r.entry_id in err and "unknown verdict 'BETTER'" in err


# --- said too quietly, or not at all --------------------------------------------------------


def test_an_xfailed_tests_reason_is_one_line(pytester: pytest.Pytester) -> None:
    """Issue 17: the "no result was measured" line quoted an xfailed test's whole traceback as its skip reason."""
    pytester.makepyfile(test_perf="""
import math, pytest

@pytest.mark.xfail(reason="engine bug 123")
@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    raise RuntimeError("boom")
""")
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama")
    line = next(ln for ln in r.stdout.lines if ln.startswith("mgpu: no result was measured"))
    assert "skipped because: xfailed: engine bug 123 (1x). A perf run" in line
    assert "RuntimeError" not in r.stdout.str() and "mgpu_bench = <" not in r.stdout.str()


def _strict_json(text: str) -> Any:
    """Parse as other tools do: ``Infinity`` and ``NaN`` are not JSON."""
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_no_infinity_in_the_json_outputs(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: rate-inf runs wrote `Infinity` (achieved_request_rate of one dispatch instant), not valid JSON."""
    pytester.makepyfile(test_perf="""
import math, pytest

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=1, request_rate=math.inf, warmup_requests=0)
""")
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-json", "r.json", "--mgpu-benchmark-json", "b.json")
    r.assert_outcomes(passed=1)
    doc = _strict_json((pytester.path / "r.json").read_text())
    assert doc["results"][0]["repeats"][0]["summary"]["achieved_request_rate"] == "inf"
    _strict_json((pytester.path / "b.json").read_text())
    _strict_json((pytester.path / ".mgpu" / "last-results.json").read_text())
    out = str(pytester.path / "x")
    capsys.readouterr()
    assert main(["export-benchmark", str(pytester.path / "r.json"), out + "-b.json"]) == 0
    _strict_json(Path(out + "-b.json").read_text())
    # The readers take the new form back, and still read the old one.
    root = str(pytester.path / "baselines")
    assert main(["accept", str(pytester.path / "r.json"), "--baseline-dir", root]) == 0
    old = (pytester.path / "r.json").read_text().replace('"inf"', "Infinity").replace('"qpsInfinity', '"qpsinf')
    (pytester.path / "old.json").write_text(old)
    assert main(["compare", str(pytester.path / "r.json"), str(pytester.path / "old.json")]) == 0


@pytest.mark.parametrize("where", ["inside", "copied"])
def test_mgpu_json_at_a_baseline_file_is_a_usage_error(pytester: pytest.Pytester, where: str) -> None:
    """Issue 17: --mgpu-json pointed at a baseline file overwrote it."""
    pytester.makepyfile(test_perf=ONE)
    pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-update-baselines").assert_outcomes(passed=1)
    base = pytester.path / "baselines" / SIM_FP / "test_perf.py.json"
    target = base if where == "inside" else pytester.path / "kept.json"
    if where == "copied":
        target.write_text(base.read_text())
    before = target.read_text()
    r = pytester.runpytest(*SIM, "--mgpu-model", "tiny-llama", "--mgpu-json", str(target))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*--mgpu-json {target} is *baseline*write * elsewhere*"])
    assert target.read_text() == before


def test_accepting_a_fail_without_only_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: accepting a FAIL result without --only recorded the regression as the baseline silently."""
    bad, ok = make_result(factors={"tpot_p50": 1.3}), make_result("test_ok")
    d_bad, d_ok = bad.to_dict(), ok.to_dict()
    d_bad["comparison"], d_ok["comparison"] = {"verdict": "FAIL"}, {"verdict": "PASS"}
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"schema_version": 2, "fingerprint": FP, "results": [d_bad, d_ok]}))
    assert main(["accept", str(f), "--baseline-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"warning: recorded 1 result(s) that FAILed in that run: {bad.entry_id};" in out
    assert "--only new,improved" in out and ok.entry_id not in out.split("warning:")[1]
    assert main(["accept", str(f), "--only", "pass", "--baseline-dir", str(tmp_path / "c")]) == 0
    assert "FAILed" not in capsys.readouterr().out


def test_merging_shards_of_different_settings_warns(pytester: pytest.Pytester,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: shards made with different tolerances or engine options merged without a word."""
    pytester.makepyfile(test_perf="""
import math, pytest

@pytest.mark.layout(tp=1)
def test_a(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=0)

@pytest.mark.layout(tp=2)
def test_b(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=0)
""")
    one = [*SIM, "--mgpu-model", "tiny-llama", "--mgpu-shard", "1/2", "--mgpu-json", "1.json"]
    two = [*SIM, "--mgpu-model", "tiny-llama", "--mgpu-shard", "2/2", "--mgpu-json", "2.json"]
    pytester.runpytest(*one)
    pytester.runpytest(*two)
    files = [str(pytester.path / "1.json"), str(pytester.path / "2.json")]
    capsys.readouterr()
    main(["merge", *files])
    assert "warning" not in capsys.readouterr().out
    pytester.runpytest(*two, "--mgpu-tolerance", "tpot_p50=30%", "--mgpu-engine-opt", "max_num_seqs=8")
    main(["merge", *files])
    out = capsys.readouterr().out
    assert "warning: the shards ran with different gate settings" in out and "30%" in out
    assert "warning: the shards ran with different engine options" in out and "max_num_seqs" in out


def test_gate_doc_names_every_identity_option() -> None:
    """Issue 17: --mgpu-sim-time-scale is part of a result's identity but was missing from docs/gate.md's table."""
    from pytest_mgpu.judge.results import IDENTITY_ENGINE_OPTIONS

    text = (Path(__file__).resolve().parents[1] / "docs" / "gate.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `engine_config` |"))
    for opt in IDENTITY_ENGINE_OPTIONS:
        assert f"`{opt}`" in row, opt
    assert "`--mgpu-sim-time-scale`" in row
    assert "## What is refused, warned and recorded" in text
