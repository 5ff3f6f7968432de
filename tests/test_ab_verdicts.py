"""The paired A/B rule (pytest_mgpu.judge.ab_verdicts): Student's t, one look, the sequential decision, properties."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_mgpu.judge.ab_verdicts import (
    AbConfig,
    LookState,
    decide,
    decide_metric,
    log_tolerance,
    look,
    t_quantile,
    t_sf,
)
from pytest_mgpu.judge.verdicts import GateConfig, Verdict

TPUT, TPOT = "output_throughput_per_gpu", "tpot_p50"
CFG = AbConfig()


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.99, 2, 6.964557), (0.995, 2, 9.924843), (0.975, 10, 2.228139), (0.95, 1, 6.313752), (0.99, 30, 2.457262)],
)
def test_t_quantile_matches_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-6)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-6)


@given(st.floats(-30, 30), st.integers(1, 60))
def test_t_sf_matches_scipy(t: float, df: int) -> None:
    # 1e-9, not tighter: near t = 0 scipy's t.sf loses the last digits (it returns 0.5 for t = 3.5e-10 at
    # df = 1, where the exact value is 0.5 - 1.1e-10); test_t_sf_is_exact_for_one_degree_of_freedom checks there.
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_sf(t, df) == pytest.approx(float(scipy_stats.t.sf(t, df)), abs=1e-9)


@given(st.one_of(st.floats(-1e-6, 1e-6), st.floats(-30, 30)))
@example(3.476270157323002e-10)
def test_t_sf_is_exact_for_one_degree_of_freedom(t: float) -> None:
    """At df = 1 Student's t is the Cauchy distribution, whose tail has a closed form."""
    assert t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12, abs=1e-15)


def test_log_tolerance_is_the_linear_tolerance_line() -> None:
    # A throughput at 0.95x and a latency at 1.05x sit exactly on a 5% tolerance.
    assert math.exp(-log_tolerance(TPUT, 0.05)) == pytest.approx(0.95)
    assert math.exp(log_tolerance(TPOT, 0.05)) == pytest.approx(1.05)


def test_look_states() -> None:
    delta = log_tolerance(TPOT, 0.05)
    assert look([0.10, 0.11, 0.09, 0.10], delta, CFG).state is LookState.REGRESSED
    assert look([-0.10, -0.11, -0.09, -0.10], delta, CFG).state is LookState.IMPROVED
    assert look([0.001, -0.002, 0.0, 0.001], delta, CFG).state is LookState.INSIDE
    # Worse on average by more than half the tolerance, but far too noisy to tell: undecided.
    assert look([0.30, -0.20, 0.10], delta, CFG).state is LookState.UNDECIDED
    # Significant but smaller than half the tolerance: never a regression; here inside.
    assert look([0.02, 0.021, 0.019, 0.02], delta, CFG).state is LookState.INSIDE


def test_noise_floor_keeps_identical_rounds_from_being_infinitely_significant() -> None:
    lk = look([0.0, 0.0, 0.0], log_tolerance(TPOT, 0.05), CFG)
    assert lk.sd == pytest.approx(math.sqrt(2) * CFG.noise_floor)
    assert lk.state is LookState.INSIDE


def _series(ratio: float, n: int, jitter: float = 0.01) -> tuple[list[float], list[float]]:
    """Old values around 100, new = old * ratio, with a deterministic zig-zag of +-jitter."""
    old = [100.0 * (1 + (jitter if i % 2 else -jitter)) for i in range(n)]
    new = [o * ratio * (1 + (-jitter if i % 3 else jitter) / 2) for i, o in enumerate(old)]
    return old, new


def test_a_clear_regression_fails_only_when_confirmed_at_the_next_look() -> None:
    old, new = _series(1.20, 3)  # latency 20% worse
    at3 = decide_metric(TPOT, old, new, 0.05, True, CFG, final=False)
    assert at3.state is LookState.UNDECIDED and at3.verdict is Verdict.WARN and "confirm" in at3.note
    old, new = _series(1.20, 4)
    at4 = decide_metric(TPOT, old, new, 0.05, True, CFG, final=False)
    assert at4.verdict is Verdict.FAIL and at4.note == "regressed at rounds 3 and 4"
    assert at4.delta_pct == pytest.approx(20, abs=2) and at4.ci_low_pct < at4.delta_pct < at4.ci_high_pct
    no_confirm = decide_metric(TPOT, *_series(1.20, 3), 0.05, True, replace(CFG, confirm=False), final=False)
    assert no_confirm.verdict is Verdict.FAIL


def test_a_warn_only_metric_never_fails() -> None:
    m = decide_metric("tpot_p99", *_series(1.5, 5), 0.10, False, CFG, final=False)
    assert m.verdict is Verdict.WARN and m.note.startswith("regressed")


def test_throughput_direction() -> None:
    worse = decide_metric(TPUT, *_series(0.80, 5), 0.05, True, CFG, final=False)
    better = decide_metric(TPUT, *_series(1.25, 5), 0.05, True, CFG, final=False)
    assert worse.verdict is Verdict.FAIL and worse.delta_pct == pytest.approx(-20, abs=2)
    assert better.verdict is Verdict.IMPROVED


def test_non_positive_values_make_the_metric_invalid_never_fail() -> None:
    m = decide_metric(TPOT, [5.0, 5.0, 5.0], [0.0, 9.0, 9.0], 0.05, True, CFG, final=False)
    assert m.verdict is Verdict.INVALID and m.state is LookState.INVALID
    d = decide({TPOT: [5.0, 5.0, 5.0]}, {TPOT: [0.0, 9.0, 9.0]}, GateConfig(), CFG)
    assert d.done and d.verdict is Verdict.INVALID


def test_unequal_rounds_are_an_error() -> None:
    with pytest.raises(ValueError, match="paired"):
        decide_metric(TPOT, [1.0, 2.0], [1.0], 0.05, True, CFG, final=False)


GATE = GateConfig()


def _decide(ratios: dict[str, float], n: int, cfg: AbConfig = CFG, jitter: float = 0.01) -> object:
    old = {m: _series(1.0, n, jitter)[0] for m in GATE.metrics}
    new = {m: _series(ratios.get(m, 1.0), n, jitter)[1] for m in GATE.metrics}
    return decide(old, new, GATE, cfg)


def test_decide_waits_for_min_rounds_then_passes_an_unchanged_engine() -> None:
    d2 = _decide({}, 2)
    assert not d2.done and d2.verdict is Verdict.WARN
    d3 = _decide({}, 3)
    assert d3.done and d3.verdict is Verdict.PASS and d3.rounds == 3


def test_decide_stops_at_a_confirmed_fail_and_names_it() -> None:
    assert not _decide({TPOT: 1.3}, 3).done
    d = _decide({TPOT: 1.3}, 4)
    assert d.done and d.verdict is Verdict.FAIL
    assert [m.metric for m in d.failed_metrics] == [TPOT]
    assert d.note.startswith("regression: tpot_p50 +")


def test_decide_at_the_cap_turns_undecided_into_warn() -> None:
    cfg = replace(CFG, max_rounds=4)
    # A 4% latency rise measured with +-4% jitter: not provably inside 5%, not beyond it.
    d = _decide({TPOT: 1.04}, 4, cfg, jitter=0.04)
    assert d.done and d.verdict is Verdict.WARN
    assert "tpot_p50: inconclusive after 4 rounds" in d.note


def test_decide_reports_invalid_runs() -> None:
    d = decide({TPOT: [1.0] * 3}, {TPOT: [1.0] * 3}, GATE, CFG, invalid="round 2 new: 3 requests failed")
    assert d.done and d.verdict is Verdict.INVALID and "3 requests failed" in d.note


@given(
    st.lists(st.floats(-0.3, 0.3), min_size=3, max_size=12),
    st.floats(0.01, 0.2),
)
@example(d=[0.2, 0.21, 0.19, 0.2], tol=0.05)  # regressed: every round 20% worse
@example(d=[-0.2, -0.21, -0.19, -0.2], tol=0.05)  # improved
@example(d=[0.0, 0.001, -0.001, 0.0], tol=0.05)  # provably inside
def test_swapping_sides_mirrors_the_verdict(d: list[float], tol: float) -> None:
    """A/B symmetry: old and new swapped turns a regression into an improvement and vice versa.

    Only these two mirror: "inside" is one-sided (provably not worse beyond the tolerance), so a
    0-0-0-25% rise that is undecided becomes inside once swapped.
    """
    old = [100.0] * len(d)
    new = [100.0 * math.exp(x) for x in d]
    ab = decide_metric(TPOT, old, new, tol, True, replace(CFG, confirm=False), final=True)
    ba = decide_metric(TPOT, new, old, tol, True, replace(CFG, confirm=False), final=True)
    assert (ab.state is LookState.REGRESSED) == (ba.state is LookState.IMPROVED)
    assert (ab.state is LookState.IMPROVED) == (ba.state is LookState.REGRESSED)


@pytest.mark.parametrize(("d", "state"), [
    ([0.2, 0.21, 0.19, 0.2], LookState.REGRESSED),
    ([-0.2, -0.21, -0.19, -0.2], LookState.IMPROVED),
    ([0.0, 0.001, -0.001, 0.0], LookState.INSIDE),
])
def test_mirror_examples_reach_every_state(d: list[float], state: LookState) -> None:
    """The explicit examples above are what they say, so the symmetry test sees every state."""
    new = [100.0 * math.exp(x) for x in d]
    assert decide_metric(TPOT, [100.0] * len(d), new, 0.05, True, replace(CFG, confirm=False), final=True).state is state


@given(st.lists(st.floats(-0.2, 0.2), min_size=3, max_size=10), st.floats(0.0, 0.5))
def test_monotone_making_new_worse_never_improves_the_state(d: list[float], extra: float) -> None:
    order = {LookState.IMPROVED: 0, LookState.INSIDE: 1, LookState.UNDECIDED: 2, LookState.REGRESSED: 3}
    delta = log_tolerance(TPOT, 0.05)
    cfg = replace(CFG, confirm=False)
    before = look(d, delta, cfg).state
    after = look([x + extra for x in d], delta, cfg).state
    # Shifting every round worse raises the mean, the t statistic and the upper bound together.
    assert order[after] >= order[before]


@given(st.lists(st.floats(0.5, 2.0), min_size=3, max_size=8), st.sampled_from([0.25, 0.5, 2.0, 4.0]))
def test_scale_invariance(ratios: list[float], scale: float) -> None:
    old = [10.0 + i for i in range(len(ratios))]
    new = [o * r for o, r in zip(old, ratios)]
    a = decide_metric(TPOT, old, new, 0.05, True, CFG, final=True)
    b = decide_metric(TPOT, [o * scale for o in old], [x * scale for x in new], 0.05, True, CFG, final=True)
    assert a.verdict is b.verdict and a.state is b.state


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="min_rounds"):
        AbConfig(min_rounds=1)
    with pytest.raises(ValueError, match="max_rounds"):
        AbConfig(min_rounds=5, max_rounds=4)
    with pytest.raises(ValueError, match="alpha"):
        AbConfig(alpha=0.7)


# --- rules pinned against mutants (nox -s mutants) ---------------------------------------------


def test_a_significant_change_below_fail_fraction_of_the_tolerance_is_no_regression() -> None:
    """2% worse in every one of 10 rounds: the t-test alone rejects "not worse" (t ~ 9), but a FAIL also
    needs the mean beyond fail_fraction (0.5) of the 5% tolerance, 2.44%: it is provably inside."""
    delta = log_tolerance(TPOT, 0.05)
    d = [0.02] * 10
    lk = look(d, delta, CFG)
    assert lk.t > t_quantile(1 - CFG.alpha, 9) and lk.mean < CFG.fail_fraction * delta
    assert lk.state is LookState.INSIDE
    m = decide_metric(TPOT, [100.0] * 10, [100.0 * math.exp(0.02)] * 10, 0.05, True, CFG, final=True)
    assert m.verdict is Verdict.PASS and m.threshold_pct == pytest.approx(100 * (math.sqrt(1.05) - 1))
    # Past the threshold the same rounds do fail: the threshold, not the t-test, decided above.
    assert look([0.03] * 10, delta, CFG).state is LookState.REGRESSED


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
@pytest.mark.parametrize("side", ["old", "new"])
def test_a_round_without_a_finite_positive_value_makes_the_metric_invalid(bad: float, side: str) -> None:
    good = [5.0, 5.1, 4.9, 5.0]
    broken = [5.0, bad, 4.9, 5.0]
    old, new = (broken, good) if side == "old" else (good, broken)
    m = decide_metric(TPOT, old, new, 0.05, True, CFG, final=True)
    assert m.verdict is Verdict.INVALID and m.state is LookState.INVALID
    assert m.note == "a round measured a non-positive or non-finite value"


def test_look_statistics_use_n_minus_1_degrees_of_freedom() -> None:
    """Four rounds: mean, sd, se and the bounds with t(0.95, 3) = 2.353363; p from t_sf with 3 df."""
    d = [0.01, 0.03, 0.02, 0.04]
    lk = look(d, log_tolerance(TPOT, 0.05), CFG)
    sd = statistics.stdev(d)
    se = sd / 2
    assert (lk.n, lk.mean, lk.sd, lk.se) == (4, pytest.approx(0.025), pytest.approx(sd), pytest.approx(se))
    assert lk.t == pytest.approx(0.025 / se)
    assert lk.upper == pytest.approx(0.025 + 2.353363 * se, rel=1e-6)
    assert lk.lower == pytest.approx(0.025 - 2.353363 * se, rel=1e-6)
    assert lk.p_worse == pytest.approx(t_sf(0.025 / se, 3), rel=1e-12)


def test_the_t_test_critical_value_uses_n_minus_1_degrees_of_freedom() -> None:
    """t = 4.9 over 4 rounds lies between t(0.995, 5) = 4.03 and t(0.995, 3) = 5.84: not yet a regression."""
    lk = look([0.1, 0.15, 0.05, 0.1], log_tolerance(TPOT, 0.05), CFG)
    assert 4.04 < lk.t < 5.84 and lk.mean > CFG.fail_fraction * log_tolerance(TPOT, 0.05)
    assert lk.state is LookState.UNDECIDED


def test_two_rounds_are_enough_to_look() -> None:
    assert look([0.0, 0.001], log_tolerance(TPOT, 0.05), CFG).n == 2
    with pytest.raises(ValueError, match="a look needs at least 2 rounds"):
        look([0.0], log_tolerance(TPOT, 0.05), CFG)


@pytest.mark.parametrize("sign", [1, -1])
def test_a_mean_exactly_at_the_threshold_is_no_regression_nor_improvement(sign: int) -> None:
    """Four rounds at exactly fail_fraction x delta (exact: 4 x the value / 4): inside, in both directions."""
    delta = log_tolerance(TPOT, 0.05)
    thr = CFG.fail_fraction * delta
    lk = look([sign * thr] * 4, delta, CFG)
    assert lk.mean == sign * thr and abs(lk.t) > t_quantile(1 - CFG.alpha, 3)
    assert lk.state is LookState.INSIDE


def test_a_small_significant_improvement_is_not_improved() -> None:
    """The mirror of the fail_fraction test: 2% better in 10 rounds is inside, 3% better is IMPROVED."""
    delta = log_tolerance(TPOT, 0.05)
    assert look([-0.02] * 10, delta, CFG).state is LookState.INSIDE
    assert look([-0.03] * 10, delta, CFG).state is LookState.IMPROVED


def test_a_regression_is_confirmed_only_by_a_look_of_at_least_min_rounds() -> None:
    """37% worse from the first round: at round 3 the look at rounds 1-2 would already say regressed (t = 80 >
    t(0.995, 1) = 63.7), but it has fewer than min_rounds, so round 3 only asks for one more round."""
    worse = [100.0 * math.exp(0.4)] * 3
    assert look([0.4, 0.4], log_tolerance(TPOT, 0.05), CFG).state is LookState.REGRESSED
    m = decide_metric(TPOT, [100.0] * 3, worse, 0.05, True, CFG, final=False)
    assert m.verdict is Verdict.WARN and m.state is LookState.UNDECIDED
    assert m.note == "regressed at this look; one more round to confirm"
    assert decide_metric(TPOT, [100.0] * 4, worse + worse[:1], 0.05, True, CFG, final=False).verdict is Verdict.FAIL


def test_threshold_per_direction() -> None:
    """Half the tolerance in log terms: sqrt(1.05) - 1 for a latency, 1 - sqrt(0.95) for a throughput."""
    lat = decide_metric(TPOT, [100.0] * 3, [100.0] * 3, 0.05, True, CFG, final=True)
    tput = decide_metric(TPUT, [100.0] * 3, [100.0] * 3, 0.05, True, CFG, final=True)
    assert lat.threshold_pct == pytest.approx(100 * (math.sqrt(1.05) - 1), rel=1e-12)
    assert tput.threshold_pct == pytest.approx(100 * (1 - math.sqrt(0.95)), rel=1e-12)
    assert (lat.tolerance_pct, lat.rounds, lat.old, lat.new) == (5.0, 3, 100.0, 100.0)


def test_decide_without_metrics_or_rounds() -> None:
    d = decide({}, {}, GATE, CFG)
    assert (d.verdict, d.done, d.rounds, d.metrics, d.note) == (Verdict.WARN, False, 0, (), "no metric to compare")
    # A metric only one side measured is left out, not an error.
    one_side = decide({TPOT: [1.0] * 3}, {TPOT: [1.0] * 3, TPUT: [1.0] * 3}, GATE, CFG)
    assert [m.metric for m in one_side.metrics] == [TPOT]


def test_config_bounds() -> None:
    """The documented ranges, ends included where they are closed: fail_fraction in [0, 1], alpha and beta in
    (0, 0.5), min_rounds >= 2, max_rounds >= min_rounds."""
    AbConfig(fail_fraction=0.0)
    AbConfig(fail_fraction=1.0)
    AbConfig(min_rounds=2, max_rounds=2)
    for bad in ({"fail_fraction": 1.5}, {"alpha": 0.0}, {"alpha": 0.5}, {"beta": 0.0}, {"beta": 0.5}, {"beta": 1.0},
                {"min_rounds": 1}):
        with pytest.raises(ValueError):
            AbConfig(**bad)  # type: ignore[arg-type]


def test_values_below_one_are_ordinary() -> None:
    """Seconds or fractions are positive values like any other: only non-positive or non-finite is invalid."""
    m = decide_metric(TPOT, [0.5] * 4, [0.5] * 4, 0.05, True, CFG, final=True)
    assert m.verdict is Verdict.PASS and m.state is LookState.INSIDE


def test_paired_metric_fields() -> None:
    old, new = _series(1.02, 5)
    m = decide_metric(TPOT, old, new, 0.05, True, CFG, final=True)
    d = [math.log(b / a) for a, b in zip(old, new)]
    lk = look(d, log_tolerance(TPOT, 0.05), CFG)
    assert m.old_values == tuple(old) and m.new_values == tuple(new)
    assert m.p_worse == lk.p_worse and m.sd_pct == pytest.approx(lk.sd * 100)
    assert m.ci_low_pct == pytest.approx(100 * (math.exp(lk.lower) - 1))
    assert m.ci_high_pct == pytest.approx(100 * (math.exp(lk.upper) - 1))
    early = decide_metric(TPOT, old[:2], new[:2], 0.05, True, CFG, final=False)
    assert early.state is LookState.UNDECIDED and early.verdict is Verdict.WARN
    assert early.note == "only 2 round(s); the first look is after 3"


def test_decide_invalid_keeps_the_rounds() -> None:
    d = decide({TPOT: [1.0] * 3}, {TPOT: [1.0] * 3}, GATE, CFG, invalid="round 3 new: 1 request failed")
    assert (d.verdict, d.done, d.rounds, d.metrics) == (Verdict.INVALID, True, 3, ())


def test_t_sf_at_the_infinities_and_zero() -> None:
    assert t_sf(math.inf, 3) == 0.0 and t_sf(-math.inf, 3) == 1.0
    assert t_sf(0.0, 3) == pytest.approx(0.5, abs=1e-12)


def test_stopping_on_a_confirmed_fail_closes_the_other_metrics_as_final() -> None:
    """TPOT fails (confirmed) at round 4 while TTFT is still undecided: the A/B stops, and TTFT is reported
    as inconclusive after 4 rounds, not as waiting for more."""
    n = 4
    old = {m: _series(1.0, n)[0] for m in GATE.metrics}
    new = {m: _series(1.0, n)[1] for m in GATE.metrics}
    new[TPOT] = _series(1.3, n)[1]
    old["ttft_p50"], new["ttft_p50"] = _series(1.0, n, 0.04)[0], _series(1.04, n, 0.04)[1]
    d = decide(old, new, GATE, CFG)
    assert d.done and d.verdict is Verdict.FAIL
    ttft = next(m for m in d.metrics if m.metric == "ttft_p50")
    assert ttft.verdict is Verdict.WARN and ttft.note == "inconclusive after 4 rounds"
    assert "ttft_p50: inconclusive after 4 rounds" in d.note and "output_throughput_per_gpu" not in d.note


# Mutants of ab_verdicts.py that `nox -s mutants` leaves alive, and why no test kills them:
# - look `t > crit` -> `>=`, `t < -crit` -> `<=`, `upper < delta` -> `<=`: differ only on an exact tie of
#   a t statistic or a bound with a quantile computed by bisection.
# - _betacf's `abs(d) > tiny` / `abs(c) > tiny` guards (-> `>=` or always true) and `range(1, 400)` ->
#   `401`: the guards replace a value below 1e-300 that never occurs for the df and t the A/B uses,
#   and the loop has converged (|delta - 1| < 1e-15) long before 400 terms; `abs(delta - 1.0)` ->
#   `abs(delta + 1.0)`/`- 2.0`/`<=` only run all 400 terms to the same limit; t_sf matches
#   scipy.stats.t.sf to 1e-12 over t in [-30, 30], df in [1, 60] (test_t_sf_matches_scipy).
# - betainc's `x >= 1.0` -> `x > 1.0` / `>= 2.0` / `return 2.0`: t_sf never calls it with x >= 1 (x is
#   t^2/(df+t^2) < 1, or df/(df+t^2) < 1 when t^2 >= df > 0). `x < (a+1)/(a+b+2)` -> `<=` or other
#   constants: the switch point only picks which of two converging continued fractions is summed.
#   t_sf's `t2 < df` -> `<=` (the same two forms meet there) and `tail if t > 0` -> `t >= 0` (at t = 0
#   the tail is 0.5 = 1 - 0.5).
# - decide_metric `replace(pm, verdict=Verdict.WARN, state=...)` without the verdict: pm starts as WARN.
# - decide's `if done and not cap` -> `or`, `open_` / `if open_ and done` (-> `or`): evaluating the
#   metrics as final while the A/B goes on changes their notes, never `done` (computed before) or a
#   verdict (undecided and unconfirmed are WARN either way); the text of the decision's note only.
# The other survivors there only change message text.
