"""Collection: one item per layout mark, each item's engine spec, skips, and ordering by engine key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .engines import EngineSpec, check_engine_options
from .errors import EngineError, MarkerError, ModelError
from .layout import Layout
from .markers import MARK_NAMES, MARKS_KEY, TestMarks
from .models import check_layout
from .session import SPEC_KEY, MgpuSession

#: Fixtures that make a test an mgpu item.
MGPU_FIXTURES = ("mgpu_layout", "mgpu_engine", "mgpu_bench")


def parametrize_layouts(sess: MgpuSession, metafunc: pytest.Metafunc) -> None:
    """Parametrise ``mgpu_layout`` from the layout marks; validate marks and model at collection.

    A bad mark or a layout the model cannot run is a collection error naming the test. The
    parsed marks are kept for :func:`prepare_items`, so they are parsed once per test function.
    """
    node = metafunc.definition
    if not any(f in metafunc.fixturenames for f in MGPU_FIXTURES) and not list(node.iter_markers("layout")):
        return
    nodeid = node.nodeid
    try:
        marks = TestMarks.from_node(node)
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    if marks.engine_opts:
        try:
            check_engine_options(sess.settings.engine, {**sess.settings.engine_options, **dict(marks.engine_opts)})
        except EngineError as exc:
            pytest.fail(f"{nodeid}: engine_opts: {exc}", pytrace=False)
    try:
        model = sess.resolve_model(marks.model or sess.settings.model, Path(str(node.path)))
    except ModelError as exc:
        pytest.fail(f"{nodeid}: {exc}", pytrace=False)
    for lay in marks.layouts:
        why = check_layout(model, lay.tp, lay.pp)
        if why:
            pytest.fail(f"{nodeid}: layout {lay.id}: {why}", pytrace=False)
    sess.marks[nodeid] = marks
    if "mgpu_layout" not in metafunc.fixturenames:
        metafunc.fixturenames.append("mgpu_layout")
    metafunc.parametrize("mgpu_layout", marks.layouts, ids=[lay.id for lay in marks.layouts], scope="function")


def _definition_id(item: pytest.Item, callspec_id: str) -> str:
    """The node id of the test function an item was generated from (its id without ``[...]``)."""
    suffix = f"[{callspec_id}]"
    return item.nodeid[: -len(suffix)] if item.nodeid.endswith(suffix) else item.nodeid


def item_spec(sess: MgpuSession, item: pytest.Item, layout: Layout, marks: TestMarks) -> EngineSpec:
    """The engine an item needs: engine, model, layout, options (``--mgpu-engine-opt`` under its marks), env."""
    s = sess.settings
    model = sess.resolve_model(marks.model or s.model, Path(str(item.path)))
    options = dict(s.engine_options)
    if s.engine == "sim":
        options.setdefault("gpu", s.sim_gpu)
    options.update(marks.engine_opts)
    return EngineSpec(
        engine=s.engine, model=model, layout=layout, options=tuple(sorted(options.items())),
        env=tuple(sorted(s.engine_env.items())), python=s.engine_python,
    )


def prepare_items(sess: MgpuSession, items: list[pytest.Item]) -> None:
    """Give each mgpu item its marks and engine spec, skip what cannot run here, and group by engine key."""
    order: dict[Any, int] = {}
    keyed: list[tuple[int, int, pytest.Item]] = []
    for pos, item in enumerate(items):
        fixturenames = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        if not any(f in fixturenames for f in MGPU_FIXTURES) or callspec is None:
            keyed.append((-1, pos, item))
            continue
        marks = sess.marks.get(_definition_id(item, callspec.id))
        if marks is None or any(m.name in MARK_NAMES for m in callspec.marks):
            marks = TestMarks.from_node(item)  # marks given per parameter: pytest.param(..., marks=...)
        layout = callspec.params.get("mgpu_layout", Layout())
        spec = item_spec(sess, item, layout, marks)
        item.stash[MARKS_KEY] = marks
        item.stash[SPEC_KEY] = spec
        need = layout.num_gpus
        if need > sess.visible_devices:
            hint = " (--mgpu-sim-gpus)" if sess.settings.engine == "sim" else ""
            item.add_marker(
                pytest.mark.skip(reason=f"needs {need} {sess.device_word}, {sess.visible_devices} visible{hint}")
            )
        keyed.append((order.setdefault(spec.key, len(order)), pos, item))
    # Non-mgpu items keep their place at the front; mgpu items run grouped by engine key.
    keyed.sort(key=lambda t: (t[0] >= 0, t[0], t[1]))
    items[:] = [it for _, _, it in keyed]
