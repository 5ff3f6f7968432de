"""The gate's decision (verdicts), its rendering, and the pytest-benchmark export."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_mgpu.errors import BaselineError
from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.judge.verdicts import (
    DEFAULT_CONFIG,
    Comparison,
    GateConfig,
    MetricComparison,
    Tolerance,
    Verdict,
    compare,
    compare_metric,
    confirm,
    parse_metric_tolerance,
    worst,
)
from pytest_mgpu.layout import Layout
from pytest_mgpu.measure.metrics import RequestRecord
from pytest_mgpu.measure.workload import Workload
from pytest_mgpu.report.benchmark_export import to_benchmark_json
from pytest_mgpu.report.render.markdown import render_markdown
from pytest_mgpu.report.render.text import render_table, side_by_side
from pytest_mgpu.run.options import add_gate_options
from pytest_mgpu.run.settings import gate_config_from_options

BASE = {"output_throughput_per_gpu": 1000.0, "ttft_p50": 50.0, "tpot_p50": 10.0, "ttft_p99": 90.0, "tpot_p99": 14.0}
JITTER = (1.0, 1.01, 0.99)


def make_result(
    factors: dict[str, float] | None = None,
    jitter: tuple[float, ...] = JITTER,
    invalid: str | None = None,
    version: str = "0.1.0",
) -> BenchResult:
    """A sim result whose metrics are BASE x factor x jitter per repeat."""
    factors = factors or {}
    reps = [
        RepeatResult({m: v * factors.get(m, 1.0) * j for m, v in BASE.items()} | {"e2el_mean": 1500.0 * j}, invalid=invalid)
        for j in jitter
    ]
    return BenchResult(
        nodeid="perf_tests/test_x.py::test_serve[tp2-pp1]", test_name="test_serve[tp2-pp1]",
        module="perf_tests/test_x.py", workload=Workload(), layout=Layout(tp=2), engine="sim",
        engine_version=version, model="tiny", repeats=reps, env={"fingerprint": "sim-v100-16gb-x4"},
    )


class TwoRecordings:
    """A baseline entry of two recordings: ``latest``, and an earlier one ``spread`` x its values (1: the same).

    Improvements are judged only against two or more recordings (issue 17).
    """

    def __init__(self, latest: BenchResult, spread: float = 1.0) -> None:
        self._latest, self._spread = latest, spread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._latest, name)

    def history(self, metric: str) -> list[list[float]]:
        """The earlier recording's samples."""
        return [[v * self._spread for v in self._latest.samples(metric)]]


# --- tolerances --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fraction"), [("5%", 0.05), ("0.05", 0.05), ("12.5%", 0.125), (" 8 % ", 0.08), (0.1, 0.1)])
def test_tolerance_parse(text: str, fraction: float) -> None:
    assert Tolerance.parse(text).fraction == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["5 %x", "abc", "5", "-5%", "150%", "", "1.0"])
def test_tolerance_parse_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="Could not parse tolerance"):
        Tolerance.parse(text)


def test_metric_tolerance_and_unknown_metric() -> None:
    assert parse_metric_tolerance("tpot_p50=8%") == ("tpot_p50", Tolerance(0.08))
    with pytest.raises(argparse.ArgumentTypeError, match="Unknown metric 'tpot_p5'"):
        parse_metric_tolerance("tpot_p5=8%")
    with pytest.raises(argparse.ArgumentTypeError, match="METRIC=PCT"):
        parse_metric_tolerance("8%")


def test_default_tolerances_and_gating() -> None:
    assert DEFAULT_CONFIG.tolerance("tpot_p50").pct == pytest.approx(5)
    assert DEFAULT_CONFIG.tolerance("ttft_p99").pct == pytest.approx(10)
    assert DEFAULT_CONFIG.gated == {"output_throughput_per_gpu", "ttft_p50", "tpot_p50"}
    opted = DEFAULT_CONFIG.with_overrides({"ttft_p99": "20%"}, gate=["itl_p50"])
    assert {"ttft_p99", "itl_p50"} <= opted.gated and "itl_p50" in opted.metrics
    assert opted.tolerance("ttft_p99") == Tolerance(0.2)


def test_options_feed_argparse_and_config() -> None:
    ap = argparse.ArgumentParser()
    add_gate_options(ap.add_argument, prefix="--")
    ns = ap.parse_args(["--tolerance", "tpot_p50=8%", "--gate", "ttft_p99,itl_p50", "--noise-k", "3", "--strict"])
    cfg = gate_config_from_options(lambda n: getattr(ns, n), prefix="", ini_tolerance=["tpot_p50=2% ttft_p50=7%"])
    assert cfg.tolerance("tpot_p50") == Tolerance(0.08)  # command line beats ini
    assert cfg.tolerance("ttft_p50") == Tolerance(0.07)
    assert {"ttft_p99", "itl_p50"} <= cfg.gated and cfg.noise_k == 3 and cfg.strict
    with pytest.raises(SystemExit):
        ap.parse_args(["--tolerance", "tpot_p50=5 %x"])
    with pytest.raises(argparse.ArgumentTypeError, match="ini mgpu_tolerance: Could not parse tolerance"):
        gate_config_from_options(lambda n: getattr(ns, n), prefix="", ini_tolerance=["tpot_p50=5x"])


# --- verdicts ----------------------------------------------------------------------------------


def test_same_values_pass() -> None:
    c = compare(make_result(), make_result())
    assert c.verdict is Verdict.PASS
    assert [m.verdict for m in c.metrics] == [Verdict.PASS] * 5


def test_throughput_drop_fails_naming_metric_delta_tolerance() -> None:
    c = compare(make_result({"output_throughput_per_gpu": 0.8}), make_result())
    assert c.verdict is Verdict.FAIL
    m = c.metric("output_throughput_per_gpu")
    assert m is not None and m.verdict is Verdict.FAIL and m.delta_pct == pytest.approx(-20)
    assert [f.metric for f in c.failed_metrics] == ["output_throughput_per_gpu"]
    text = side_by_side(c)
    assert "output_throughput_per_gpu is 20.0% lower" in text and "tolerance of 5%" in text


def test_latency_rise_fails_and_improvement_is_improved() -> None:
    assert compare(make_result({"tpot_p50": 1.2}), make_result()).verdict is Verdict.FAIL
    better = compare(make_result({"output_throughput_per_gpu": 1.25}, version="0.2.0"), TwoRecordings(make_result()))
    assert better.verdict is Verdict.IMPROVED
    assert (better.base_engine_version, better.now_engine_version) == ("0.1.0", "0.2.0")


def test_one_recording_does_not_judge_an_improvement() -> None:
    """Issue 17: beyond tolerance and noise but against one recording, a gain is PASS, saying why; two: IMPROVED.

    On an H100 (vLLM 0.26.0) the TTFT p50 of an unchanged engine was 17-19% below a recording made at
    the engine's first, compiling start: one recording shows no spread between engine starts.
    """
    better = make_result({"ttft_p50": 0.8})
    c = compare(better, make_result())
    m = c.metric("ttft_p50")
    assert c.verdict is Verdict.PASS and m is not None and m.verdict is Verdict.PASS
    assert m.why.startswith("better by 20.0% (beyond this run's noise ") and m.why.endswith(
        "not judged an improvement: the baseline has one recording, so the spread between engine starts is "
        "unknown; record a second one (pytest-mgpu accept, or --mgpu-update-baselines) to judge improvements")
    assert c.unjudged_improvements == [m] and m.to_dict()["why"] == m.why
    assert c.note.startswith("ttft_p50 better by 20.0% (beyond this run's noise ") and "one recording" in c.note
    assert "not judged an improvement" in c.to_dict()["note"]
    assert f"  note: {c.note}" in render_table([c], brief=frozenset({Verdict.PASS})).splitlines()
    # Two recordings with a small spread: the same gain is beyond the history's noise.
    two = compare(better, TwoRecordings(make_result(), spread=1.01))
    m2 = two.metric("ttft_p50")
    assert two.verdict is Verdict.IMPROVED and m2 is not None and m2.verdict is Verdict.IMPROVED and m2.why == ""
    assert "why" not in m2.to_dict() and "not judged" not in two.note and not two.unjudged_improvements
    # A worse value is judged against one recording as before.
    assert compare(make_result({"ttft_p50": 1.25}), make_result()).verdict is Verdict.FAIL


def test_the_h100_reruns_are_not_improvements() -> None:
    """The issue's per-repeat TTFT p50 (ms): the recording's compiling start, then two runs of the unchanged engine."""
    recording, rerun1, rerun2 = [5324.0, 5040.0, 5161.0], [4247.0, 4167.0, 4190.0], [4249.0, 4264.0, 4269.0]
    cfg = DEFAULT_CONFIG.with_overrides({"ttft_p50": "12%"})
    for rerun in (rerun1, rerun2):
        one = compare_metric("ttft_p50", recording, rerun, cfg)
        assert one.verdict is Verdict.PASS and one.why and one.delta_pct is not None and one.delta_pct < -12
    # With the first re-run recorded as a second recording, the second is within the history's noise.
    assert compare_metric("ttft_p50", rerun1, rerun2, cfg, history=[recording]).verdict is Verdict.PASS


def test_improved_needs_no_worse_metric() -> None:
    c = compare(make_result({"output_throughput_per_gpu": 1.25, "ttft_p50": 1.2}), make_result())
    assert c.verdict is Verdict.FAIL


def test_invalid_and_new() -> None:
    c = compare(make_result({"output_throughput_per_gpu": 0.5}, invalid="3 of 256 requests failed"), make_result())
    assert c.verdict is Verdict.INVALID and c.metrics == () and "3 of 256" in c.note
    n = compare(make_result(), None, fingerprint="nvidia-h100-80gb-hbm3-x2", have=["sim-v100-16gb-x4"])
    assert n.verdict is Verdict.NEW
    assert "no baseline for nvidia-h100-80gb-hbm3-x2; have: sim-v100-16gb-x4" in n.note


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_repeat_without_a_finite_value_makes_the_metric_invalid(bad: float) -> None:
    """A NaN (or inf) in one repeat of the run was dropped, and the other repeats alone gave PASS."""
    now = make_result()
    now.repeats[1].summary["tpot_p50"] = bad
    m = compare_metric("tpot_p50", now.samples("tpot_p50")[:1] * 3, now.samples("tpot_p50"))
    assert m.verdict is Verdict.INVALID and m.why == f"1 of 3 repeats of this run measured no finite value ({bad})"
    c = compare(now, make_result())
    assert c.verdict is Verdict.INVALID
    assert c.note == f"not comparable: tpot_p50: 1 of 3 repeats of this run measured no finite value ({bad})"


def test_p99_warns_unless_opted_in() -> None:
    now, base = make_result({"ttft_p99": 1.5}), make_result()
    c = compare(now, base)
    assert c.verdict is Verdict.WARN and c.metric("ttft_p99").verdict is Verdict.WARN  # type: ignore[union-attr]
    assert compare(now, base, DEFAULT_CONFIG.with_overrides({"ttft_p99": "10%"})).verdict is Verdict.FAIL


def test_beyond_tolerance_within_noise_warns() -> None:
    noisy = (1.0, 1.15, 0.87)
    c = compare(make_result({"tpot_p50": 1.07}, jitter=noisy), make_result(jitter=noisy))
    m = c.metric("tpot_p50")
    assert m is not None and m.verdict is Verdict.WARN and m.delta_pct > 5 and m.noise_pct > m.delta_pct  # type: ignore[operator]
    assert c.verdict is Verdict.WARN and "within noise" in c.note
    assert not DEFAULT_CONFIG.is_failure(c.verdict) and GateConfig(strict=True).is_failure(c.verdict)


def test_missing_gated_metric_in_baseline_is_an_error() -> None:
    """Issue 17.2: a baseline lacking a gated metric was NEW for it, so the gate skipped it and passed."""
    cfg = DEFAULT_CONFIG.with_overrides(gate=["itl_p50"])
    now = make_result()
    for r in now.repeats:
        r.summary["itl_p50"] = 9.0
    with pytest.raises(BaselineError, match=r"lacks the gated metric itl_p50"):
        compare(now, make_result(), cfg)
    # Neither side has it (a metric the workload does not define): nothing to compare, said in the note.
    c = compare(make_result(), make_result(), cfg)
    assert c.metric("itl_p50").verdict is Verdict.NEW  # type: ignore[union-attr]
    assert c.verdict is Verdict.PASS and "baseline lacks itl_p50" in c.note


def test_worst_order() -> None:
    order = [Verdict.PASS, Verdict.IMPROVED, Verdict.NEW, Verdict.MISMATCH, Verdict.WARN, Verdict.FAIL, Verdict.INVALID]
    for i, v in enumerate(order):
        assert worst(order[: i + 1]) is v
    assert worst([]) is Verdict.PASS


def test_confirm() -> None:
    base = make_result()
    fail = compare(make_result({"output_throughput_per_gpu": 0.8}), base)
    again = compare(make_result({"output_throughput_per_gpu": 0.79}), base)
    assert confirm(fail, again).verdict is Verdict.FAIL
    gone = confirm(fail, compare(make_result(), base))
    assert gone.verdict is Verdict.WARN and "did not reproduce" in gone.note
    other = confirm(fail, compare(make_result({"tpot_p50": 1.3}), base))  # a different metric fails
    assert other.verdict is Verdict.WARN
    ok = compare(make_result(), base)
    assert confirm(ok, fail) is ok
    inv = confirm(fail, compare(make_result(invalid="boom"), base))
    assert inv.verdict is Verdict.INVALID


def test_confirm_improved() -> None:
    """Issue 17: an IMPROVED stands only if the same metric improves again; else the re-measurement's verdict, at best PASS."""
    base = TwoRecordings(make_result())
    better = compare(make_result({"output_throughput_per_gpu": 1.25}), base)
    assert better.verdict is Verdict.IMPROVED
    again = confirm(better, compare(make_result({"output_throughput_per_gpu": 1.24}), base))
    assert again.verdict is Verdict.IMPROVED and again.note.startswith("improvement confirmed by a re-measurement")
    gone = confirm(better, compare(make_result(), base))
    assert gone.verdict is Verdict.PASS and gone.note.startswith("improvement not confirmed: output_throughput_per_gpu +25.0%")
    # Another metric improving on the re-measurement alone is PASS; a FAIL there alone is WARN.
    other = confirm(better, compare(make_result({"tpot_p50": 0.7}), base))
    assert other.verdict is Verdict.PASS and other.metric("tpot_p50").verdict is Verdict.PASS  # type: ignore[union-attr]
    worse = confirm(better, compare(make_result({"tpot_p50": 1.3}), base))
    assert worse.verdict is Verdict.WARN and worse.measurement == "re-measurement"
    assert worse.note.endswith("; tpot_p50 failed on the re-measurement only") and "regression" not in worse.note
    assert confirm(better, compare(make_result(invalid="boom"), base)).verdict is Verdict.INVALID


factor_maps = st.dictionaries(st.sampled_from(sorted(BASE)), st.floats(0.5, 2.0), max_size=3)


@given(factor_maps, factor_maps)
def test_confirm_needs_the_same_metric_twice(f1: dict[str, float], f2: dict[str, float]) -> None:
    """Whatever two measurements show: a confirmed FAIL (or IMPROVED) has a metric that FAILed (or improved) in both."""
    base = TwoRecordings(make_result())
    first, second = compare(make_result(f1), base), compare(make_result(f2), base)
    c = confirm(first, second)
    if first.verdict not in (Verdict.FAIL, Verdict.IMPROVED):
        assert c is first
        return
    both = {m.metric for m in first.metrics if m.verdict is c.verdict} & {m.metric for m in second.metrics
                                                                           if m.verdict is c.verdict}
    if c.verdict in (Verdict.FAIL, Verdict.IMPROVED):
        assert c.verdict is first.verdict and both
    assert c.verdict is not (Verdict.IMPROVED if first.verdict is Verdict.FAIL else Verdict.FAIL)


# --- properties --------------------------------------------------------------------------------

GOODNESS = {Verdict.IMPROVED: 3, Verdict.PASS: 2, Verdict.WARN: 1, Verdict.FAIL: 0}
metric_names = st.sampled_from(["output_throughput_per_gpu", "ttft_p50", "tpot_p50", "ttft_p99"])
logs = st.lists(st.floats(-0.3, 0.3), min_size=1, max_size=5)


def _vals(center: float, ls: list[float]) -> list[float]:
    return [center * math.exp(x) for x in ls]


@given(metric_names, logs, logs, st.floats(0.5, 2.0), st.integers(-20, 20))
def test_scale_invariant(metric: str, bl: list[float], nl: list[float], ratio: float, exp2: int) -> None:
    base, now = _vals(100.0, bl), _vals(100.0 * ratio, nl)
    c = 2.0**exp2
    a = compare_metric(metric, base, now)
    b = compare_metric(metric, [x * c for x in base], [x * c for x in now])
    assert a.verdict is b.verdict


@given(metric_names, logs, logs, st.floats(0.5, 2.0), st.floats(0.001, 1000))
def test_scale_invariant_any_constant(metric: str, bl: list[float], nl: list[float], ratio: float, c: float) -> None:
    base, now = _vals(100.0, bl), _vals(100.0 * ratio, nl)
    a = compare_metric(metric, base, now)
    b = compare_metric(metric, [x * c for x in base], [x * c for x in now])
    assert a.delta_pct is not None and a.noise_log is not None and a.log_ratio is not None
    near_tol = abs(abs(a.delta_pct) - a.tolerance_pct) < 1e-6
    near_noise = abs(abs(a.log_ratio) - a.noise_log) < 1e-9
    assert a.verdict is b.verdict or near_tol or near_noise  # only floating-point ties at a threshold may differ


@given(metric_names, logs, logs, st.floats(0.5, 2.0), st.floats(0.0, 0.5))
def test_monotone_shift(metric: str, bl: list[float], nl: list[float], ratio: float, worse: float) -> None:
    """Making every repeat of the run worse by the same factor never improves the verdict."""
    base, now = _vals(100.0, bl), _vals(100.0 * ratio, nl)
    f = math.exp(-worse) if metric == "output_throughput_per_gpu" else math.exp(worse)
    a = compare_metric(metric, base, now)
    b = compare_metric(metric, base, [x * f for x in now])
    assert GOODNESS[b.verdict] <= GOODNESS[a.verdict]


#: Examples for test_monotone_elementwise that reach each of its rules (test_monotone_examples_reach_both_rules).
REGRESSED_EXAMPLE = ("tpot_p50", [0.0, 0.01, -0.01], [(0.3, 0.1), (0.29, 0.0), (0.31, 0.2)])
SLIGHTLY_WORSE_EXAMPLE = ("tpot_p50", [0.0, 0.01, -0.01], [(0.01, 0.2), (0.0, 0.0), (0.02, 0.1)])


@given(metric_names, logs, st.lists(st.tuples(st.floats(-0.3, 0.3), st.floats(0.0, 0.3)), min_size=1, max_size=5))
@example(*REGRESSED_EXAMPLE)
@example(*SLIGHTLY_WORSE_EXAMPLE)
def test_monotone_elementwise(metric: str, bl: list[float], pairs: list[tuple[float, float]]) -> None:
    """Making repeats worse one by one never takes a regression (FAIL/WARN) back to PASS/IMPROVED.

    The spread changes too, so the noise band can move one step within a side of the tolerance
    line (FAIL -> WARN for a worse but noisier run, PASS -> IMPROVED for a tighter one).
    """
    base = _vals(100.0, bl)
    sign = -1 if metric == "output_throughput_per_gpu" else 1
    now = [100.0 * math.exp(x) for x, _ in pairs]
    worse_now = [100.0 * math.exp(x + sign * d) for x, d in pairs]
    a, b = compare_metric(metric, base, now), compare_metric(metric, base, worse_now)
    regressed = {Verdict.FAIL, Verdict.WARN}
    assert a.verdict not in regressed or b.verdict in regressed
    assert not (a.verdict is Verdict.PASS and a.worse) or b.verdict is not Verdict.IMPROVED


def test_monotone_examples_reach_both_rules() -> None:
    """test_monotone_elementwise's explicit examples hit each of its two rules, so neither is vacuous."""
    def first(metric: str, bl: list[float], pairs: list[tuple[float, float]]) -> MetricComparison:
        return compare_metric(metric, _vals(100.0, bl), [100.0 * math.exp(x) for x, _ in pairs])

    assert first(*REGRESSED_EXAMPLE).verdict is Verdict.FAIL
    slightly = first(*SLIGHTLY_WORSE_EXAMPLE)
    assert slightly.verdict is Verdict.PASS and slightly.worse


# --- rendering and export ----------------------------------------------------------------------


def _mixed() -> list[Comparison]:
    base = make_result()
    return [
        compare(make_result(version="0.2.0"), base),
        compare(make_result({"tpot_p50": 1.3}, version="0.2.0"), base),
        compare(make_result(), None, fingerprint="cpu"),
    ]


def test_render_table_aligned() -> None:
    text = render_table(_mixed())
    lines = text.splitlines()
    header = [ln for ln in lines if ln.strip().startswith("metric")]
    assert len(header) == 2 and all(h.split() == ["metric", "baseline", "now", "delta", "%", "noise", "%", "tol", "%", "verdict"] for h in header)
    block = lines[lines.index(header[1]) : lines.index(header[1]) + 6]
    assert len({ln.index("%") for ln in block[1:]}) == 1  # the delta column is aligned
    assert "tpot_p50*" in text and "+30.0%" in text and "sim 0.1.0 -> 0.2.0" in text


def test_render_markdown_regressions_first() -> None:
    md = render_markdown(_mixed(), title="Perf")
    assert md.startswith("## Perf") and "**1 failed, 1 new, 1 passed**" in md
    assert md.index("### Regressions") < md.index("All results")
    assert "`sim 0.1.0 → 0.2.0`" in md and "| tpot_p50 (gated) |" in md


def test_to_benchmark_json_shape() -> None:
    r = make_result()
    r.repeats[0].records = [RequestRecord(4, 3, start=0.0, chunk_times=[0.1, 0.2, 0.3], end=0.3, output_tokens=3)]
    doc = to_benchmark_json([r, make_result({"tpot_p50": 2.0})])
    assert set(doc) >= {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    b0, b1 = doc["benchmarks"]
    assert b0["stats"]["rounds"] == 1 and b0["stats"]["mean"] == pytest.approx(0.3)  # per-request e2el
    assert b1["stats"]["rounds"] == 3 and b1["stats"]["median"] == pytest.approx(1.5)  # e2el_mean per repeat, s
    for key in ("min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "ops", "outliers"):
        assert key in b1["stats"]
    assert b1["extra_info"]["tpot_p50"] == pytest.approx(20.0) and b1["name"] == r.entry_id
    json.dumps(doc)


def test_pytest_benchmark_reads_export(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pytest_benchmark")
    from pytest_benchmark.storage.file import FileStorage

    path = tmp_path / "0001_mgpu.json"
    path.write_text(json.dumps(to_benchmark_json([make_result(), make_result({"tpot_p50": 2.0})])))

    class Log:
        def warning(self, text: str) -> None:
            raise AssertionError(text)

        info = debug = warning

    benches = list(FileStorage(str(tmp_path), logger=Log(), default_machine_id="x").load_benchmarks(str(path)))
    assert len(benches) == 2 and benches[0]["median"] == pytest.approx(1.5)


# --- the one failure rule, identity, history ---------------------------------------------------


def test_failure_rule_table() -> None:
    from pytest_mgpu.judge.verdicts import fails

    assert {v for v in Verdict if fails(v)} == {Verdict.INVALID, Verdict.FAIL}
    assert {v for v in Verdict if fails(v, strict=True)} == {
        Verdict.INVALID, Verdict.FAIL, Verdict.WARN, Verdict.MISMATCH, Verdict.NEW,
    }
    assert GateConfig(strict=True).is_failure(Verdict.NEW) and not GateConfig().is_failure(Verdict.MISMATCH)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: setattr(r, "model", "llama-2-7b"), "model tiny; this run: llama-2-7b"),
        (lambda r: setattr(r, "engine", "vllm"), "engine sim; this run: vllm"),
        (lambda r: setattr(r, "layout", Layout(tp=1)), "layout tp=2; this run: tp=1"),
        (lambda r: setattr(r, "workload", Workload(seed=7)), "workload seed=0; this run: seed=7"),
        (lambda r: setattr(r, "engine_options", {"dtype": "fp8"}), "engine options dtype unset; this run: dtype=fp8"),
        (lambda r: setattr(r, "nodeid", "perf_tests/test_x.py::TestB::test_serve[tp2-pp1]"), "test test_serve"),
    ],
)
def test_identity_mismatch_is_never_compared(change, words: str) -> None:  # type: ignore[no-untyped-def]
    now = make_result({"output_throughput_per_gpu": 0.5})
    change(now)
    c = compare(now, make_result())
    assert c.verdict is Verdict.MISMATCH and c.metrics == () and words in c.note and "baseline is for" in c.note


def test_version_and_tuning_options_are_not_identity() -> None:
    """Comparing versions is the point; a tuning knob's change is compared and shown, not hidden."""
    now = make_result({"output_throughput_per_gpu": 0.5}, version="0.2.0")
    now.engine_options = {"max_num_seqs": "8"}
    base = make_result()
    base.engine_options = {}
    c = compare(now, base)
    assert c.verdict is Verdict.FAIL and c.options_changed == [("max-num-seqs", None, "8")]
    assert "max_num_seqs=8 (baseline: max-num-seqs unset)" in side_by_side(c)


def test_gate_config_round_trip() -> None:
    cfg = DEFAULT_CONFIG.with_overrides({"ttft_p50": "12%", "itl_p50": "3%"})
    cfg = GateConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert cfg.tolerance("ttft_p50").pct == pytest.approx(12) and "itl_p50" in cfg.gated
    assert cfg.tolerance("tpot_p99").pct == pytest.approx(10) and cfg.metrics[-1] == "itl_p50"


def test_one_recording_history_is_the_old_rule() -> None:
    base, now = [100.0, 101.0, 99.0], [90.0, 91.0, 89.5]
    a = compare_metric("tpot_p50", base, now)
    b = compare_metric("tpot_p50", base, now, history=())
    assert a == b and a.noise_source == "repeats" and a.recordings == 1


def test_history_spread_widens_the_band_and_centres_the_baseline() -> None:
    """Recordings that drift between sessions (engine restarts) widen the band: no false FAIL."""
    quiet = [[100.0, 100.5, 99.5]]
    drifted = [[112.0, 112.5, 111.5], [95.0, 95.5, 94.5], [104.0, 104.5, 103.5]]
    now = [109.0, 109.5, 108.5]
    one = compare_metric("ttft_p50", quiet[0], now)
    assert one.verdict is Verdict.FAIL  # against one quiet recording, +9% looks like a regression
    hist = compare_metric("ttft_p50", drifted[-1], now, history=drifted[:-1])
    assert hist.recordings == 3 and hist.noise_source == "3 recordings"
    assert hist.base == pytest.approx((112.0 * 95.0 * 104.0) ** (1 / 3), rel=1e-9)  # geometric mean of medians
    assert hist.verdict is not Verdict.FAIL and (hist.noise_pct or 0) > (one.noise_pct or 0)
    # A steady history keeps the gate's power: a 20% regression still FAILs.
    steady = [[100.0, 100.5, 99.5], [100.4, 100.9, 99.9], [99.8, 100.3, 99.3]]
    assert compare_metric("ttft_p50", steady[-1], [120.0, 120.5, 119.5], history=steady[:-1]).verdict is Verdict.FAIL


@given(metric_names, st.lists(logs, min_size=1, max_size=4), logs, st.floats(0.5, 2.0), st.integers(-20, 20))
def test_scale_invariant_with_history(metric: str, hist: list[list[float]], nl: list[float], ratio: float,
                                      exp2: int) -> None:
    recs = [_vals(100.0, h) for h in hist]
    now = _vals(100.0 * ratio, nl)
    c = 2.0**exp2
    a = compare_metric(metric, recs[-1], now, history=recs[:-1])
    b = compare_metric(metric, [x * c for x in recs[-1]], [x * c for x in now], history=[[x * c for x in r] for r in recs[:-1]])
    assert a.verdict is b.verdict


def test_invalid_metric_says_what() -> None:
    now = make_result()
    for rep in now.repeats:
        rep.summary["tpot_p50"] = 0.0
    c = compare(now, make_result())
    assert c.verdict is Verdict.INVALID
    assert "tpot_p50: not positive (baseline 10, this run 0)" in c.note


def test_mismatch_and_options_in_reports() -> None:
    other = make_result()
    other.model = "llama"
    other.engine_options = {"speed": "0.8"}
    comps = [compare(other, make_result()), *_mixed()]
    text = render_table(comps)
    assert "MISMATCH" in text and "engine options: speed=0.8" in text
    md = render_markdown(comps)
    assert "1 mismatched" in md and "speed=0.8" in md and "baseline is for model tiny" in md


def test_identity_equality_is_by_value() -> None:
    """A copy of the results module (pytester re-imports lazily loaded modules) makes equal identities."""
    import importlib.util
    import types

    ident = make_result().identity
    assert ident == types.SimpleNamespace(values=ident.values) and hash(ident) == hash(make_result().identity)
    spec = importlib.util.find_spec("pytest_mgpu.judge.results")
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.Identity(ident.values) == ident and ident == copy.Identity(ident.values)


def test_results_round_trip_keeps_the_workload_and_identity() -> None:
    r = make_result()
    r.workload = Workload(vocab_size=128, seed=3)
    r.engine_options = {"speed": "0.8", "dtype": "fp8"}
    r.first_repeats = list(r.repeats)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["workload"]["vocab_size"] == 128 and d["test"] == "test_serve[tp2-pp1]"
    assert d["engine_config"] == {"dtype": "fp8"} and d["measurement"] == "re-measurement"
    back = BenchResult.from_dict(d)
    assert back.workload == r.workload and back.identity == r.identity and back.engine_options == r.engine_options
    assert len(back.first_repeats) == 3


# --- the noise band's terms, pinned (nox -s mutants) -------------------------------------------
#: The band of one recording against one run of identical repeats: k x c(n) x floor x sqrt(2/n), with
#: k = 2.5, the noise floor 0.5% and c(3) = 1.159 (median vs mean, docs/gate.md); written out here.
C3 = 1.159


def test_band_of_identical_repeats_is_k_times_the_floored_median_noise() -> None:
    m = compare_metric("tpot_p50", [10.0] * 3, [10.2] * 3)
    assert m.noise_log == pytest.approx(2.5 * C3 * 0.005 * math.sqrt(2 / 3), rel=1e-9)
    assert m.noise_pct == pytest.approx(100 * (math.exp(2.5 * C3 * 0.005 * math.sqrt(2 / 3)) - 1), rel=1e-9)
    # Eight repeats: the median's asymptotic factor sqrt(pi / 2).
    m8 = compare_metric("tpot_p50", [10.0] * 8, [10.2] * 8)
    assert m8.noise_log == pytest.approx(2.5 * math.sqrt(math.pi / 2) * 0.005 * math.sqrt(2 / 8), rel=1e-9)


def test_band_uses_the_repeats_spread_above_the_floor() -> None:
    base, now = [10.0, 10.4, 9.6], [10.0, 10.4, 9.6]
    s = statistics.stdev(math.log(v / 10.0) for v in base)
    m = compare_metric("tpot_p50", base, now)
    assert m.noise_log == pytest.approx(2.5 * C3 * s * math.sqrt(2 / 3), rel=1e-9)


def test_drift_enters_the_band_once_per_side() -> None:
    cfg = GateConfig(drift=0.03)
    m = compare_metric("tpot_p50", [10.0] * 3, [10.2] * 3, cfg)
    assert m.noise_log == pytest.approx(2.5 * math.sqrt(2 * C3**2 * 0.005**2 / 3 + 2 * 0.03**2), rel=1e-9)


def test_noise_k_and_floor_from_the_config() -> None:
    cfg = GateConfig(noise_k=1.0, noise_floor=0.02)
    m = compare_metric("tpot_p50", [10.0] * 3, [10.2] * 3, cfg)
    assert m.noise_log == pytest.approx(1.0 * C3 * 0.02 * math.sqrt(2 / 3), rel=1e-9)


def test_between_recording_spread_widens_the_band_and_centres_the_value() -> None:
    """Two recordings with medians 10 and 11: the baseline is their geometric mean, and the band holds
    their sample variance, once for the mean of two recordings and once for the run."""
    history, latest = [[10.0] * 3], [11.0] * 3
    m = compare_metric("tpot_p50", latest, [10.5] * 3, history=history)
    var_between = statistics.variance([0.0, math.log(1.1)])
    assert m.base == pytest.approx(10.0 * math.sqrt(1.1), rel=1e-12) and m.recordings == 2
    assert m.noise_log == pytest.approx(2.5 * math.sqrt(var_between / 2 + var_between), rel=1e-9)


def test_exactly_at_the_tolerance_is_within_it() -> None:
    """16 -> 17 is exactly +6.25% (exact in binary): not beyond a 6.25% tolerance, so PASS, not FAIL."""
    cfg = DEFAULT_CONFIG.with_overrides({"tpot_p50": "6.25%", "output_throughput_per_gpu": "6.25%"})
    at = compare_metric("tpot_p50", [16.0] * 3, [17.0] * 3, cfg)
    assert at.delta_pct == 6.25 and at.noise_log is not None and at.noise_log < math.log(17 / 16)
    assert at.verdict is Verdict.PASS
    assert compare_metric("tpot_p50", [16.0] * 3, [17.01] * 3, cfg).verdict is Verdict.FAIL
    better = compare_metric("output_throughput_per_gpu", [16.0] * 3, [17.0] * 3, cfg)
    assert better.verdict is Verdict.PASS
    assert compare_metric("output_throughput_per_gpu", [16.0] * 3, [17.01] * 3, cfg,
                          history=[[16.0] * 3]).verdict is Verdict.IMPROVED


#: The median's noise relative to the mean's for n repeats (docs/gate.md), written out; n >= 8: sqrt(pi/2).
MEDIAN_SE = {1: 1.0, 2: 1.0, 3: 1.159, 4: 1.092, 5: 1.197, 6: 1.136, 7: 1.214, 8: math.sqrt(math.pi / 2)}


@pytest.mark.parametrize("n", sorted(MEDIAN_SE))
def test_band_per_number_of_repeats(n: int) -> None:
    m = compare_metric("tpot_p50", [10.0] * n, [10.2] * n)
    assert m.noise_log == pytest.approx(2.5 * MEDIAN_SE[n] * 0.005 * math.sqrt(2 / n), rel=1e-9)
    assert (m.now, m.base, m.n_base, m.n_now, m.recordings) == (10.2, 10.0, n, n, 1)


def test_in_session_noise_counts_when_recordings_agree() -> None:
    """Two recordings with the same median but noisy repeats: their in-session noise, not their (zero)
    spread, makes the band."""
    noisy = [10.0, 10.4, 9.6]
    s = statistics.stdev(math.log(v / 10.0) for v in noisy)
    m = compare_metric("tpot_p50", noisy, [10.0] * 3, history=[noisy])
    var_in = C3**2 * s**2 / 3
    var_now = C3**2 * 0.005**2 / 3
    assert m.recordings == 2 and m.noise_log == pytest.approx(2.5 * math.sqrt(var_in / 2 + var_now), rel=1e-9)


def test_baseline_stats_edge_cases() -> None:
    from pytest_mgpu.judge.verdicts import BaselineStats, baseline_stats

    assert baseline_stats([]) == BaselineStats(None, 0, 0.0, 0.0, 0.005)
    assert baseline_stats([[]], noise_floor=0.01) == BaselineStats(None, 0, 0.0, 0.0, 0.01)
    one = baseline_stats([[10.0, 10.4, 9.6]])
    s = statistics.stdev(math.log(v / 10.0) for v in [10.0, 10.4, 9.6])
    assert one == BaselineStats(10.0, 1, pytest.approx(C3**2 * s**2 / 3), 0.0, pytest.approx(s))  # type: ignore[arg-type]
    # Values below 1 (seconds, say) are ordinary: two recordings are combined as usual.
    small = baseline_stats([[0.5] * 3, [0.55] * 3])
    assert small.recordings == 2 and small.value == pytest.approx(math.sqrt(0.5 * 0.55))
    assert small.latest_noise == 0.005 and small.var_between == pytest.approx(math.log(1.1) ** 2 / 2)
    # A recording whose median is 0 cannot be averaged in logs: the latest alone is used.
    zero = baseline_stats([[10.0] * 3, [0.0] * 3])
    assert zero.value == 0.0 and zero.recordings == 1


def test_log_std_uses_the_positive_finite_values_only() -> None:
    from pytest_mgpu.judge.verdicts import log_std

    assert log_std([10.0]) == 0.0 and log_std([]) == 0.0
    assert log_std([10.0, 11.0]) == pytest.approx(math.log(1.1) / math.sqrt(2), rel=1e-12)
    assert log_std([0.0, -1.0, math.inf, 10.0, 11.0]) == pytest.approx(math.log(1.1) / math.sqrt(2), rel=1e-12)


def test_no_value_zero_baseline_and_a_latest_recording_without_the_metric() -> None:
    m = compare_metric("tpot_p50", [10.0] * 3, [])
    assert m.verdict is Verdict.INVALID and m.why == "this run has no value for it (baseline 10)"
    z = compare_metric("tpot_p50", [0.0] * 3, [10.0] * 3)
    assert z.verdict is Verdict.INVALID and z.why.startswith("not positive (baseline 0, this run 10)")
    zh = compare_metric("tpot_p50", [0.0] * 3, [10.0] * 3, history=[[10.0] * 3])
    assert zh.verdict is Verdict.INVALID
    # Only earlier recordings have the metric: the latest decides, so it is new.
    assert compare_metric("tpot_p50", [], [10.0] * 3, history=[[10.0] * 3]).verdict is Verdict.NEW
    new = compare_metric("tpot_p50", [], [10.0] * 3)
    assert new.verdict is Verdict.NEW and new.recordings == 0


def test_within_the_tolerance_either_way_is_pass() -> None:
    """Beyond the (tiny) noise but inside the tolerance, better or worse: PASS, never IMPROVED or WARN."""
    assert compare_metric("tpot_p50", [10.0] * 3, [9.8] * 3).verdict is Verdict.PASS
    assert compare_metric("tpot_p50", [10.0] * 3, [10.2] * 3).verdict is Verdict.PASS
    two_bad = compare_metric("tpot_p50", [10.0] * 3, [float("nan"), float("inf"), 10.0])
    assert two_bad.why == "2 of 3 repeats of this run measured no finite value (nan, inf)"


class _Base:
    """A baseline entry with two recordings of tpot_p50 (medians 10 and 11), as the store gives it."""

    entry_id = "perf_tests/test_x.py::test_serve[tp2-pp1]"
    engine_version = "0.1.0"
    invalid = None

    def samples(self, metric: str) -> list[float]:
        return [11.0] * 3 if metric == "tpot_p50" else []

    def history(self, metric: str) -> list[list[float]]:
        return [[10.0] * 3] if metric == "tpot_p50" else []


def test_compare_reads_the_baseline_history() -> None:
    only_tpot = GateConfig(gated=frozenset({"tpot_p50"}), metrics=("tpot_p50",))  # the stub holds tpot_p50 alone
    c = compare(make_result({"tpot_p50": 1.05}, jitter=(1.0, 1.0, 1.0)), _Base(), only_tpot)
    m = c.metric("tpot_p50")
    assert m is not None and m.recordings == 2 and m.base == pytest.approx(10.0 * math.sqrt(1.1))


def test_comparison_fields_for_every_outcome() -> None:
    """What the reports show beside a verdict: ids, both versions, the engine, options, which measurement."""
    base = make_result(version="0.1.0")
    invalid = compare(make_result(invalid="boom", version="0.2.0"), base, engine="sim")
    new = compare(make_result(version="0.2.0"), None)
    other = make_result(version="0.2.0")
    other.model = "llama-2-7b"
    mismatch = compare(other, base)
    for c in (invalid, new, mismatch):
        assert c.entry_id == base.entry_id and c.now_engine_version == "0.2.0" and c.engine == "sim"
        assert c.options == {} and c.measurement == "first"
    assert (invalid.base_engine_version, new.base_engine_version, mismatch.base_engine_version) == ("0.1.0", None, "0.1.0")
    assert (invalid.verdict, new.verdict, mismatch.verdict) == (Verdict.INVALID, Verdict.NEW, Verdict.MISMATCH)
    assert invalid.base_options == {} and new.base_options is None
    assert new.metric("tpot_p50") is None and compare(base, base).metric("no_such_metric") is None


def test_confirm_with_an_invalid_re_measurement_says_so() -> None:
    first = compare(make_result({"tpot_p50": 1.3}), make_result())
    second = compare(make_result(invalid="2 of 3 requests failed"), make_result())
    c = confirm(first, second)
    assert c.verdict is Verdict.INVALID and c.measurement == "re-measurement"
    assert c.note.startswith("first measurement: regression: tpot_p50 +") and "re-measurement not compared" in c.note
    gone = confirm(first, compare(make_result(), make_result()))
    assert gone.verdict is Verdict.WARN and gone.note.startswith("did not reproduce: tpot_p50 failed")


def test_verdict_counts() -> None:
    from pytest_mgpu.judge.verdicts import verdict_counts

    cs = [compare(make_result(), make_result()), compare(make_result(), make_result()), compare(make_result(), None)]
    assert verdict_counts(cs) == {Verdict.PASS: 2, Verdict.NEW: 1}


def test_gate_config_defaults_from_an_empty_document() -> None:
    assert GateConfig.from_dict({}) == GateConfig()
    assert not GateConfig.from_dict({}).strict


def test_tolerance_bounds() -> None:
    assert Tolerance(0.0).fraction == 0.0 and Tolerance.parse("0%").fraction == 0.0
    with pytest.raises(ValueError):
        Tolerance(1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="a bare number is a fraction below 1, write 1% for percent"):
        Tolerance.parse("1")
    with pytest.raises(argparse.ArgumentTypeError):
        Tolerance.parse(True)  # type: ignore[arg-type]
    assert Tolerance.parse(0.5).fraction == 0.5


def test_options_changed_ignores_dashes_case_and_underscores() -> None:
    base, now = make_result(), make_result()
    base.engine_options, now.engine_options = {"--Max_Num_Seqs": "8"}, {"max-num-seqs": "8", "dtype": "fp8"}
    c = compare(now, base)
    assert c.options_changed == [("dtype", None, "fp8")]


def test_log_std_of_values_below_one() -> None:
    from pytest_mgpu.judge.verdicts import log_std

    assert log_std([0.5, 0.55]) == pytest.approx(math.log(1.1) / math.sqrt(2), rel=1e-12)


class _Now:
    """A result with only what the gate protocol requires (no engine, options, identity, measurement)."""

    entry_id = _Base.entry_id
    engine_version = "0.2.0"
    invalid = None

    def samples(self, metric: str) -> list[float]:
        return [11.0] * 3 if metric == "tpot_p50" else []


def test_a_re_measurement_says_so() -> None:
    again = make_result()
    again.first_repeats = list(make_result().repeats)
    assert compare(again, make_result()).measurement == "re-measurement"


def test_compare_needs_only_the_protocol() -> None:
    c = compare(_Now(), _Base())
    assert c.verdict is Verdict.PASS and c.engine is None and c.options is None and c.measurement == "first"
    assert compare(_Now(), None).note == "no baseline"


def test_a_warn_only_metric_is_not_listed_as_within_noise() -> None:
    c = compare(make_result({"ttft_p99": 1.5}), make_result())
    assert c.verdict is Verdict.WARN and "within noise" not in c.note


def test_gate_config_reads_every_setting_back() -> None:
    cfg = GateConfig(noise_k=3.0, noise_floor=0.01, drift=0.02)
    back = GateConfig.from_dict(cfg.to_dict(), strict=True)
    assert (back.noise_k, back.noise_floor, back.drift, back.strict) == (3.0, 0.01, 0.02, True)


def test_tolerance_from_a_small_float() -> None:
    assert Tolerance.parse(1e-5).fraction == 1e-5  # str(1e-05) would not parse as text


# Mutants of verdicts.py and shard.py that `nox -s mutants` leaves alive because no input can tell them
# from the code (equivalent), or only an exact floating-point tie could:
# - compare_metric `r > 0` -> `r >= 0`, `r < 0` -> `r <= 0` or `r < 1`: r == 0 means now == base, never
#   beyond the tolerance; 0 < r < 1 beyond the tolerance is taken by the first (worse) branch.
# - compare_metric `abs(log_q) > band` -> `>=`: differs only when a log ratio equals k x SE exactly.
# - log_std `ref = vals[0]` -> `vals[1]`, `log(v / ref)` -> `log(v * ref)`; baseline_stats `ref = meds[0]` ->
#   `meds[1]`: the reference only shifts every log by one constant, which a standard deviation, a
#   variance and a geometric mean do not see.
# - parse_metric_tolerance / parse_shard `partition` -> `rpartition`: a text with a second "=" or "/" is
#   rejected either way (an unknown metric or tolerance; a non-number shard), only the message differs.
# - shard.assign `loads = [0.0] * n` -> `[1.0] * n`: a constant added to every load moves no argmin.
# - compare `getattr(base, "engine_options", None) if base is not None else None` -> `... or True`: with
#   no base, getattr(None, ..., None) is None as well.
# - compare `... if compared else Verdict.NEW` (a baseline lacking every compared metric): left to the
#   change that makes a baseline lacking a gated metric an error (issue 24 item 6, another branch).
# The other survivors there only change message text or the order of notes.
