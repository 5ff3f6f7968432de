"""GPU inventory through NVML, disjoint GPU allocation, and waiting for memory to come back.

No NVML library, or no GPU, is a normal state: the inventory is simply empty.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GpuMemoryError


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU."""

    index: int
    name: str
    memory_total_mb: int
    uuid: str = ""
    compute_capability: tuple[int, int] | None = None


@dataclass
class GpuInventory:
    """The GPUs this process may use, and the driver that runs them."""

    gpus: list[GpuInfo] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None
    error: str | None = None  # why NVML could not be used, if it could not

    @property
    def count(self) -> int:
        """Number of visible GPUs."""
        return len(self.gpus)

    def fingerprint(self) -> str:
        """Hardware key for baselines, e.g. ``nvidia-h100-80gb-hbm3-x2``; ``cpu`` without GPUs."""
        if not self.gpus:
            return "cpu"
        names = sorted({normalise_name(g.name) for g in self.gpus})
        return f"{'+'.join(names)}-x{self.count}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "count": self.count,
            "names": [g.name for g in self.gpus],
            "memory_total_mb": [g.memory_total_mb for g in self.gpus],
            "driver": self.driver,
            "cuda": self.cuda,
        }


def normalise_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; ``Tesla V100-SXM2-16GB`` too."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not s.startswith("nvidia"):
        s = "nvidia-" + s
    return s


def _visible_filter() -> list[int] | None:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return None
    parts = [p.strip() for p in cvd.split(",") if p.strip()]
    if all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None  # UUIDs or MIG ids: do not second-guess the user; show everything


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def query_inventory() -> GpuInventory:
    """Read the GPUs through NVML. Never raises: failures are recorded in ``error``."""
    try:
        import pynvml  # lazy: optional at run time, absent NVML is normal
    except ImportError as exc:  # pragma: no cover - dependency is declared
        return GpuInventory(error=f"pynvml not importable: {exc}")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return GpuInventory(error=f"NVML unavailable: {exc}")
    try:
        inv = GpuInventory(driver=_decode(pynvml.nvmlSystemGetDriverVersion()))
        try:
            v = pynvml.nvmlSystemGetCudaDriverVersion()
            inv.cuda = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        allowed = _visible_filter()
        for i in range(pynvml.nvmlDeviceGetCount()):
            if allowed is not None and i not in allowed:
                continue
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                cc: tuple[int, int] | None = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            inv.gpus.append(
                GpuInfo(
                    index=i,
                    name=_decode(pynvml.nvmlDeviceGetName(h)),
                    memory_total_mb=int(pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20),
                    uuid=_decode(pynvml.nvmlDeviceGetUUID(h)),
                    compute_capability=cc,
                )
            )
        return inv
    except Exception as exc:
        return GpuInventory(error=f"NVML query failed: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def memory_used_mb(indices: Iterable[int]) -> dict[int, int]:
    """Used memory per GPU index, in MiB; empty without NVML."""
    idx = list(indices)
    if not idx:
        return {}
    try:
        import pynvml  # lazy: optional at run time, absent NVML is normal

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        return {
            i: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used // 2**20)
            for i in idx
        }
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def wait_memory_back(
    before: dict[int, int], timeout_s: float = 60.0, slack_mb: int = 512, poll_s: float = 0.5
) -> dict[int, int]:
    """Wait until each GPU's used memory is back within ``slack_mb`` of ``before``.

    The driver frees a dead process's memory asynchronously, so this polls. Raises
    :class:`GpuMemoryError` naming the GPUs still holding memory after ``timeout_s``.
    """
    if not before:
        return {}
    deadline = time.monotonic() + timeout_s
    while True:
        now = memory_used_mb(before)
        held = {i: now[i] - before[i] for i in before if i in now and now[i] - before[i] > slack_mb}
        if not held:
            return now
        if time.monotonic() >= deadline:
            detail = ", ".join(f"GPU {i}: +{mb} MiB" for i, mb in sorted(held.items()))
            raise GpuMemoryError(
                f"GPU memory did not come back within {timeout_s:.0f}s after the engine stopped "
                f"({detail}); a process may still hold it (see nvidia-smi)"
            )
        time.sleep(poll_s)


class GpuAllocator:
    """Hands out disjoint sets of GPU indices to concurrently running engines."""

    def __init__(self, indices: Sequence[int]) -> None:
        self._free = list(indices)
        self._taken: set[int] = set()

    @property
    def free(self) -> list[int]:
        """Indices not handed out."""
        return [i for i in self._free if i not in self._taken]

    def acquire(self, n: int) -> list[int]:
        """Take ``n`` free GPUs, lowest indices first."""
        free = self.free
        if n > len(free):
            raise RuntimeError(f"needs {n} GPUs, {len(free)} free")
        got = free[:n]
        self._taken.update(got)
        return got

    def release(self, ids: Iterable[int]) -> None:
        """Give GPUs back."""
        self._taken.difference_update(ids)
