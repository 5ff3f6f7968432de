"""The plugin's state for one pytest session: :class:`MgpuSession`, created at configure, kept in ``config.stash``."""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from .engine_manager import EngineManager
from .engines import EngineSpec, check_engine_options
from .errors import EngineError
from .gpus import GpuInventory, query_inventory
from .machine import collect_env
from .markers import TestMarks, register_markers
from .models import Model, resolve_model
from .outputs import write_outputs
from .report import summary_lines
from .results import BenchResult
from .settings import Settings, build_settings, gate_config
from .verdicts import Comparison, GateConfig

#: What ``signal.getsignal`` returns: a handler, SIG_DFL/SIG_IGN, or None.
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@dataclass
class MgpuSession:
    """Everything the plugin keeps for one session, and what the hooks ask of it."""

    config: pytest.Config
    settings: Settings
    gate: GateConfig  # from the options, built once per session
    inventory: GpuInventory
    fingerprint: str
    visible_devices: int
    device_word: str  # "GPUs" or "CPU workers" or "sim GPUs"
    manager: EngineManager
    env_info: dict[str, Any] = field(default_factory=dict)
    results: list[BenchResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # baseline entries written this session
    prev_sigterm: SignalHandler = None
    #: Resolved models by directory: each model's config.json is read once per session.
    models: dict[Path, Model] = field(default_factory=dict)
    #: Parsed marks by test-function node id, from generation to item preparation.
    marks: dict[str, TestMarks] = field(default_factory=dict)
    #: Decode floors by running engine (pid, url), computed once per engine (:mod:`.regime`).
    rooflines: dict[tuple[int, str], dict[str, Any] | None] = field(default_factory=dict)
    #: Compact telemetry of the baseline entries the gate compared with, by entry id.
    base_telemetry: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def start(cls, config: pytest.Config) -> MgpuSession:
        """Read the GPUs, validate the options, choose the engine; store the session in ``config.stash``."""
        inventory = query_inventory()
        settings = build_settings(config, inventory.count, inventory.error)
        try:
            check_engine_options(settings.engine, settings.engine_options)
        except EngineError as exc:
            raise pytest.UsageError(f"--mgpu-engine-opt: {exc}") from None
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
        sess = cls(
            config=config, settings=settings, gate=gate, inventory=inventory, fingerprint=fingerprint,
            visible_devices=visible, device_word=word, manager=EngineManager(settings, inventory),
        )
        sess.env_info = collect_env(
            fingerprint, inventory, cwd=config.rootpath, engine=settings.engine, sim_gpu=settings.sim_gpu
        )
        sess.prev_sigterm = install_sigterm_handler()
        atexit.register(sess.manager.close)  # last resort: never leave an engine running
        config.stash[SESSION_KEY] = sess
        return sess

    def resolve_model(self, ref: str, test_path: Path | None) -> Model:
        """The model ``ref`` names, searched beside the test file, then in the rootdir and the built-ins."""
        dirs = [Path(self.config.rootpath)]
        if test_path is not None:
            dirs.insert(0, test_path.parent)
        model = resolve_model(ref, dirs)
        return self.models.setdefault(model.path, model)

    def header_lines(self) -> list[str]:
        """The ``mgpu:`` report-header line: engine (and why, if it fell back), devices, model, baselines."""
        s = self.settings
        line = f"mgpu: engine={s.engine}"
        if s.fallback_reason:
            line += f" ({s.fallback_reason})"
        if s.engine == "sim":
            line += f", sim GPU {s.sim_gpu} x{s.sim_gpus}"
        elif self.inventory.count:
            names = sorted({g.name for g in self.inventory.gpus})
            line += f", {self.inventory.count} GPU(s): {', '.join(names)}, driver {self.inventory.driver}"
        else:
            line += f", no GPU: {self.visible_devices} CPU worker(s)"
        line += f", repeats={s.repeats}, baselines={s.baseline_dir}/{self.fingerprint}"
        return [line]

    def baseline_telemetry(self, result: BenchResult) -> dict[str, float] | None:
        """The compact GPU telemetry stored with ``result``'s baseline entry, if any (for clock warnings)."""
        return self.base_telemetry.get(result.entry_id)

    def record(self, item: pytest.Item, result: BenchResult) -> None:
        """Keep a measured result for the session's reports and for the item's gate."""
        self.results.append(result)
        item.stash.setdefault(ITEM_RESULTS_KEY, []).append(result)

    def finish(self, session: pytest.Session) -> None:
        """Stop engines and write the session's output files; a failed teardown fails the session."""
        try:
            self.manager.close()
        except EngineError as exc:
            self.errors.append(f"ERROR at engine teardown: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        write_outputs(self)

    def write_summary(self, tr: pytest.TerminalReporter) -> None:
        """Write the per-item table, the per-layout table and the gate summary to the terminal."""
        for sep, text in summary_lines(self, self.config.invocation_params.args):
            if sep:
                tr.write_sep(sep, text)
            else:
                tr.write_line(text)

    def close(self) -> None:
        """Stop any engine still running and give SIGTERM back its previous handler."""
        self.manager.close()
        restore_sigterm_handler(self.prev_sigterm)


#: The session, in ``config.stash``.
SESSION_KEY = pytest.StashKey[MgpuSession]()
#: An mgpu item's engine spec, set at collection.
SPEC_KEY = pytest.StashKey[EngineSpec]()
#: The results an item's ``mgpu_bench`` measured, for its gate.
ITEM_RESULTS_KEY = pytest.StashKey[list[BenchResult]]()


def configure(config: pytest.Config) -> MgpuSession:
    """Register the markers and start the session."""
    register_markers(config)
    return MgpuSession.start(config)


def session_of(config: pytest.Config) -> MgpuSession:
    """The session of ``config`` (set by :func:`configure`)."""
    return config.stash[SESSION_KEY]


def unconfigure(config: pytest.Config) -> None:
    """Last resort at unconfigure: never leave an engine running (no-op when configure failed)."""
    sess = config.stash.get(SESSION_KEY, None)
    if sess is not None:
        sess.close()


def install_sigterm_handler() -> SignalHandler:
    """Turn SIGTERM into KeyboardInterrupt, so pytest still runs session teardown and stops engines.

    Engines live in their own process groups, so a CI runner's SIGTERM to pytest never reaches
    them. Returns the previous handler (for :func:`restore_sigterm_handler`), or None when another
    handler is already installed or this is not the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    prev = signal.getsignal(signal.SIGTERM)
    if prev is not signal.SIG_DFL:
        return None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM received: stopping engines")

    signal.signal(signal.SIGTERM, on_term)
    return prev


def restore_sigterm_handler(prev: SignalHandler) -> None:
    """Undo :func:`install_sigterm_handler`."""
    if prev is not None:
        signal.signal(signal.SIGTERM, prev)


def cpu_workers() -> int:
    """Cores this process may use: how many CPU workers a CPU engine layout may have."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
