"""GPU layouts: tensor x pipeline parallelism over one or more nodes, and an optional per-GPU memory cap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import LayoutError

LAYOUT_KEYS = ("tp", "pp", "gpu_mem_gb", "nodes")


@dataclass(frozen=True, order=True)
class Layout:
    """How one engine instance is spread over GPUs, and over how many nodes (hosts) of a Ray cluster.

    ``nodes > 1`` spreads the ``tp * pp`` GPUs evenly over that many nodes (``gpus_per_node`` each);
    it runs on a Ray cluster (``--mgpu-ray-address``), or on the sim, which models the slower links
    between nodes. See docs/multinode.md.
    """

    tp: int = 1
    pp: int = 1
    gpu_mem_gb: float | None = None
    nodes: int = 1

    @property
    def num_gpus(self) -> int:
        """GPUs (or CPU workers) this layout occupies: ``tp * pp``."""
        return self.tp * self.pp

    @property
    def gpus_per_node(self) -> int:
        """GPUs on each of the layout's nodes: ``tp * pp / nodes``."""
        return self.num_gpus // self.nodes

    @property
    def id(self) -> str:
        """Stable test id part, e.g. ``tp2-pp1``, ``tp1-pp1-mem16`` or ``tp8-pp2-n2`` (``-nN`` only for nodes > 1)."""
        base = f"tp{self.tp}-pp{self.pp}"
        if self.nodes != 1:
            base += f"-n{self.nodes}"
        if self.gpu_mem_gb is not None:
            mem = f"{self.gpu_mem_gb:g}".replace(".", "p")
            base += f"-mem{mem}"
        return base

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``nodes`` only when it is not 1, so single-node records keep their old form."""
        d: dict[str, Any] = {"tp": self.tp, "pp": self.pp, "gpu_mem_gb": self.gpu_mem_gb}
        if self.nodes != 1:
            d["nodes"] = self.nodes
        return d

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
            f"allowed: layout(tp=1, pp=1, gpu_mem_gb=None, nodes=1)"
        )
    tp = _positive_int("tp", kwargs.get("tp", 1), where)
    pp = _positive_int("pp", kwargs.get("pp", 1), where)
    nodes = _positive_int("nodes", kwargs.get("nodes", 1), where)
    if (tp * pp) % nodes:
        raise LayoutError(
            f"{where}: nodes={nodes} does not divide the layout's {tp * pp} GPUs (tp={tp} x pp={pp}); "
            f"every node gets tp*pp/nodes GPUs, e.g. layout(tp=8, pp=2, nodes=2)"
        )
    mem = kwargs.get("gpu_mem_gb")
    if mem is not None:
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0:
            raise LayoutError(f"{where}: gpu_mem_gb={mem!r} is not a positive number of GB")
        mem = float(mem)
    return Layout(tp=tp, pp=pp, gpu_mem_gb=mem, nodes=nodes)
