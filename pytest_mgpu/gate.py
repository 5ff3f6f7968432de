"""Gate each item's results against the baselines after its test body runs."""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from .results import BenchResult
from .session import ITEM_RESULTS_KEY, STATE_KEY, TOLERANCE_KEY, MgpuState

if TYPE_CHECKING:  # pragma: no cover
    from .compare import GateConfig

#: Key metrics written to the JUnit XML through ``record_property``.
JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")


def gate_config(config: pytest.Config) -> "GateConfig":
    """The session's gate settings from ``--mgpu-*`` options and the ``mgpu_tolerance`` ini key."""
    from .compare import gate_config_from_options

    try:
        return gate_config_from_options(config.getoption, ini_tolerance=config.getini("mgpu_tolerance"))
    except Exception as exc:  # argparse.ArgumentTypeError from the ini
        raise pytest.UsageError(str(exc)) from None


def _remeasure(item: pytest.Item, result: BenchResult) -> BenchResult:
    """Measure ``result``'s workload again, on the same engine, for the confirm step."""
    bench = item.funcargs.get("mgpu_bench")  # type: ignore[attr-defined]
    repeats = bench.measure(result.workload, len(result.repeats))
    return replace(result, repeats=repeats)


def gate_item(item: pytest.Item) -> None:
    """Compare this item's results with the baselines; fail the test on a confirmed regression.

    Also records each result's key metrics as JUnit properties and, with
    ``--mgpu-update-baselines``, writes them to the store at once (so an aborted session loses
    nothing that was measured).
    """
    results = item.stash.get(ITEM_RESULTS_KEY, [])
    if not results:
        return
    from .baseline import BaselineError, BaselineStore
    from .compare import Verdict, compare, confirm, side_by_side

    state = item.config.stash[STATE_KEY]
    s = state.settings
    for r in results:
        for m in JUNIT_METRICS:
            if r.repeats and r.valid:
                item.user_properties.append((f"mgpu.{r.label or r.workload.name}.{m}", round(r.median.get(m, 0.0), 3)))
    # Marker tolerances were validated at collection.
    cfg = state.gate.with_overrides(item.stash.get(TOLERANCE_KEY, {}))
    store = BaselineStore(s.baseline_dir)
    failures: list[str] = []
    for r in results:
        try:
            base = store.get(state.fingerprint, r.module, r.entry_id)
            have = [] if base is not None else store.fingerprints_with(r.module, r.entry_id, exclude=state.fingerprint)
        except BaselineError as exc:
            state.errors.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
        c = compare(r, base, cfg, fingerprint=state.fingerprint, have=have)
        if c.verdict is Verdict.FAIL and s.confirm and not s.update_baselines:
            again = _remeasure(item, r)
            c = confirm(c, compare(again, base, cfg, fingerprint=state.fingerprint))
            if c.verdict is not Verdict.FAIL:
                # Keep the measurement that the verdict describes.
                r.repeats = again.repeats
        state.comparisons.append(c)
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
            written = store.update(state.fingerprint, results[0].module, results)
        except BaselineError as exc:
            state.errors.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
        state.updated.extend(written.written)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def rerun_command(config: pytest.Config, extra: str) -> str:
    """The exact command that re-runs this session with ``extra`` added."""
    args = [a for a in config.invocation_params.args if a != extra]
    return shlex.join(["pytest", *args, extra])


def gate_summary_lines(config: pytest.Config, state: MgpuState) -> list[str]:
    """Gate section of the terminal summary: table, counts, and the commands to act on it."""
    if not state.comparisons:
        return []
    from .compare import Verdict, render_table, summary_line

    lines = render_table(state.comparisons).splitlines()
    lines.append("")
    lines.append(f"mgpu gate: {summary_line(state.comparisons)}")
    verdicts = {c.verdict for c in state.comparisons}
    if state.settings.update_baselines:
        n = len(state.updated)
        lines.append(f"updated {n} baseline entr{'y' if n == 1 else 'ies'} under {state.settings.baseline_dir}/{state.fingerprint}")
    elif verdicts & {Verdict.NEW, Verdict.IMPROVED}:
        lines.append("to record new baselines and accept improvements, re-run with:")
        lines.append("  " + rerun_command(config, "--mgpu-update-baselines"))
    return lines
