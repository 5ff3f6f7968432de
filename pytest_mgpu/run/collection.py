"""Collection: one item per layout mark, each item's engine spec, skips, and ordering by engine key."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ..engines import ADAPTERS, EngineSpec, check_engine_options, get_adapter
from ..errors import EngineError, EngineUnavailable, MarkerError, ModelError, SimOptionError
from ..layout import Layout
from ..models import check_layout
from ..sim.model import SimOptions
from .markers import MARK_NAMES, MARKS_KEY, TestMarks
from .session import SPEC_KEY, MgpuSession, is_mgpu_function, is_mgpu_item
from .settings import engine_names, engine_optional, multi_engine, options_for


def parametrize_layouts(sess: MgpuSession, metafunc: pytest.Metafunc) -> None:
    """Parametrise ``mgpu_layout`` from the layout marks; validate marks and model at collection.

    Bad marks, a model that cannot be found or read, and layouts the model cannot run raise one
    MarkerError naming the test and every problem; :func:`invalid_declaration` turns it into an
    item that errors, so the module's other tests still run. The parsed marks are kept for
    :func:`prepare_items`, so they are parsed once per test function.
    """
    node = metafunc.definition
    if not is_mgpu_function(metafunc):
        return
    nodeid = node.nodeid
    marks = TestMarks.from_node(node)  # MarkerError names the test and every bad mark
    try:
        model = sess.resolve_model(marks.model or sess.settings.model, Path(str(node.path)))
    except ModelError as exc:
        raise MarkerError(f"{nodeid}: {exc}") from None
    whys = [(lay, check_layout(model, lay.tp, lay.pp)) for lay in marks.layouts]
    problems = [f"{nodeid}: layout {lay.id}: {why}" for lay, why in whys if why]
    if problems:
        raise MarkerError("\n".join(problems))
    sess.marks[nodeid] = marks
    if multi_engine(sess.settings):
        # Engines side by side: one item per engine and layout, test_x[vllm-tp2-pp1].
        names = engine_names(sess.settings)
        if "mgpu_engine_name" not in metafunc.fixturenames:
            metafunc.fixturenames.append("mgpu_engine_name")
        metafunc.parametrize("mgpu_engine_name", names, ids=names, scope="function")
    if "mgpu_layout" not in metafunc.fixturenames:
        metafunc.fixturenames.append("mgpu_layout")
    metafunc.parametrize("mgpu_layout", marks.layouts, ids=[lay.id for lay in marks.layouts], scope="function")


class InvalidDeclaration(pytest.Item):
    """A test whose mgpu marks are invalid: one item that errors with every problem, printed once.

    It stands where the test's items would be, so ``-k`` and ``-m`` still select it, and the
    module's other tests are collected and run.
    """

    def __init__(self, *, error: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def setup(self) -> None:
        """Error at setup with the problems alone: no traceback, no chained exception."""
        pytest.fail(self.error, pytrace=False)

    def runtest(self) -> None:  # pragma: no cover - setup always fails
        """Never reached."""
        pytest.fail(self.error, pytrace=False)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        """Where the test is, for reports."""
        return self.path, None, self.name


def invalid_declaration(parent: pytest.Collector, name: str, obj: Any, error: str) -> InvalidDeclaration:
    """An :class:`InvalidDeclaration` for function ``obj`` called ``name`` under ``parent``, keeping its marks."""
    item = InvalidDeclaration.from_parent(parent, name=name, error=error)
    item.own_markers.extend(m for m in getattr(obj, "pytestmark", []) if isinstance(m, pytest.Mark))
    return item


def _definition_id(item: pytest.Item, callspec_id: str) -> str:
    """The node id of the test function an item was generated from (its id without ``[...]``)."""
    suffix = f"[{callspec_id}]"
    return item.nodeid[: -len(suffix)] if item.nodeid.endswith(suffix) else item.nodeid


def item_spec(
    sess: MgpuSession, item: pytest.Item, layout: Layout, marks: TestMarks, engine: str | None = None
) -> EngineSpec:
    """The engine an item needs: engine, model, layout, options (``--mgpu-engine-opt`` under its marks), env.

    ``engine`` is the item's own with several engines side by side (else the session's).
    """
    s = sess.settings
    engine = engine or s.engine
    model = sess.resolve_model(marks.model or s.model, Path(str(item.path)))
    options = options_for(s, engine)
    python = s.engine_python
    if engine == "sim":
        options.setdefault("gpu", s.sim_gpu)
        options.setdefault("time_scale", f"{s.sim_time_scale:g}")
        if multi_engine(s):
            python = sys.executable  # --mgpu-engine-python is the other engine's (the sim ships with us)
    options.update(marks.engine_opts)
    return EngineSpec(
        engine=engine, model=model, layout=layout, options=tuple(sorted(options.items())),
        env=tuple(sorted(s.engine_env.items())), python=python, cache_dir=s.cache_dir,
        cluster=sess.cluster_spec,
    )


def engine_options_problem(spec: EngineSpec) -> str | None:
    """Why the engine cannot take this item's options (with its ``engine_opts`` marks), or None.

    The sim's are checked against its own option list, other engines' by their adapter's
    ``check_options``, all without starting anything.
    """
    if spec.engine == "sim":
        try:
            SimOptions.parse(dict(spec.options))
        except SimOptionError as exc:
            return f"engine_opts: {exc}"
        return None
    try:
        check_engine_options(spec.engine, dict(spec.options))
    except EngineError as exc:
        return f"engine_opts: {exc}"
    return None


def skip_reason(sess: MgpuSession, layout: Layout, engine: str) -> str | None:
    """Why ``layout`` cannot run ``engine`` in this session: too few devices, or nodes that are not there."""
    if sess.cluster_inventory is not None:
        return sess.cluster_inventory.skip_reason(layout, engine)
    if layout.nodes > 1 and engine != "sim":  # the sim models nodes without a cluster
        return (
            f"layout {layout.id} spans {layout.nodes} nodes: it runs on a Ray cluster; give its address with "
            f"--mgpu-ray-address (or RAY_ADDRESS); see docs/multinode.md"
        )
    need = layout.num_gpus
    visible, word = sess.visible_for(engine)
    if need > visible:
        hint = " (--mgpu-sim-gpus)" if engine == "sim" else ""
        return f"needs {need} {word}, {visible} visible{hint}"
    return None


def prepare_items(sess: MgpuSession, items: list[pytest.Item]) -> None:
    """Give each mgpu item its marks and engine spec, skip what cannot run here, and group by engine key.

    A session without mgpu items is left alone: no NVML query, no subprocess, no signal handler.
    """
    if not any(is_mgpu_item(item) for item in items):
        return
    sess.start()
    # Settle the engine before any spec is built: without a GPU and without --mgpu-engine it is the
    # sim, which only the NVML query decides (else the first item was built for vLLM and skipped).
    sess.devices  # noqa: B018
    order: dict[Any, int] = {}
    keyed: list[tuple[int, int, pytest.Item]] = []
    need_engine: list[pytest.Item] = []
    for pos, item in enumerate(items):
        if not is_mgpu_item(item):
            keyed.append((-1, pos, item))
            continue
        callspec = item.callspec  # type: ignore[attr-defined]
        layout = callspec.params.get("mgpu_layout", Layout())
        engine = callspec.params.get("mgpu_engine_name", sess.settings.engine)
        try:
            marks = sess.marks.get(_definition_id(item, callspec.id))
            if marks is None or any(m.name in MARK_NAMES for m in callspec.marks):
                marks = TestMarks.from_node(item)  # marks given per parameter: pytest.param(..., marks=...)
            try:
                spec = item_spec(sess, item, layout, marks, engine)
            except ModelError as exc:
                raise MarkerError(f"{item.nodeid}: {exc}") from None
            why = engine_options_problem(spec)
            if why:
                raise MarkerError(f"{item.nodeid}: {why}")
        except MarkerError as exc:
            assert item.parent is not None  # an item always has a parent collector
            bad = InvalidDeclaration.from_parent(item.parent, name=item.name, error=str(exc))
            bad.own_markers.extend(item.own_markers)
            keyed.append((-1, pos, bad))
            continue
        item.stash[MARKS_KEY] = marks
        item.stash[SPEC_KEY] = spec
        reason = skip_reason(sess, layout, engine)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif any(f in item.fixturenames for f in ("mgpu_engine", "mgpu_bench")):  # type: ignore[attr-defined]
            need_engine.append(item)
        if "mgpu_bench" in item.fixturenames:  # type: ignore[attr-defined]
            sess.measuring.add(item.nodeid)
        keyed.append((order.setdefault(spec.key, len(order)), pos, item))
    s = sess.settings
    by_engine: dict[str, list[pytest.Item]] = {}
    for item in need_engine:
        by_engine.setdefault(item.stash[SPEC_KEY].engine, []).append(item)
    for name, its in by_engine.items():
        why = engine_missing(name, its[0].stash[SPEC_KEY].python, s.engine_env)
        if why is None and sess.ab is not None:  # the A/B's old side must be there too
            old = engine_missing(name, sess.ab.old_python, sess.ab.old_env_over(s.engine_env))
            why = f"the A/B's old side ({sess.ab.describe_old()}): {old}" if old else None
        if why is not None:
            if not engine_optional(sess.settings, name):
                raise pytest.UsageError(missing_engine_message(sess, why, name))
            for item in its:  # an optional engine: the user asked for this skip
                item.add_marker(pytest.mark.skip(reason=f"optional engine {name}? missing: {why}"))
    # Non-mgpu items keep their place at the front; mgpu items run grouped by engine key.
    keyed.sort(key=lambda t: (t[0] >= 0, t[0], t[1]))
    items[:] = [it for _, _, it in keyed]
    if sess.config.getoption("mgpu_shard", None):
        from .shard import select  # lazy: shard costs come from the baseline store, which imports numpy

        select(sess, sess.config, items)


def engine_missing(engine: str, python: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why ``engine`` cannot be started by ``python`` under ``env`` (not installed: the install hint), or None.

    Asks the adapter for the engine's version, as a start would (a subprocess; the engine is
    never imported here), with the engine's own environment (a ``PYTHONPATH`` may pick the install).
    """
    try:
        get_adapter(engine).version(python, env)
    except EngineUnavailable as exc:
        return str(exc)
    return None


def missing_engine_message(sess: MgpuSession, why: str, engine: str | None = None) -> str:
    """The usage error for a required engine that is not installed: why, how to install, how to choose another."""
    s = sess.settings
    engine = engine or s.engine
    if multi_engine(s):
        named = ",".join(str(c) for c in s.engines)
        optional = ",".join(f"{c.name}?" if c.name == engine else str(c) for c in s.engines)
        return (f"--mgpu-engine {named}: {engine} cannot run: {why}. Or make it optional with "
                f"--mgpu-engine '{optional}' to skip its tests and keep the other engines'")
    if s.engine_named:
        what = f"--mgpu-engine {engine}"
    else:
        what = f"the default engine {engine} ({sess.inventory.count} GPU(s) found; no --mgpu-engine given)"
    others = " or ".join(f"--mgpu-engine {name}" for name in sorted(ADAPTERS) if name != engine)
    return (
        f"{what} cannot run: {why}. Or choose another engine ({others}; sim needs no GPU), "
        f"or make it optional with --mgpu-engine '{engine}?' to skip its tests"
    )
