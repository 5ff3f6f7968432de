"""Per-session plugin state (kept in ``config.stash``) and the engine manager."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from .engines import EngineAdapter, EngineSpec, RunningEngine, get_adapter
from .errors import EngineError, EngineUnavailable, GpuMemoryError
from .gpus import GpuAllocator, GpuInventory
from .results import BenchResult
from .settings import Settings


class EngineManager:
    """Starts engines on demand, reuses one while the engine key stays the same, stops it after.

    Items are ordered by engine key at collection, so each key starts once. A key whose start
    failed is remembered and fails its later tests at once, with the same error.
    """

    def __init__(self, settings: Settings, inventory: GpuInventory) -> None:
        self.settings = settings
        self.inventory = inventory
        self.allocator = GpuAllocator([g.index for g in inventory.gpus])
        self.current: RunningEngine | None = None
        # The adapter that started ``current`` stops it: adapters may keep per-start state
        # (TensorRT-LLM's process tag, vLLM's /dev/shm snapshot).
        self.current_adapter: EngineAdapter | None = None
        self.failed: dict[tuple[Any, ...], BaseException] = {}

    def acquire(self, spec: EngineSpec) -> RunningEngine:
        """The running engine for ``spec``, starting it (and stopping another) if needed."""
        if spec.key in self.failed:
            exc = self.failed[spec.key]
            if isinstance(exc, EngineUnavailable):
                raise exc
            raise EngineError(f"engine for this key failed earlier in the session: {exc}") from None
        cur = self.current
        if cur is not None and cur.spec is not None and cur.spec.key == spec.key:
            if cur.alive:
                return cur
            self.stop_current()
            err = EngineError(f"{cur.name} ({cur.layout.id}) died between tests", cur.log_path)
            self.failed[spec.key] = err
            raise err
        self.stop_current()
        engine = get_adapter(spec.engine)
        gpu_ids = self.allocator.acquire(spec.layout.num_gpus) if self.inventory.count else []
        try:
            running = engine.start(
                spec, self.inventory, gpu_ids, self.settings.log_dir, self.settings.start_timeout_s
            )
        except BaseException as exc:
            self.allocator.release(gpu_ids)
            if isinstance(exc, (EngineError, EngineUnavailable)):
                self.failed[spec.key] = exc
            raise
        self.current, self.current_adapter = running, engine
        return running

    def stop_current(self) -> None:
        """Stop the running engine (if any) and wait for its GPU memory to come back."""
        cur, self.current = self.current, None
        adapter, self.current_adapter = self.current_adapter, None
        if cur is None:
            return
        try:
            (adapter or get_adapter(cur.name)).stop(cur)
        except GpuMemoryError as exc:
            raise EngineError(f"stopping {cur.describe()}: {exc}", cur.log_path) from None
        finally:
            self.allocator.release(cur.gpu_ids)

    def close(self) -> None:
        """Stop everything; called at session end."""
        self.stop_current()


@dataclass
class MgpuState:
    """Everything the plugin keeps for one session."""

    settings: Settings
    inventory: GpuInventory
    fingerprint: str
    visible_devices: int
    device_word: str  # "GPUs" or "CPU workers" or "sim GPUs"
    manager: EngineManager
    env_info: dict[str, Any] = field(default_factory=dict)
    gate: Any = None  # compare.GateConfig from the options, built once per session
    results: list[BenchResult] = field(default_factory=list)
    comparisons: list[Any] = field(default_factory=list)  # compare.Comparison
    errors: list[str] = field(default_factory=list)
    prev_sigterm: Any = None
    updated: list[str] = field(default_factory=list)  # baseline entries written this session


def install_sigterm_handler() -> Any:
    """Turn SIGTERM into KeyboardInterrupt, so pytest still runs session teardown and stops engines.

    Engines live in their own process groups, so a CI runner's SIGTERM to pytest never reaches
    them. Returns the previous handler (for :func:`restore_sigterm_handler`), or None when another
    handler is already installed or this is not the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    prev = signal.getsignal(signal.SIGTERM)
    if prev is not signal.SIG_DFL:
        return None

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM received: stopping engines")

    signal.signal(signal.SIGTERM, on_term)
    return prev


def restore_sigterm_handler(prev: Any) -> None:
    """Undo :func:`install_sigterm_handler`."""
    import signal

    if prev is not None:
        signal.signal(signal.SIGTERM, prev)


STATE_KEY = pytest.StashKey[MgpuState]()
SPEC_KEY = pytest.StashKey[EngineSpec]()
ITEM_RESULTS_KEY = pytest.StashKey[list[BenchResult]]()
TOLERANCE_KEY = pytest.StashKey[dict[str, Any]]()


def cpu_workers() -> int:
    """Cores this process may use: how many CPU workers a CPU engine layout may have."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
