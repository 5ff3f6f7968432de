"""Starts, reuses and stops running engines by engine key, on disjoint GPUs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines import EngineAdapter, EngineSpec, RunningEngine, get_adapter
from ..errors import EngineError, EngineUnavailable, GpuMemoryError, restart_warning
from ..gpus import GpuAllocator, GpuInventory
from .settings import Settings

if TYPE_CHECKING:  # pragma: no cover - ray is imported only for a cluster session
    from ..cluster.ray_client import RayCluster


class EngineManager:
    """Starts engines on demand, reuses one while the engine key stays the same, stops it after.

    Items are ordered by engine key at collection, so each key starts once. A key whose start
    failed is remembered and fails its later tests at once, with the same error.
    """

    def __init__(self, settings: Settings, inventory: GpuInventory, cluster: RayCluster | None = None) -> None:
        self.settings = settings
        self.inventory = inventory
        self.cluster = cluster  # engines run on this Ray cluster, checked around every start and stop
        self.allocator = GpuAllocator([g.index for g in inventory.gpus])
        self.current: RunningEngine | None = None
        # The adapter that started ``current`` stops it: adapters may keep per-start state
        # (TensorRT-LLM's process tag, vLLM's /dev/shm snapshot).
        self.current_adapter: EngineAdapter | None = None
        self.failed: dict[tuple[Any, ...], BaseException] = {}

    def acquire(self, spec: EngineSpec, watch: Callable[[Path | None], None] | None = None) -> RunningEngine:
        """The running engine for ``spec``: the current one if it still answers, else a fresh start.

        An engine that died or stopped answering ``/health`` since the last test is stopped and
        started again, with an :class:`EngineRestartWarning` saying "engine stopped answering"
        and its log tail. A key whose start failed is not retried; its later tests error with
        one line pointing at the first error (the log is printed once).

        ``watch`` (live progress) is called once before a start and then with the engine's log
        path on every readiness poll; never when the running engine is reused.
        """
        if spec.key in self.failed:
            exc = self.failed[spec.key]
            if isinstance(exc, EngineUnavailable):
                raise exc
            summary = getattr(exc, "summary", str(exc).splitlines()[0])
            raise EngineError(
                f"{spec.engine} {spec.layout.id} failed to start earlier in this session ({summary}); "
                f"not retried: the first test that needed it shows the engine's log"
            )
        cur = self.current
        if cur is not None and cur.spec is not None and cur.spec.key == spec.key:
            adapter = self.current_adapter or get_adapter(cur.name)
            why = adapter.health_problem(cur)
            if why is None:
                return cur
            warning = restart_warning(cur, f"{why}; stopped it and started a new one")  # the log before the stop
            self.stop_current()
            warnings.warn(warning, stacklevel=2)
        self.stop_current()
        adapter = get_adapter(spec.engine)
        if watch is not None:
            watch(None)
            adapter.on_wait = watch
        if self.cluster is not None:
            adapter = self.cluster.wrap(adapter)
        # The sim never touches a GPU (beside a real engine, its layouts may need more than there are);
        # on a cluster Ray places the workers.
        real = self.inventory.count and spec.engine != "sim" and self.cluster is None
        gpu_ids = self.allocator.acquire(spec.layout.num_gpus) if real else []
        try:
            running = adapter.start(
                spec, self.inventory, gpu_ids, self.settings.log_dir, self.settings.start_timeout_s
            )
        except BaseException as exc:
            self.allocator.release(gpu_ids)
            if isinstance(exc, (EngineError, EngineUnavailable)):
                self.failed[spec.key] = exc
            raise
        self.current, self.current_adapter = running, adapter
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
