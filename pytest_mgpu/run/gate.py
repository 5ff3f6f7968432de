"""The pytest wiring of the gate: after each test body, compare its results with the baselines."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ..errors import BaselineError
from ..judge.baseline import BaselineStore
from ..judge.drift import check_drift, with_drift
from ..judge.results import BenchResult
from ..judge.verdicts import Comparison, GateConfig, Verdict, compare, confirm, fails
from ..report.render.text import side_by_side
from .markers import MARKS_KEY
from .session import ITEM_RESULTS_KEY, MgpuSession

#: Key metrics written to the JUnit XML through ``record_property``.
JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")


def _remeasure(item: pytest.Item, result: BenchResult) -> None:
    """Measure ``result``'s workload again on the same engine; the result keeps both measurements.

    The re-measurement becomes ``result.repeats`` (what the confirmed verdict describes) and the
    first is kept as ``result.first_repeats``, so every report shows the verdict's numbers.
    """
    bench = item.funcargs.get("mgpu_bench")  # type: ignore[attr-defined]
    again = bench.measure(result.workload, len(result.repeats))
    result.first_repeats, result.repeats = result.repeats, again


def failure_message(c: Comparison, result: BenchResult, strict: bool) -> str:
    """Why a result fails the test, by verdict (the rule itself is :func:`~pytest_mgpu.judge.verdicts.fails`)."""
    if c.verdict is Verdict.INVALID:
        return f"INVALID {result.entry_id}: {c.note or result.invalid}"
    if c.verdict is Verdict.FAIL:
        return side_by_side(c)
    if c.verdict is Verdict.WARN:
        return side_by_side(c) + "\n(--mgpu-strict fails on WARN too)"
    return f"{c.verdict} {result.entry_id}: {c.note} (--mgpu-strict fails on {c.verdict} too)"


def item_gate_config(sess: MgpuSession, item: pytest.Item) -> GateConfig:
    """The session's gate config with the item's ``perf_tolerance`` marks applied."""
    marks = item.stash.get(MARKS_KEY, None)
    return sess.gate.with_overrides(marks.tolerances) if marks is not None else sess.gate


def gate_item(sess: MgpuSession, item: pytest.Item) -> None:
    """Compare this item's results with the baselines; fail the test on a confirmed regression.

    A FAIL or an IMPROVED is re-measured first (unless ``--mgpu-no-confirm``) and stands only if
    the same metric repeats it (:func:`~pytest_mgpu.judge.verdicts.confirm`).

    Records the gate settings with each result, the key metrics of the measurement the verdict
    used as JUnit properties and, with ``--mgpu-update-baselines``, writes the results to the
    store at once (so an aborted session loses nothing that was measured).
    """
    results = item.stash.get(ITEM_RESULTS_KEY, [])
    if not results:
        return
    s = sess.settings
    cfg = item_gate_config(sess, item)
    store = BaselineStore(s.baseline_dir)
    failures: list[str] = []
    compared: list[Comparison] = []
    for r in results:
        r.gate_settings = cfg.to_dict()
        broken = None
        try:
            fp = sess.fingerprint_for(r.engine)  # the sim's results have their own, beside a real engine's
            base = store.get(fp, r.module, r.entry_id)
            have = [] if base is not None else store.fingerprints_with(r.module, r.entry_id, exclude=fp)
            c = compare(r, base, cfg, fingerprint=fp, have=have)  # BaselineError: an entry lacks a gated metric
        except BaselineError as exc:
            broken = str(exc)
        if broken is not None:  # failed outside the except block: the message is printed once
            sess.errors.append(broken)
            pytest.fail(broken, pytrace=False)
        if base is not None and base.recordings and base.latest.telemetry:
            sess.base_telemetry[r.entry_id] = base.latest.telemetry  # for the SM-clock warning
        if c.verdict in (Verdict.FAIL, Verdict.IMPROVED) and s.confirm and not s.update_baselines:
            _remeasure(item, r)
            c = confirm(c, compare(r, base, cfg, fingerprint=fp))
        if base is not None:
            c = with_drift(c, check_drift(r, base, cfg, sess.config.getoption("mgpu_anchor_drift", "fail")))
        sess.comparisons.append(c)
        compared.append(c)
        sess.result_comparisons[(r.module, r.entry_id)] = c
        if r.repeats and r.valid:
            for m in JUNIT_METRICS:
                item.user_properties.append((f"mgpu.{r.label or r.workload.name}.{m}", round(r.median.get(m, 0.0), 3)))
        # Recording a run fails only on what cannot be recorded; otherwise the one rule decides.
        if s.update_baselines:
            if c.verdict is Verdict.INVALID:
                failures.append(failure_message(c, r, cfg.strict))
        elif fails(c.verdict, cfg.strict):
            failures.append(failure_message(c, r, cfg.strict))
    if s.update_baselines:
        written = None
        try:
            written = store.update(sess.fingerprint_for(results[0].engine), results[0].module, results,
                                   history=s.baseline_history)
        except BaselineError as exc:
            failures.append(str(exc))
            sess.errors.append(str(exc))
        if written is None:  # failed outside the except block: the message is printed once
            pytest.fail("\n\n".join(failures), pytrace=False)
        sess.updated.extend(written.written)
        sess.update_notes.extend(f"replaced {eid}: {why}" for eid, why in written.replaced.items())
        sess.update_notes.extend(
            f"{eid}: new level ({why}); earlier recordings kept but not used by the gate"
            for eid, why in written.new_level.items()
        )
    if failures:
        intended = {c.verdict for c in compared if c.verdict is not Verdict.INVALID and fails(c.verdict, cfg.strict)}
        failing = sorted(intended, key=lambda v: -v.severity)
        if failing and not s.update_baselines:
            failures.append(accept_hint(sess, failing))
        pytest.fail("\n\n".join(failures), pytrace=False)


def accept_hint(sess: MgpuSession, verdicts: Sequence[Verdict]) -> str:
    """What to do when the change is intended: accept this run's own results file (no re-run)."""
    from ..report.summary import accept_command  # lazy: the summary's module, only for a failing item

    return (
        "if this change is intended, record this run's results as the new baseline and anchor once the session "
        f"ends (no re-run; docs/gate.md, History):\n  {accept_command(sess, verdicts, anchor=True)}"
    )
