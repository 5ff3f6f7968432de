"""Same-job A/B of two engine builds (``--mgpu-ab OLD_PYTHON``): the old engine (A) against the new (B).

In A/B mode nothing is compared with a stored baseline. Each ``mgpu_bench.run(...)`` measures its
workload in rounds; a round starts the old engine, measures, stops it, starts the new one,
measures, stops it (the order alternates: A B, then B A), so only one engine is ever on the GPUs
and every measurement follows an engine restart. After each round the paired rule of
:mod:`pytest_mgpu.judge.ab_verdicts` decides; ``run()`` stops as soon as the verdict is clear (or at the cap) and
returns the new side's result with the old side, the rounds and the decision attached
(:class:`AbResult`). A test body therefore needs no change.

Items that share an engine key (an *engine group*) share their engine starts: before the test
loop, :func:`probe_workloads` runs the test body of every item of a group of two or more up to its
first ``mgpu_bench.run(...)``, which records the workload and stops the body (no engine starts).
When the group's first item then calls ``run()``, :func:`measure_group` measures every probed item
of the group on the same starts: one start per side per round, the items in rotating order on
each; each item keeps its own decision, and a decided item drops out of later rounds. Each later
item's ``run()`` returns its stored result. An item alone in its group (``-k`` one item, a shard
that holds one) is measured as before, on starts of its own.

The old side is ``--mgpu-ab PYTHON`` with ``--mgpu-ab-env KEY=VALUE`` and ``--mgpu-ab-opt
KEY=VALUE`` over the new side's environment and engine options; the new side is
``--mgpu-engine-python`` (default: this interpreter) with ``--mgpu-engine-env``/``--mgpu-engine-opt``.
Each side's engine version is read from its own interpreter and environment.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from ..engines import EngineSpec, RunningEngine, get_adapter
from ..errors import BaselineError, EngineError, EngineUnavailable, PromptError
from ..judge.ab_results import AbGroupCost, AbResult, AbRound, merge_rounds, per_round
from ..judge.ab_verdicts import AbConfig, AbDecision, decide
from ..judge.baseline import BaselineStore
from ..judge.results import BenchResult
from ..judge.verdicts import GateConfig, Verdict, fails
from ..layout import Layout
from ..models import Model
from ..report.render.ab import fail_message
from .bench import Bench, check_repeats, checked_workload
from .session import ITEM_RESULTS_KEY, SPEC_KEY, MgpuSession

OLD, NEW = "old", "new"


@dataclass(frozen=True)
class Side:
    """One side of an A/B: its name (old/new), engine spec and engine version."""

    name: str
    spec: EngineSpec
    version: str


def side_version(spec: EngineSpec) -> str:
    """The engine version of ``spec``'s interpreter and environment (EngineUnavailable when absent)."""
    return get_adapter(spec.engine).version(spec.python, spec.env_dict)


class AbEngines:
    """What ``mgpu_engine`` is in A/B mode: both sides of the item; an engine runs only inside ``run()``.

    ``name``, ``version`` (the new side), ``old_version``, ``layout``, ``model``, ``num_gpus`` are
    known without starting anything; ``base_url``, ``log_path``, ``pid`` and ``gpu_ids`` are the
    engine running at the moment (during ``mgpu_bench.run``), else an error.
    """

    def __init__(self, manager: Any, old: Side, new: Side) -> None:
        self._manager = manager
        self.old, self.new = old, new
        self.name = new.spec.engine
        self.version = new.version
        self.old_version = old.version
        self.layout: Layout = new.spec.layout
        self.model: Model = new.spec.model
        self.spec = new.spec

    @property
    def num_gpus(self) -> int:
        """GPUs (or CPU workers) one side's engine occupies: tp x pp."""
        return self.layout.num_gpus

    @property
    def current(self) -> RunningEngine | None:
        """The engine of this item running now, or None."""
        cur: RunningEngine | None = self._manager.current
        if cur is not None and cur.spec in (self.old.spec, self.new.spec):
            return cur
        return None

    def _running(self) -> RunningEngine:
        cur = self.current
        if cur is None:
            raise RuntimeError(
                "in A/B mode (--mgpu-ab) an engine runs only inside mgpu_bench.run(), which restarts the old "
                "and the new engine for every measurement; there is no engine to reach outside it"
            )
        return cur

    @property
    def base_url(self) -> str:
        """URL of the engine running now (only during ``mgpu_bench.run``)."""
        return self._running().base_url

    @property
    def log_path(self) -> Path:
        """Log of the engine running now."""
        return self._running().log_path

    @property
    def gpu_ids(self) -> list[int]:
        """GPUs of the engine running now."""
        return self._running().gpu_ids

    @property
    def alive(self) -> bool:
        """Whether one of this item's engines is running."""
        cur = self.current
        return cur is not None and cur.alive

    def describe(self) -> str:
        """One line: ``vllm 0.25.1 -> 0.26.0 tp2-pp1 model=llama-2-7b (A/B)``."""
        return f"{self.name} {self.old_version} -> {self.version} {self.layout.id} model={self.model.name} (A/B)"


def engines_for(sess: MgpuSession, spec: EngineSpec) -> AbEngines:
    """Both sides of an item's A/B, with their versions read from their interpreters (once per side)."""
    assert sess.ab is not None
    old_spec = sess.ab.old_spec(spec)
    versions = {}
    cache = groups_of(sess).versions
    for name, s in ((OLD, old_spec), (NEW, spec)):
        where = (s.engine, s.python, s.env)
        try:
            if where not in cache:
                cache[where] = side_version(s)
            versions[name] = cache[where]
        except EngineUnavailable as exc:
            raise EngineUnavailable(f"A/B {name} side: {exc}") from None
    return AbEngines(sess.manager, Side(OLD, old_spec, versions[OLD]), Side(NEW, spec, versions[NEW]))


# --- results -----------------------------------------------------------------------------------


@dataclass
class Planned:
    """One item's workload in its engine group's A/B: from the probe, or from its own ``run()``."""

    nodeid: str
    test_name: str
    module: str
    gate: GateConfig
    kwargs: dict[str, Any]
    name: str  # label or workload name
    key: tuple[Any, ...]  # what tells two workloads of one test apart
    spec_key: tuple[Any, ...]
    progress: Callable[[str], None]


class Probed(pytest.skip.Exception):  # type: ignore[name-defined]
    """Raised by ``run()`` in the probe: the workload is recorded; the body stops there.

    A skip, so that ``--pdb`` does not stop on it; the probe's reports are never logged.
    """


@dataclass
class AbGroups:
    """The session's engine groups in A/B mode (in ``config.stash``): the probe's plan and the results."""

    probing: bool = False
    plan: dict[str, Planned] = field(default_factory=dict)  # by node id
    #: Measured, not yet returned to its item's ``run()``: a result, or the error the group's A/B raised.
    done: dict[str, AbResult | BaseException] = field(default_factory=dict)
    returned: set[str] = field(default_factory=set)  # items whose run() got their group's result
    versions: dict[tuple[Any, ...], str] = field(default_factory=dict)  # engine version per (engine, python, env)


GROUPS_KEY = pytest.StashKey[AbGroups]()


def groups_of(sess: MgpuSession) -> AbGroups:
    """The session's :class:`AbGroups` (created on first use)."""
    groups = sess.config.stash.get(GROUPS_KEY, None)
    if groups is None:
        groups = sess.config.stash[GROUPS_KEY] = AbGroups()
    return groups


def is_probing(config: pytest.Config) -> bool:
    """Whether the A/B's probe pass is running (its reports are not outcomes)."""
    groups = config.stash.get(GROUPS_KEY, None)
    return groups is not None and groups.probing


def probe_workloads(sess: MgpuSession, session: pytest.Session) -> int:
    """Before the test loop: run each item of an engine group of two or more up to its first ``run()``.

    The body runs with its fixtures as in the real run (pytest's own protocol, reports not logged)
    and stops at ``mgpu_bench.run(...)``, which records the workload (:class:`Probed`); no engine
    starts. A body that fails or skips before ``run()`` is simply not planned: its item is then
    measured on starts of its own. Returns how many items were planned.
    """
    from _pytest.runner import runtestprotocol  # pytest's item protocol, as rerun plugins call it

    by_key: dict[tuple[Any, ...], list[pytest.Item]] = {}
    for item in session.items:
        spec = item.stash.get(SPEC_KEY, None)
        if spec is not None and item.nodeid in sess.measuring:
            by_key.setdefault(spec.key, []).append(item)
    todo = [it for members in by_key.values() if len(members) > 1 for it in members]
    if not todo:
        return 0
    groups = groups_of(sess)
    groups.probing = True
    try:
        for i, item in enumerate(todo):
            # Outside pytest's per-item warning capture: the real run shows the body's warnings, once.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runtestprotocol(item, log=False, nextitem=todo[i + 1] if i + 1 < len(todo) else session.items[0])
            # The probe's captured output is not the test's: keep it out of the real report.
            sections = getattr(item, "_report_sections", None)
            if isinstance(sections, list):
                sections.clear()
    finally:
        groups.probing = False
    return len(groups.plan)


# --- the A/B bench -------------------------------------------------------------------------------


class AbBench:
    """``mgpu_bench`` in A/B mode: ``run()`` measures the old and the new engine in rounds and decides."""

    def __init__(
        self,
        sess: MgpuSession,
        engines: AbEngines,
        *,
        nodeid: str,
        test_name: str,
        module: str,
        gate: GateConfig,
        record: Callable[[BenchResult], None],
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.sess = sess
        self.engines = engines
        self.engine = engines  # what Bench exposes as ``engine``
        self.nodeid, self.test_name, self.module = nodeid, test_name, module
        self.gate = gate
        self.rule = sess.ab.rule if sess.ab else AbConfig()
        self.repeats = sess.settings.repeats
        self._record = record
        self._progress = progress or (lambda line: None)
        self.results: list[AbResult] = []
        self._measured: set[tuple[Any, ...]] = set()
        self._running_side: str | None = None

    def _stop(self) -> tuple[str | None, float]:
        """Stop the engine running now (if any); return its side and the seconds the stop took."""
        manager = self.sess.manager
        who, self._running_side = self._running_side, None
        if manager.current is None:
            return None, 0.0
        t = time.monotonic()
        manager.stop_current()
        return who, time.monotonic() - t

    def _measure(self, engine: RunningEngine, item: Planned) -> BenchResult:
        bench = Bench(
            engine, nodeid=item.nodeid, test_name=item.test_name, module=item.module, repeats=item.kwargs["repeats"],
            request_timeout_s=self.sess.settings.request_timeout_s, env=self.sess.env_info, record=lambda r: None,
            prompt=self.sess.settings.prompt,
        )
        return bench.run(**item.kwargs)

    def run(
        self,
        input_len: int = 128,
        output_len: int = 128,
        num_requests: int = 256,
        request_rate: float = 32.0,
        *,
        burstiness: float = 1.0,
        max_concurrency: int | None = None,
        warmup_requests: int = 4,
        seed: int = 0,
        label: str | None = None,
        repeats: int | None = None,
        prompt: str | None = None,
    ) -> AbResult:
        """Measure the workload on the old and the new engine in rounds until the verdict is clear.

        Same arguments as the plain ``mgpu_bench.run``; ``repeats`` (default ``--mgpu-repeats``) is
        the number of measurements per engine start. Returns the new side's result; its ``old``,
        ``rounds`` and ``decision`` hold the rest. An item whose workload the probe planned shares
        its engine group's starts (:meth:`measure_group`); in the probe itself it raises :class:`Probed`.
        """
        # Check the arguments before any engine starts, as the plain bench does (each side's Bench.run
        # checks them again and picks the prompt mode from the engine it runs on).
        check_repeats(self.nodeid, repeats, self.repeats)
        workload = checked_workload(
            self.nodeid, input_len=input_len, output_len=output_len, num_requests=num_requests,
            request_rate=request_rate, burstiness=burstiness, max_concurrency=max_concurrency,
            warmup_requests=warmup_requests, seed=seed, vocab_size=self.engines.model.vocab_size,
        )
        kwargs: dict[str, Any] = dict(
            input_len=input_len, output_len=output_len, num_requests=num_requests, request_rate=request_rate,
            burstiness=burstiness, max_concurrency=max_concurrency, warmup_requests=warmup_requests, seed=seed,
            label=label, repeats=self.repeats if repeats is None else repeats, prompt=prompt,
        )
        if label is not None and not label.strip():
            raise ValueError("label must be a non-empty string or None")
        key = (label, None if label else workload, prompt)
        if key in self._measured:
            raise ValueError(
                f"{self.nodeid}: workload {label or workload.name!r} was already measured in this test; "
                f"pass label= to tell two runs of the same workload apart"
            )
        first = not self._measured
        self._measured.add(key)
        me = Planned(self.nodeid, self.test_name, self.module, self.gate, kwargs, label or workload.name, key,
                     self.engines.spec.key, self._progress)
        groups = groups_of(self.sess)
        if groups.probing:
            groups.plan[self.nodeid] = me
            raise Probed("mgpu A/B probe: workload recorded")
        planned = groups.plan.get(self.nodeid)
        shared = first and planned is not None and planned.key == key and self.nodeid not in groups.returned
        if shared and self.nodeid not in groups.done:
            # The group's first item to run: measure every planned item of the group still waiting.
            members = [p for nid, p in groups.plan.items()
                       if p.spec_key == me.spec_key and nid not in groups.done and nid not in groups.returned]
            me_first = [me] + [p for p in members if p.nodeid != self.nodeid]
            groups.done.update(self.measure_group(me_first))
        outcome: AbResult | BaseException
        if shared:
            outcome = groups.done.pop(self.nodeid)
            groups.returned.add(self.nodeid)
        else:
            outcome = self.measure_group([me])[self.nodeid]
        skip = fail = None
        if isinstance(outcome, EngineUnavailable):
            skip = str(outcome)
        elif isinstance(outcome, (EngineError, PromptError)):
            fail = f"A/B {self.test_name}::{me.name}: {outcome}"
        elif isinstance(outcome, BaseException):
            raise outcome
        if skip is not None:
            pytest.skip(skip)
        if fail is not None:
            pytest.fail(fail, pytrace=False)
        assert isinstance(outcome, AbResult)
        self.results.append(outcome)
        self._record(outcome)
        return outcome

    def sweep(self, *args: Any, **kwargs: Any) -> Any:
        """Not in A/B mode: a sweep is many workloads on one engine; skips the test and says so."""
        pytest.skip(
            "mgpu_bench.sweep() is not run in A/B mode (--mgpu-ab): an A/B restarts both engines for every "
            "measurement; compare single workloads with mgpu_bench.run() instead"
        )

    def measure_group(self, members: Sequence[Planned]) -> dict[str, AbResult | BaseException]:
        """Measure the items of one engine group on shared starts, in rounds, until each one's verdict is clear.

        Round n starts the old and the new engine once each (A B, then B A) and measures every item
        still undecided on each start, in an order that rotates by one item per round. After the
        round each item's rule decides; a decided item drops out. Returns each item's result, or the
        engine error that ended the group's A/B for the items it left undecided.
        """
        assert self.sess.ab is not None
        sides = {OLD: self.engines.old, NEW: self.engines.new}
        rounds: dict[str, list[AbRound]] = {m.nodeid: [] for m in members}
        decisions: dict[str, AbDecision] = {}
        cost = AbGroupCost(f"{self.engines.name} {self.engines.layout.id} {self.engines.model.name}",
                           [f"{m.test_name}::{m.name}" for m in members], self.engines.num_gpus)
        active = list(members)
        error: BaseException | None = None
        t0 = time.monotonic()
        try:
            for n in range(1, self.rule.max_rounds + 1):
                if not active:
                    break
                order = (OLD, NEW) if n % 2 else (NEW, OLD)
                k = (n - 1) % len(active)
                rotation = active[k:] + active[:k]
                measured: dict[str, dict[str, BenchResult]] = {m.nodeid: {} for m in active}
                measure_s: dict[str, dict[str, float]] = {m.nodeid: {} for m in active}
                start_s: dict[str, float] = {}
                stop_s: dict[str, float] = {}
                for side_name in order:
                    stopped, took = self._stop()  # always restart, even an identical engine (A/A)
                    if stopped is not None:
                        stop_s[stopped] = stop_s.get(stopped, 0.0) + took
                    t = time.monotonic()
                    engine = self.sess.manager.acquire(sides[side_name].spec)
                    self._running_side = side_name
                    start_s[side_name] = time.monotonic() - t
                    cost.starts += 1
                    for m in rotation:
                        t = time.monotonic()
                        measured[m.nodeid][side_name] = self._measure(engine, m)
                        measure_s[m.nodeid][side_name] = time.monotonic() - t
                cost.rounds = n
                for m in active:
                    got = measured[m.nodeid]
                    m.name = checked_name(m, got[OLD], got[NEW])
                    rd = AbRound(n, order, got[OLD], got[NEW], dict(start_s), measure_s[m.nodeid], dict(stop_s),
                                 shared_by=len(active), position=rotation.index(m))
                    rounds[m.nodeid].append(rd)
                    decisions[m.nodeid] = d = self._decide(rounds[m.nodeid], m.gate)
                    m.progress(self._progress_line(m, rd, d))
                active = [m for m in active if not decisions[m.nodeid].done]
        except (EngineError, EngineUnavailable, PromptError) as exc:
            error = exc
        finally:
            stopped, took = self._stop()  # only one engine on the GPUs, and none between A/Bs
            last = [rs[-1] for rs in rounds.values() if rs and rs[-1].index == cost.rounds]
            if stopped is not None and last:
                for rd in last:
                    rd.stop_s[stopped] = rd.stop_s.get(stopped, 0.0) + took
        cost.wall_s = time.monotonic() - t0
        cost.items = [f"{m.test_name}::{m.name}" for m in members]  # the names the measurements gave
        # Each item's share of the group's wall time: in proportion to the seconds attributed to it.
        spent = {m.nodeid: _attributed(rounds[m.nodeid]) for m in members}
        total = math.fsum(spent.values())
        out: dict[str, AbResult | BaseException] = {}
        for m in members:
            rs = rounds[m.nodeid]
            undecided = m.nodeid not in decisions or not decisions[m.nodeid].done
            if error is not None and (undecided or not rs):
                out[m.nodeid] = error
                continue
            new = merge_rounds([rd.new for rd in rs])
            old = merge_rounds([rd.old for rd in rs])
            base = {f.name: getattr(new, f.name) for f in fields(BenchResult)}
            share = cost.wall_s * (spent[m.nodeid] / total if total > 0 else 1.0 / len(members))
            out[m.nodeid] = AbResult(**base, old=old, decision=decisions.get(m.nodeid), rounds=rs,
                                     old_describe=self.sess.ab.describe_old(), wall_s=share, group=cost)
        return out

    def _decide(self, rounds: Sequence[AbRound], gate: GateConfig) -> AbDecision:
        invalid = next(
            (f"round {rd.index} {side}: {r.invalid}" for rd in rounds for side, r in ((OLD, rd.old), (NEW, rd.new))
             if r.invalid),
            None,
        )
        metrics = gate.metrics
        old = {m: per_round([rd.old for rd in rounds], m) for m in metrics}
        new = {m: per_round([rd.new for rd in rounds], m) for m in metrics}
        return decide(old, new, gate, self.rule, invalid=invalid)

    def _progress_line(self, item: Planned, rd: AbRound, d: AbDecision) -> str:
        parts = []
        for m in d.metrics:
            if m.gated and m.old_values:
                parts.append(f"{m.metric} {m.old_values[-1]:.4g} -> {m.new_values[-1]:.4g}")
        starts = ", ".join(f"{k} start {v:.0f}s" for k, v in rd.start_s.items())
        state = f"{d.verdict}" if d.done else "continue"
        shared = f", shared by {rd.shared_by} items" if rd.shared_by > 1 else ""
        return f"A/B {item.test_name}::{item.name} round {rd.index} ({starts}{shared}): {'; '.join(parts)} -> {state}"


def checked_name(item: Planned, old: BenchResult, new: BenchResult) -> str:
    """The item's name in its results (``-text`` for text prompts); both sides must send the same prompts.

    Each side's ``Bench.run`` picks the prompt mode from its engine (text where it can tokenize), as
    the plain gate does; the planned name was built before any engine ran, so it is replaced by the
    measured one. Sides that picked different modes measured different requests: a PromptError.
    """
    if old.workload.prompt != new.workload.prompt:
        raise PromptError(
            f"the old side sent {old.workload.prompt} prompts and the new side {new.workload.prompt} prompts "
            f"(only one of the engines can tokenize text), so they cannot be compared; pass --mgpu-prompt "
            f"token-ids (or run(prompt='token-ids'))"
        )
    return new.label or new.workload.name


def _attributed(rounds: Sequence[AbRound]) -> float:
    """Seconds of an item's rounds: its measurements, and its share of the starts and stops it was measured on."""
    return math.fsum(
        math.fsum(rd.measure_s.values())
        + (math.fsum(rd.start_s.values()) + math.fsum(rd.stop_s.values())) / rd.shared_by
        for rd in rounds
    )


def progress_writer(config: pytest.Config) -> Callable[[str], None] | None:
    """With ``-v``: a function that writes one A/B progress line per round to the terminal, uncaptured."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or config.getoption("verbose") <= 0:
        return None

    def write(line: str) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.write_line(line)
        else:  # pragma: no cover - capture is always loaded unless -p no:capture
            tr.write_line(line)

    return write


# --- the gate of an A/B item ---------------------------------------------------------------------


def gate_item(sess: MgpuSession, item: pytest.Item) -> None:
    """After the test body in A/B mode: record the A/B results, JUnit properties; fail on FAIL.

    With ``--mgpu-update-baselines`` the new side's measurements are written as the baselines
    (and a FAIL is reported, not raised), as in the stored-baseline gate.
    """
    results = [r for r in item.stash.get(ITEM_RESULTS_KEY, []) if isinstance(r, AbResult)]
    if not results:
        return
    s = sess.settings
    strict = sess.gate.strict
    failures: list[str] = []
    for r in results:
        sess.ab_results.append(r)
        wl = r.label or r.workload.name
        item.user_properties.append(("mgpu.ab.old_version", r.old_version))
        item.user_properties.append(("mgpu.ab.new_version", r.engine_version))
        item.user_properties.append((f"mgpu.{wl}.ab.verdict", str(r.verdict)))
        item.user_properties.append((f"mgpu.{wl}.ab.rounds", len(r.rounds)))
        item.user_properties.append((f"mgpu.{wl}.ab.gpu_minutes", round(r.gpu_seconds / 60.0, 3)))
        if r.decision is not None:
            for m in r.decision.metrics:
                if m.old is None or m.new is None:
                    continue
                item.user_properties.append((f"mgpu.{wl}.{m.metric}.old", round(m.old, 3)))
                item.user_properties.append((f"mgpu.{wl}.{m.metric}.new", round(m.new, 3)))
                if m.delta_pct is not None:
                    item.user_properties.append((f"mgpu.{wl}.{m.metric}.delta_pct", round(m.delta_pct, 2)))
        v = r.verdict
        # The one failure rule (verdicts.fails); recording a run fails only on what cannot be recorded.
        if v is Verdict.INVALID or (fails(v, strict) and not s.update_baselines):
            failures.append(fail_message(r) + ("\n(--mgpu-strict fails on WARN too)" if v is Verdict.WARN else ""))
    if s.update_baselines:
        store = BaselineStore(s.baseline_dir)
        new_side = [r for r in results if r.valid]
        try:
            if new_side:
                written = store.update(sess.fingerprint, results[0].module, new_side, history=s.baseline_history)
                sess.updated.extend(written.written)
        except BaselineError as exc:
            sess.errors.append(str(exc))
            pytest.fail(str(exc), pytrace=False)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


# --- session-level outputs -----------------------------------------------------------------------


