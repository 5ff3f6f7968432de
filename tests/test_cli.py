"""The ``pytest-mgpu`` command: compare, show, export-benchmark; exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_mgpu.cli import main
from pytest_mgpu.judge.baseline import BaselineStore
from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure.workload import Workload

FP = "sim-v100-16gb-x4"
MOD = "perf_tests/test_llama.py"
BASE = {"output_throughput_per_gpu": 1000.0, "ttft_p50": 50.0, "tpot_p50": 10.0, "ttft_p99": 90.0, "tpot_p99": 14.0,
        "e2el_mean": 1500.0}


def make_result(test: str = "test_serve[tp2-pp1]", factors: dict[str, float] | None = None,
                noisy: bool = False, version: str = "0.1.0") -> BenchResult:
    """A hand-built result: BASE x factor over three repeats (15% jitter when ``noisy``)."""
    factors = factors or {}
    jitter = (1.0, 1.15, 0.87) if noisy else (1.0, 1.01, 0.99)
    reps = [RepeatResult({m: v * factors.get(m, 1.0) * j for m, v in BASE.items()}) for j in jitter]
    return BenchResult(
        nodeid=f"{MOD}::{test}", test_name=test, module=MOD, workload=Workload(), layout=Layout(tp=2),
        engine="sim", engine_version=version, model="tiny", repeats=reps,
        env={"fingerprint": FP, "date": "2026-01-02T03:04:05+00:00", "commit": "0123456789abcdef"},
    )


def results_file(path: Path, *results: BenchResult) -> Path:
    """Write a ``--mgpu-json`` style file."""
    path.write_text(json.dumps({"schema_version": 1, "results": [r.to_dict() for r in results]}))
    return path


@pytest.fixture
def baseline_file(tmp_path: Path) -> Path:
    """A baseline file holding two entries."""
    store = BaselineStore(tmp_path / "baselines")
    return store.update(FP, MOD, [make_result(), make_result("test_other[tp1-pp1]")]).path


def test_compare_pass(baseline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = results_file(tmp_path / "now.json", make_result())
    assert main(["compare", str(baseline_file), str(now)]) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "delta %" in out and "PASS" in out
    assert "not in now.json: test_other[tp1-pp1]::in128-out128-n256-qps32" in out
    assert "1 passed" in out


def test_compare_fail_exit_1_and_markdown(baseline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = results_file(tmp_path / "now.json", make_result(factors={"output_throughput_per_gpu": 0.8}, version="0.2.0"))
    md = tmp_path / "report.md"
    assert main(["compare", str(baseline_file), str(now), "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "-20.0%" in out and "sim 0.1.0 -> 0.2.0" in out
    text = md.read_text()
    assert "### Regressions" in text and "**1 failed**" in text
    # A looser tolerance for the failing metric lets it pass.
    assert main(["compare", str(baseline_file), str(now), "--tolerance", "output_throughput_per_gpu=25%"]) == 0


def test_compare_two_results_files_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = results_file(tmp_path / "a.json", make_result(noisy=True))
    b = results_file(tmp_path / "b.json", make_result(factors={"tpot_p50": 1.07}, noisy=True), make_result("test_new"))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "WARN" in out and "NEW" in out
    assert main(["compare", str(a), str(b), "--strict"]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{", "not valid JSON"),
        ('{"foo": 1}', "neither a baseline file"),
        ('{"schema_version": 9, "fingerprint": "x", "entries": {}}', "schema_version 9"),
        ('{"results": [{"nodeid": "x"}]}', "result #1 is malformed"),
    ],
)
def test_compare_bad_files_exit_2(baseline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  content: str | None, message: str) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["compare", str(baseline_file), str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.json" in err


def test_bad_tolerance_is_usage_error(baseline_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(baseline_file), str(baseline_file), "--tolerance", "tpot_p50=5 %x"]) == 2
    assert "Could not parse tolerance: '5 %x'" in capsys.readouterr().err


def test_show(baseline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "baselines"
    assert main(["show", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{FP}/" in out and f"{MOD}  (2 entries)" in out
    assert "test_serve[tp2-pp1]::in128-out128-n256-qps32  sim 0.1.0  2026-01-02T03:04:05+00:00  commit 0123456789" in out
    assert "output_throughput_per_gpu=1,000.0" in out
    (root / "cpu").mkdir()
    (root / "cpu" / "broken.py.json").write_text("{")
    assert main(["show", str(root)]) == 2
    captured = capsys.readouterr()
    assert "BROKEN" in captured.out and "1 broken file" in captured.err
    assert main(["show", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_export_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = results_file(tmp_path / "r.json", make_result())
    out = tmp_path / "bench.json"
    assert main(["export-benchmark", str(src), str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmarks"][0]["stats"]["median"] == pytest.approx(1.5)
    assert "pytest-benchmark compare" in capsys.readouterr().out


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


# --- one failure rule, identity, committed baselines (issue 8) ----------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_compare_fails_on_invalid_like_the_suite(baseline_file: Path, tmp_path: Path) -> None:
    """Issue 8: compare exited 0 on INVALID while the plugin failed the test."""
    bad = make_result()
    bad.repeats[1].invalid = "3 of 256 requests failed"
    now = results_file(tmp_path / "now.json", bad)
    assert main(["compare", str(baseline_file), str(now)]) == 1


def test_compare_strict_fails_on_new_alone(baseline_file: Path, tmp_path: Path) -> None:
    """Issue 8: compare --strict exited 0 on NEW while the plugin's --mgpu-strict failed it."""
    now = results_file(tmp_path / "now.json", make_result("test_only_here"))
    assert main(["compare", str(baseline_file), str(now)]) == 0
    assert main(["compare", str(baseline_file), str(now), "--strict"]) == 1


def test_compare_other_model_is_mismatch(baseline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = make_result(factors={"output_throughput_per_gpu": 0.5})
    other.model = "llama-2-7b"
    now = results_file(tmp_path / "now.json", other)
    assert main(["compare", str(baseline_file), str(now)]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "baseline is for model tiny; this run: llama-2-7b" in out and "FAIL" not in out
    assert main(["compare", str(baseline_file), str(now), "--strict"]) == 1


def test_strict_help_says_what_it_covers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Also fail on WARN" in text and "MISMATCH" in text and "NEW (no baseline)" in text
    assert "INVALID and FAIL always fail" in text


def test_committed_baselines_still_read(capsys: pytest.CaptureFixture[str]) -> None:
    """The schema 1 files under baselines/ and docs/data/ are read (migrated) with their numbers."""
    assert main(["show", str(REPO / "baselines")]) == 0
    out = capsys.readouterr().out
    assert "nvidia-h200-x4/" in out and "sim-v100-16gb-x4/" in out and "BROKEN" not in out
    # docs/vllm.md: session 3 against the committed H200 baseline FAILs on TTFT p50 at 32 QPS (+9.3%).
    code = main(["compare", str(REPO / "baselines/nvidia-h200-x4/perf_tests/test_llama2_7b.py.json"),
                 str(REPO / "docs/data/h200-x4-session3-results.json")])
    out = capsys.readouterr().out
    assert code == 1 and "+9.3%" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("ttft_p50*") and "+9.3%" in ln)
    assert row.split()[1:3] == ["14.03", "15.32"] and row.split()[-1] == "FAIL"
