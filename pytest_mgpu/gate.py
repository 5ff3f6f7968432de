"""The pytest wiring of the gate: after each test body, compare its results with the baselines."""

from __future__ import annotations

from dataclasses import replace

import pytest

from .baseline import BaselineStore
from .errors import BaselineError
from .markers import MARKS_KEY
from .render.text import side_by_side
from .results import BenchResult
from .session import ITEM_RESULTS_KEY, MgpuSession
from .verdicts import Verdict, compare, confirm

#: Key metrics written to the JUnit XML through ``record_property``.
JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")


def _remeasure(item: pytest.Item, result: BenchResult) -> BenchResult:
    """Measure ``result``'s workload again, on the same engine, for the confirm step."""
    bench = item.funcargs.get("mgpu_bench")  # type: ignore[attr-defined]
    repeats = bench.measure(result.workload, len(result.repeats))
    return replace(result, repeats=repeats)


def gate_item(sess: MgpuSession, item: pytest.Item) -> None:
    """Compare this item's results with the baselines; fail the test on a confirmed regression.

    Also records each result's key metrics as JUnit properties and, with
    ``--mgpu-update-baselines``, writes them to the store at once (so an aborted session loses
    nothing that was measured).
    """
    results = item.stash.get(ITEM_RESULTS_KEY, [])
    if not results:
        return
    s = sess.settings
    for r in results:
        for m in JUNIT_METRICS:
            if r.repeats and r.valid:
                item.user_properties.append((f"mgpu.{r.label or r.workload.name}.{m}", round(r.median.get(m, 0.0), 3)))
    marks = item.stash.get(MARKS_KEY, None)
    cfg = sess.gate.with_overrides(marks.tolerances) if marks is not None else sess.gate
    store = BaselineStore(s.baseline_dir)
    failures: list[str] = []
    for r in results:
        try:
            base = store.get(sess.fingerprint, r.module, r.entry_id)
            have = [] if base is not None else store.fingerprints_with(r.module, r.entry_id, exclude=sess.fingerprint)
        except BaselineError as exc:
            sess.errors.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
        c = compare(r, base, cfg, fingerprint=sess.fingerprint, have=have)
        if c.verdict is Verdict.FAIL and s.confirm and not s.update_baselines:
            again = _remeasure(item, r)
            c = confirm(c, compare(again, base, cfg, fingerprint=sess.fingerprint))
            if c.verdict is not Verdict.FAIL:
                # Keep the measurement that the verdict describes.
                r.repeats = again.repeats
        sess.comparisons.append(c)
        if c.verdict is Verdict.INVALID:
            failures.append(f"INVALID {r.entry_id}: {r.invalid}")
        elif c.verdict is Verdict.FAIL and not s.update_baselines:
            failures.append(side_by_side(c))
        elif c.verdict is Verdict.NEW and cfg.strict and not s.update_baselines:
            failures.append(f"NEW {r.entry_id}: {c.note} (--mgpu-strict fails on a missing baseline)")
        elif c.verdict is Verdict.WARN and cfg.strict and not s.update_baselines:
            failures.append(side_by_side(c) + "\n(--mgpu-strict fails on WARN too)")
    if s.update_baselines:
        try:
            written = store.update(sess.fingerprint, results[0].module, results)
        except BaselineError as exc:
            sess.errors.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
        sess.updated.extend(written.written)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
