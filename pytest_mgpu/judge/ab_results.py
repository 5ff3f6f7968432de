"""A same-job A/B's records: its rounds, the new side's result with the old side and the decision
attached, and what each engine group cost.

Records only, as :mod:`.results` is for the plain gate: :mod:`pytest_mgpu.run.ab` measures the
rounds, :mod:`.ab_verdicts` decides, :mod:`pytest_mgpu.report.render.ab` shows the result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .ab_verdicts import AbDecision
from .results import BenchResult
from .verdicts import Verdict


@dataclass
class AbRound:
    """One round: the workload measured on a fresh old and a fresh new engine, in ``order``."""

    index: int
    order: tuple[str, str]
    old: BenchResult
    new: BenchResult
    start_s: dict[str, float] = field(default_factory=dict)  # launch to ready, incl. preflight, per side
    measure_s: dict[str, float] = field(default_factory=dict)
    stop_s: dict[str, float] = field(default_factory=dict)
    #: Items of the engine group measured on these starts (their start and stop times are shared).
    shared_by: int = 1
    position: int = 0  # this item's place in the round's measuring order (it rotates by one per round)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (per-repeat summaries of both sides)."""
        return {
            "round": self.index, "order": list(self.order), "shared_by": self.shared_by, "position": self.position,
            "start_s": self.start_s, "measure_s": self.measure_s, "stop_s": self.stop_s,
            "old": [r.to_dict() for r in self.old.repeats], "new": [r.to_dict() for r in self.new.repeats],
        }


def per_round(results: Sequence[BenchResult], metric: str) -> list[float]:
    """A side's value of ``metric`` in each round: the median of the repeats on that engine start."""
    out = []
    for r in results:
        vals = r.samples(metric)
        out.append(float(statistics.median(vals)) if vals else math.nan)
    return out


@dataclass
class AbResult(BenchResult):
    """The new side's result (every repeat of every round), with the old side, rounds and decision attached."""

    old: BenchResult | None = None
    decision: AbDecision | None = None
    rounds: list[AbRound] = field(default_factory=list)
    old_describe: str = ""
    wall_s: float = 0.0  # this item's share of its engine group's A/B, first start to last stop
    group: AbGroupCost | None = None  # the engine group it was measured with (shared starts)

    @property
    def verdict(self) -> Verdict:
        """The A/B verdict (INVALID when there is no decision)."""
        return self.decision.verdict if self.decision else Verdict.INVALID

    @property
    def old_version(self) -> str:
        """The old side's engine version."""
        return self.old.engine_version if self.old else "?"

    @property
    def gpu_seconds(self) -> float:
        """GPU-seconds this verdict cost: the A/B's wall time (starts, measurements, stops) x GPUs."""
        return self.wall_s * self.num_gpus

    def cost(self) -> dict[str, float]:
        """Engine starts it was measured on, its share of their start and stop seconds (a start shared by
        k items counts 1/k), its measurements' seconds (both sides), and its share of the GPU-minutes."""
        starts = [(s, rd.shared_by) for rd in self.rounds for s in rd.start_s.values()]
        return {
            "starts": len(starts),
            "start_s": math.fsum(s / k for s, k in starts),
            "measure_s": math.fsum(s for rd in self.rounds for s in rd.measure_s.values()),
            "stop_s": math.fsum(s / rd.shared_by for rd in self.rounds for s in rd.stop_s.values()),
            "wall_s": self.wall_s,
            "gpu_minutes": self.gpu_seconds / 60.0,
        }

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        """The new side as in ``--mgpu-json``, plus ``ab``: old side, rounds, per-metric decision, cost."""
        d = super().to_dict(with_records)
        d["ab"] = {
            "old_version": self.old_version,
            "new_version": self.engine_version,
            "old_side": self.old_describe,
            "verdict": str(self.verdict),
            "rounds": len(self.rounds),
            "note": self.decision.note if self.decision else "",
            "metrics": [m.to_dict() for m in self.decision.metrics] if self.decision else [],
            "cost": self.cost(),
            "group": self.group.to_dict() if self.group else None,
            "old": self.old.to_dict(with_records) if self.old else None,
            "per_round": [rd.to_dict() for rd in self.rounds],
        }
        return d


def merge_rounds(results: Sequence[BenchResult]) -> BenchResult:
    """One side's rounds as one result: every repeat of every round, in order."""
    first = results[0]
    return replace(first, repeats=[rep for r in results for rep in r.repeats])





@dataclass
class AbGroupCost:
    """What one engine group's A/B cost: its items, the engine starts, the wall time and GPU-minutes."""

    name: str  # ``sim tp1-pp1 llama-2-7b``
    items: list[str]
    num_gpus: int
    starts: int = 0
    rounds: int = 0
    wall_s: float = 0.0

    @property
    def gpu_minutes(self) -> float:
        """The group's wall time (first start to last stop) x GPUs, in minutes."""
        return self.wall_s * self.num_gpus / 60.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "items": list(self.items), "num_gpus": self.num_gpus, "starts": self.starts,
                "rounds": self.rounds, "wall_s": self.wall_s, "gpu_minutes": self.gpu_minutes}


def groups_in(results: Sequence[AbResult]) -> list[AbGroupCost]:
    """The engine groups of ``results``, each once, in order."""
    seen: dict[int, AbGroupCost] = {}
    for r in results:
        if r.group is not None:
            seen.setdefault(id(r.group), r.group)
    return list(seen.values())
