"""The gate's rules at their edges, and the notes it writes, word for word.

Each test here was written against a mutant of judge/verdicts.py that the rest of the suite let
live (``nox -s mutants``; docs/mutants.md): a worse value within tolerance but beyond noise, the
order of a note's parts, a re-measurement's note, a baseline that has none of the gated metrics.
"""

from __future__ import annotations

import pytest
from test_compare import TwoRecordings, make_result  # type: ignore[import-not-found]

from pytest_mgpu.errors import BaselineError
from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.judge.verdicts import (
    GateConfig,
    Verdict,
    compare,
    compare_metric,
    confirm,
    default_tolerance,
    parse_metric_tolerance,
)

STEADY = (1.0, 1.0, 1.0)  # no spread between repeats: the band is the noise floor alone


def test_worse_within_tolerance_but_beyond_noise_passes() -> None:
    """3% slower with a 5% tolerance: PASS, whatever the noise (never IMPROVED, never WARN)."""
    base = [10.0, 10.0, 10.0]
    m = compare_metric("tpot_p50", base, [10.3] * 3, history=[base])
    assert m.verdict is Verdict.PASS and m.delta_pct == pytest.approx(3.0)
    assert compare_metric("output_throughput_per_gpu", base, [9.7] * 3, history=[base]).verdict is Verdict.PASS


def test_better_within_tolerance_is_pass_and_beyond_is_improved() -> None:
    base = [10.0, 10.0, 10.0]
    assert compare_metric("tpot_p50", base, [9.7] * 3, history=[base]).verdict is Verdict.PASS
    assert compare_metric("tpot_p50", base, [9.0] * 3, history=[base]).verdict is Verdict.IMPROVED
    assert compare_metric("output_throughput_per_gpu", base, [11.0] * 3, history=[base]).verdict is Verdict.IMPROVED


def test_p90_and_p99_have_the_tail_tolerance() -> None:
    assert default_tolerance("e2el_p90") == default_tolerance("ttft_p99") != default_tolerance("ttft_p50")


def test_a_metric_tolerance_splits_at_the_first_equals_sign() -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="Could not parse tolerance: '5%=3%'"):
        parse_metric_tolerance("ttft_p50=5%=3%")  # the last "=" would give the metric "ttft_p50=5%"


def measured(r: BenchResult, metric: str, value: float) -> BenchResult:
    """``r`` with ``metric`` measured as ``value`` in every repeat."""
    r.repeats = [RepeatResult({**x.summary, metric: value}) for x in r.repeats]
    return r


def _without(metric: str, factors: dict[str, float] | None = None) -> BenchResult:
    r = make_result(factors)
    r.repeats = [RepeatResult({k: v for k, v in x.summary.items() if k != metric}) for x in r.repeats]
    return r


def test_a_regressions_note_comes_before_what_the_baseline_lacks() -> None:
    base = _without("tpot_p99")
    c = compare(make_result({"output_throughput_per_gpu": 0.8}, jitter=STEADY), base)
    assert c.verdict is Verdict.FAIL
    fail = c.metric("output_throughput_per_gpu")
    assert c.note == f"regression: {fail.describe()}; baseline lacks tpot_p99"  # type: ignore[union-attr]


def test_a_not_comparable_note_comes_first() -> None:
    base = _without("tpot_p99")
    now = measured(make_result(jitter=STEADY), "tpot_p50", float("nan"))
    c = compare(now, base)
    assert c.verdict is Verdict.INVALID
    assert c.note == f"not comparable: {c.metric('tpot_p50').describe()}; baseline lacks tpot_p99"  # type: ignore[union-attr]


def test_a_within_noise_note_comes_first() -> None:
    base = _without("tpot_p99")
    wide = (1.0, 1.3, 0.7)
    c = compare(make_result({"tpot_p50": 1.1}, jitter=wide), base)
    assert c.verdict is Verdict.WARN
    m = c.metric("tpot_p50")
    assert c.note == f"beyond tolerance but within noise: {m.describe()}; baseline lacks tpot_p99"  # type: ignore[union-attr]


def test_a_baseline_with_none_of_the_metrics_is_new_when_none_is_gated() -> None:
    cfg = GateConfig(gated=frozenset(), metrics=("e2el_p90",))
    c = compare(make_result(), make_result(), cfg)
    assert c.verdict is Verdict.NEW and c.note == "baseline lacks e2el_p90"


def test_a_gated_metric_the_run_has_at_zero_may_be_missing_from_the_baseline() -> None:
    """A gated metric the run measured as 0 (TPOT of one-token outputs) cannot be recorded, so its
    absence from the baseline is no error: it is NEW."""
    base = _without("tpot_p50")
    now = measured(make_result(), "tpot_p50", 0.0)
    c = compare(now, base)
    assert c.metric("tpot_p50").verdict is Verdict.NEW  # type: ignore[union-attr]
    now = measured(now, "tpot_p50", 0.5)
    with pytest.raises(BaselineError, match="lacks the gated metric tpot_p50"):
        compare(now, base)


# --- the notes of a re-measurement ------------------------------------------------------------------

def test_a_confirmed_fail_names_only_the_failing_metrics() -> None:
    base = make_result()
    first = compare(make_result({"output_throughput_per_gpu": 0.8}, jitter=STEADY), base)
    second = compare(make_result({"output_throughput_per_gpu": 0.79, "tpot_p50": 0.9}, jitter=STEADY), base)
    c = confirm(first, second)
    assert c.verdict is Verdict.FAIL
    assert c.note == "confirmed by a re-measurement; " + c.metric("output_throughput_per_gpu").describe()  # type: ignore[union-attr]


def test_a_confirmed_improvement_names_only_the_improved_metrics() -> None:
    base = TwoRecordings(make_result())
    first = compare(make_result({"output_throughput_per_gpu": 1.25}, jitter=STEADY), base)
    second = compare(make_result({"output_throughput_per_gpu": 1.24}, jitter=STEADY), base)
    c = confirm(first, second)
    assert c.verdict is Verdict.IMPROVED
    assert c.note == ("improvement confirmed by a re-measurement; "
                      + c.metric("output_throughput_per_gpu").describe())  # type: ignore[union-attr]


def test_an_unconfirmed_improvement_keeps_the_re_measurements_note() -> None:
    base = TwoRecordings(make_result())
    first = compare(make_result({"output_throughput_per_gpu": 1.25}, jitter=STEADY), base)
    wide = (1.0, 1.3, 0.7)
    second = compare(make_result({"tpot_p50": 1.1}, jitter=wide), base)
    assert second.verdict is Verdict.WARN and second.note
    c = confirm(first, second)
    was = first.metric("output_throughput_per_gpu").describe()  # type: ignore[union-attr]
    assert c.note == f"improvement not confirmed: {was} in the first measurement, not on a re-measurement; {second.note}"
    worse = confirm(first, compare(make_result({"tpot_p50": 1.3}, jitter=STEADY), base))
    assert worse.note == (f"improvement not confirmed: {was} in the first measurement, not on a re-measurement; "
                          "tpot_p50 failed on the re-measurement only")



def test_only_an_unjudged_improvement_or_bad_numbers_carry_a_why() -> None:
    base = [10.0, 10.1, 9.9]
    for now in (base, [10.4] * 3, [12.0] * 3):
        m = compare_metric("tpot_p50", base, now)
        assert m.why == "" and "why" not in m.to_dict()
    assert compare_metric("tpot_p50", base, [8.0] * 3).why  # better against one recording: PASS, says why
    new = compare_metric("tpot_p50", [], [10.0])  # no baseline value: NEW, nothing to explain
    assert new.verdict is Verdict.NEW and new.why == "" and new.describe() == "tpot_p50: NEW (no data on one side)"
