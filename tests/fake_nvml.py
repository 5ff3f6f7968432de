"""A fake ``pynvml`` for telemetry tests: scripted readings per GPU, no GPU needed.

Each reading comes from a per-GPU script (a list consumed one sample at a time, the last value
repeated). ``unsupported`` names (gpu, metric) pairs that raise NVML's NotSupported error.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError_NotSupported(Exception):
    """What pynvml raises for a query the card does not support."""


class NVMLError_LibraryNotFound(Exception):
    """What pynvml raises without a driver."""


@dataclass
class FakeGpu:
    """Scripted readings of one GPU (each list is consumed one sample at a time)."""

    name: str = "NVIDIA H100 80GB HBM3"
    mem_mib: Sequence[float] = (40_000.0,)
    util: Sequence[float] = (100.0,)
    power_w: Sequence[float] = (600.0,)
    sm_mhz: Sequence[float] = (1980.0,)
    reasons: Sequence[int] = (0,)
    unsupported: set[str] = field(default_factory=set)
    mem_clock_mhz: float = 2619.0
    bus_width: int = 5120


class FakeNvml:
    """The subset of ``pynvml`` the plugin calls, over scripted :class:`FakeGpu` s."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, gpus: Sequence[FakeGpu], fail_init: bool = False) -> None:
        self.gpus = list(gpus)
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0
        self.samples = [0] * len(self.gpus)  # clock reads per GPU: one per sample
        self.lock = threading.Lock()

    def _pick(self, i: int, seq: Sequence[Any], metric: str) -> Any:
        if metric in self.gpus[i].unsupported:
            raise NVMLError_NotSupported("Not Supported")
        n = self.samples[i]
        return seq[min(n, len(seq) - 1)]

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i >= len(self.gpus):
            raise IndexError(i)
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.gpus[h].name

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(used=int(self._pick(h, self.gpus[h].mem_mib, "mem") * 2**20), total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._pick(h, self.gpus[h].util, "util"), memory=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._pick(h, self.gpus[h].power_w, "power") * 1000)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        if kind == self.NVML_CLOCK_MEM:
            return int(self.gpus[h].mem_clock_mhz)
        return int(self._pick(h, self.gpus[h].sm_mhz, "clock"))

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        return int(self.gpus[h].mem_clock_mhz) if kind == self.NVML_CLOCK_MEM else 1980

    def nvmlDeviceGetMemoryBusWidth(self, h: int) -> int:
        return self.gpus[h].bus_width

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        try:
            return int(self._pick(h, self.gpus[h].reasons, "reasons"))
        finally:
            with self.lock:
                self.samples[h] += 1  # the last read of a sample: advance this GPU's script
