"""GPU layouts: tensor x pipeline parallelism, and an optional per-GPU memory cap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import LayoutError

LAYOUT_KEYS = ("tp", "pp", "gpu_mem_gb")


@dataclass(frozen=True, order=True)
class Layout:
    """How one engine instance is spread over GPUs."""

    tp: int = 1
    pp: int = 1
    gpu_mem_gb: float | None = None

    @property
    def num_gpus(self) -> int:
        """GPUs (or CPU workers) this layout occupies: ``tp * pp``."""
        return self.tp * self.pp

    @property
    def id(self) -> str:
        """Stable test id part, e.g. ``tp2-pp1`` or ``tp1-pp1-mem16``."""
        base = f"tp{self.tp}-pp{self.pp}"
        if self.gpu_mem_gb is not None:
            mem = f"{self.gpu_mem_gb:g}".replace(".", "p")
            base += f"-mem{mem}"
        return base

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"tp": self.tp, "pp": self.pp, "gpu_mem_gb": self.gpu_mem_gb}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Inverse of :meth:`to_dict`."""
        return parse_layout(dict(data), where="layout dict")


def _positive_int(name: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayoutError(f"{where}: {name}={value!r} is not a positive int")
    return value


def parse_layout(kwargs: Mapping[str, Any], where: str) -> Layout:
    """Build a :class:`Layout` from marker keywords, naming ``where`` in any error."""
    unknown = sorted(set(kwargs) - set(LAYOUT_KEYS))
    if unknown:
        raise LayoutError(
            f"{where}: unknown layout argument(s) {', '.join(unknown)}; "
            f"allowed: layout(tp=1, pp=1, gpu_mem_gb=None)"
        )
    tp = _positive_int("tp", kwargs.get("tp", 1), where)
    pp = _positive_int("pp", kwargs.get("pp", 1), where)
    mem = kwargs.get("gpu_mem_gb")
    if mem is not None:
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0:
            raise LayoutError(f"{where}: gpu_mem_gb={mem!r} is not a positive number of GB")
        mem = float(mem)
    return Layout(tp=tp, pp=pp, gpu_mem_gb=mem)
