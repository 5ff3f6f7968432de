"""The A/B decision's verdicts and notes, word for word, at each state of the sequential rule.

Written against mutants of judge/ab_verdicts.py that the rest of the suite let live (``nox -s
mutants``; docs/mutants.md): an unconfirmed regression at the last look, a rule without
confirmation, a warn-only metric that cannot decide, and what an unfinished A/B says.
"""

from __future__ import annotations

from dataclasses import replace

from test_ab_verdicts import CFG, TPOT, _decide, _series  # type: ignore[import-not-found]

from pytest_mgpu.judge.ab_verdicts import LookState, decide_metric
from pytest_mgpu.judge.verdicts import Verdict


def test_a_regression_seen_only_at_the_last_look_warns_and_says_so() -> None:
    m = decide_metric(TPOT, *_series(1.20, 3), 0.05, True, CFG, final=True)
    assert (m.verdict, m.state) == (Verdict.WARN, LookState.REGRESSED)
    assert m.note == "regressed at round 3, not confirmed (stopped there)"
    going = decide_metric(TPOT, *_series(1.20, 3), 0.05, True, CFG, final=False)
    assert (going.verdict, going.state) == (Verdict.WARN, LookState.UNDECIDED)
    assert going.note == "regressed at this look; one more round to confirm"


def test_without_confirmation_one_look_fails_and_names_its_round() -> None:
    m = decide_metric(TPOT, *_series(1.20, 3), 0.05, True, replace(CFG, confirm=False), final=False)
    assert m.verdict is Verdict.FAIL and m.note == "regressed at round 3"
    warn_only = decide_metric(TPOT, *_series(1.20, 3), 0.05, False, replace(CFG, confirm=False), final=False)
    assert warn_only.verdict is Verdict.WARN and warn_only.note == "regressed at round 3"


def test_an_undecided_metric_by_kind_and_look() -> None:
    old, new = _series(1.04, 4, jitter=0.04)  # +4% with +-4% jitter: neither inside 5% nor beyond it
    gated = decide_metric(TPOT, old, new, 0.05, True, CFG, final=False)
    assert (gated.verdict, gated.state, gated.note) == (Verdict.WARN, LookState.UNDECIDED, "undecided")
    last = decide_metric(TPOT, old, new, 0.05, True, CFG, final=True)
    assert (last.verdict, last.note) == (Verdict.WARN, "inconclusive after 4 rounds")
    warn_only = decide_metric(TPOT, old, new, 0.05, False, CFG, final=True)
    assert (warn_only.verdict, warn_only.note) == (Verdict.PASS, "undecided (warn-only metric)")


def test_an_unfinished_ab_has_no_note_and_its_metrics_are_undecided() -> None:
    d = _decide({TPOT: 1.04}, 4, jitter=0.04)
    assert not d.done and d.verdict is Verdict.WARN
    assert d.note == ""  # open metrics are named only when the A/B stops
    assert d.metric(TPOT).note == "undecided"
    stopped = _decide({TPOT: 1.04}, 4, replace(CFG, max_rounds=4), jitter=0.04)
    assert stopped.done and stopped.note == "tpot_p50: inconclusive after 4 rounds"


def test_a_metric_the_decision_lacks_is_none() -> None:
    d = _decide({}, 3)
    assert d.metric("no_such_metric") is None and d.metric(TPOT) is not None
