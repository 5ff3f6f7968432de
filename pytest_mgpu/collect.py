"""Collection and session plumbing: state creation, layout parametrisation, item specs, ordering."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

import pytest

from .engines import EngineSpec
from .errors import EngineError, MarkerError, ModelError
from .gpus import GpuInventory, query_inventory
from .layout import Layout
from .markers import engine_opts_from_marks, layouts_from_marks, model_from_marks, tolerance_marks
from .models import check_layout, resolve_model
from .settings import build_settings
from .session import (
    SPEC_KEY,
    STATE_KEY,
    TOLERANCE_KEY,
    EngineManager,
    MgpuState,
    cpu_workers,
    install_sigterm_handler,
)

MGPU_FIXTURES = ("mgpu_layout", "mgpu_engine", "mgpu_bench")


def make_state(config: pytest.Config) -> MgpuState:
    """Read the GPUs, validate the options and store the session state in ``config.stash``."""
    inventory = query_inventory()
    settings = build_settings(config, inventory.count, inventory.error)
    from .gate import gate_config

    gate = gate_config(config)  # built now: a bad tolerance is a usage error, not a test failure
    if settings.engine == "sim":
        fingerprint = f"sim-{settings.sim_gpu}-x{settings.sim_gpus}"
        visible, word = settings.sim_gpus, "sim GPUs"
        # The sim never touches real GPUs; its inventory is empty so nothing waits on NVML.
        inventory = GpuInventory(error=inventory.error)
    elif inventory.count:
        fingerprint, visible, word = inventory.fingerprint(), inventory.count, "GPUs"
    else:
        fingerprint, visible, word = "cpu", cpu_workers(), "CPU workers"
    state = MgpuState(
        settings=settings, inventory=inventory, fingerprint=fingerprint, visible_devices=visible,
        device_word=word, manager=EngineManager(settings, inventory), gate=gate,
    )
    state.env_info = collect_env(config, state)
    state.prev_sigterm = install_sigterm_handler()
    atexit.register(state.manager.close)  # last resort: never leave an engine running
    config.stash[STATE_KEY] = state
    return state


def collect_env(config: pytest.Config, state: MgpuState) -> dict[str, Any]:
    """Machine and commit info recorded with every result (pytest-benchmark style)."""
    from .baseline import collect_env as base_env

    env = base_env(state.fingerprint, state.inventory, cwd=config.rootpath)
    env["engine"] = state.settings.engine
    env["sim_gpu"] = state.settings.sim_gpu if state.settings.engine == "sim" else None
    env["gpu_memory_total_mb"] = [g.memory_total_mb for g in state.inventory.gpus]
    return env


def header_lines(config: pytest.Config) -> list[str]:
    """The ``mgpu:`` report-header line(s)."""
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return []
    s = state.settings
    line = f"mgpu: engine={s.engine}"
    if s.fallback_reason:
        line += f" ({s.fallback_reason})"
    if s.engine == "sim":
        line += f", sim GPU {s.sim_gpu} x{s.sim_gpus}"
    elif state.inventory.count:
        names = sorted({g.name for g in state.inventory.gpus})
        line += f", {state.inventory.count} GPU(s): {', '.join(names)}, driver {state.inventory.driver}"
    else:
        line += f", no GPU: {state.visible_devices} CPU worker(s)"
    line += f", repeats={s.repeats}, baselines={s.baseline_dir}/{state.fingerprint}"
    return [line]


def _model_search_dirs(config: pytest.Config, path: Path | None) -> list[Path]:
    dirs = [Path(config.rootpath)]
    if path is not None:
        dirs.insert(0, path.parent)
    return dirs


def generate_layouts(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``mgpu_layout`` from the layout marks; validate marks and model at collection."""
    if not any(f in metafunc.fixturenames for f in MGPU_FIXTURES) and not list(
        metafunc.definition.iter_markers("layout")
    ):
        return
    state = metafunc.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    nodeid = metafunc.definition.nodeid
    node = metafunc.definition
    try:
        layouts = layouts_from_marks(reversed(list(node.iter_markers("layout"))), nodeid)
        model_ref = model_from_marks(node.iter_markers("model"), nodeid) or state.settings.model
        engine_opts_from_marks(node.iter_markers("engine_opts"), nodeid)
        tolerances = tolerance_marks(node.iter_markers("perf_tolerance"), nodeid)
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    if tolerances:
        from .compare import DEFAULT_CONFIG

        try:
            DEFAULT_CONFIG.with_overrides(tolerances)
        except Exception as exc:  # ArgumentTypeError / ValueError, with the bad value in the text
            pytest.fail(f"{nodeid}: perf_tolerance: {exc}", pytrace=False)
    try:
        model = resolve_model(model_ref, _model_search_dirs(metafunc.config, Path(str(metafunc.definition.path))))
    except ModelError as exc:
        pytest.fail(f"{nodeid}: {exc}", pytrace=False)
    for lay in layouts:
        why = check_layout(model, lay.tp, lay.pp)
        if why:
            pytest.fail(f"{nodeid}: layout {lay.id}: {why}", pytrace=False)
    if "mgpu_layout" not in metafunc.fixturenames:
        metafunc.fixturenames.append("mgpu_layout")
    metafunc.parametrize("mgpu_layout", layouts, ids=[lay.id for lay in layouts], scope="function")


def _item_spec(config: pytest.Config, item: pytest.Item, layout: Layout) -> EngineSpec:
    state = config.stash[STATE_KEY]
    s = state.settings
    model_ref = model_from_marks(item.iter_markers("model"), item.nodeid) or s.model
    model = resolve_model(model_ref, _model_search_dirs(config, Path(str(item.path))))
    options = dict(s.engine_options)
    if s.engine == "sim":
        options.setdefault("gpu", s.sim_gpu)
    options.update(engine_opts_from_marks(item.iter_markers("engine_opts"), item.nodeid))
    return EngineSpec(
        engine=s.engine, model=model, layout=layout, options=tuple(sorted(options.items())),
        env=tuple(sorted(s.engine_env.items())), python=s.engine_python,
    )


def prepare_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each mgpu item its engine spec, skip what cannot run here, and group by engine key."""
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    order: dict[Any, int] = {}
    keyed: list[tuple[int, int, pytest.Item]] = []
    for pos, item in enumerate(items):
        fixturenames = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        if not any(f in fixturenames for f in MGPU_FIXTURES) or callspec is None:
            keyed.append((-1, pos, item))
            continue
        layout = callspec.params.get("mgpu_layout", Layout())
        spec = _item_spec(config, item, layout)
        item.stash[SPEC_KEY] = spec
        item.stash[TOLERANCE_KEY] = tolerance_marks(item.iter_markers("perf_tolerance"), item.nodeid)
        need = layout.num_gpus
        if need > state.visible_devices:
            hint = " (--mgpu-sim-gpus)" if state.settings.engine == "sim" else ""
            item.add_marker(
                pytest.mark.skip(reason=f"needs {need} {state.device_word}, {state.visible_devices} visible{hint}")
            )
        keyed.append((order.setdefault(spec.key, len(order)), pos, item))
    # Non-mgpu items keep their place at the front; mgpu items run grouped by engine key.
    keyed.sort(key=lambda t: (t[0] >= 0, t[0], t[1]))
    items[:] = [it for _, _, it in keyed]


def finish_session(session: pytest.Session) -> None:
    """Stop engines and write the session's outputs; a failed teardown fails the session."""
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    try:
        state.manager.close()
    except EngineError as exc:
        state.errors.append(f"ERROR at engine teardown: {exc}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    from .outputs import write_outputs

    write_outputs(session.config, state)
