"""Slow drift: the cumulative change of a result since its baseline entry's anchor recording.

The stored gate compares a run with the latest level of its entry. Accepted upgrades can each be
inside the tolerance and still add up (3% per upgrade is 11.5% after four), and the rolling
baseline hides that. Each entry therefore keeps an *anchor* recording (its first, or one pinned
with ``pytest-mgpu accept --anchor``; history trimming never drops it), and every comparison also
measures the run against the anchor alone, with the gate's own rule (:func:`~.verdicts.compare_metric`:
beyond the tolerance and beyond the noise of the difference). A gated metric beyond both is slow
drift: FAIL, or WARN with ``--mgpu-anchor-drift=warn``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .verdicts import Comparison, GateConfig, Measured, MetricComparison, Verdict, compare_metric, worst

if TYPE_CHECKING:  # pragma: no cover - only the types
    from .baseline import BaselineEntry, Recording

#: What ``--mgpu-anchor-drift`` may say: a drift beyond tolerance and noise FAILs, or only WARNs.
DRIFT_MODES = ("fail", "warn")


@dataclass(frozen=True)
class DriftCheck:
    """A run against its entry's anchor: each metric's cumulative change, and the drift verdict."""

    anchor_where: str  # ``recording 1, the first`` (:meth:`BaselineEntry.describe_anchor`)
    anchor_version: str
    anchor_date: str
    levels: int  # recordings kept after the anchor (trimming may have dropped some in between)
    metrics: tuple[MetricComparison, ...]
    verdict: Verdict  # PASS, or FAIL/WARN (by mode) when a gated metric drifted beyond tolerance and noise

    @property
    def drifted(self) -> list[MetricComparison]:
        """Gated metrics beyond the tolerance and the noise, in the bad direction, since the anchor."""
        return [m for m in self.metrics if m.gated and m.verdict is Verdict.FAIL]

    def describe(self) -> str:
        """``since the anchor (recording 1, 0.1.0, 2026-01-01): tpot_p50 +12.6% (tolerance 5%, noise 1.3%): FAIL``."""
        where = f"{self.anchor_where}, {self.anchor_version}, {self.anchor_date}"
        shown = self.drifted or [m for m in self.metrics if m.gated and m.delta_pct is not None]
        parts = [m.describe() for m in shown]
        return f"since the anchor ({where}): " + ("; ".join(parts) or "no data")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a comparison's ``drift``)."""
        return {
            "verdict": str(self.verdict), "anchor": self.anchor_where,
            "anchor_engine_version": self.anchor_version, "anchor_date": self.anchor_date,
            "recordings_kept_since": self.levels,
            "metrics": {m.metric: {"delta_pct": m.delta_pct, "noise_pct": m.noise_pct, "tolerance_pct": m.tolerance_pct,
                                   "verdict": str(m.verdict), "gated": m.gated} for m in self.metrics},
        }


def check_drift(now: Measured, entry: BaselineEntry, config: GateConfig, mode: str = "fail") -> DriftCheck:
    """Compare ``now`` with ``entry``'s anchor recording alone, by the gate's rule, metric by metric."""
    if mode not in DRIFT_MODES:
        raise ValueError(f"drift mode {mode!r}: use one of {', '.join(DRIFT_MODES)}")
    anchor: Recording = entry.anchor
    mcs = tuple(
        compare_metric(m, anchor.metrics.get(m, ()), now.samples(m), config)
        for m in config.metrics if anchor.metrics.get(m)
    )
    drifted = any(m.gated and m.verdict is Verdict.FAIL for m in mcs)
    verdict = (Verdict.FAIL if mode == "fail" else Verdict.WARN) if drifted else Verdict.PASS
    return DriftCheck(entry.describe_anchor(), anchor.engine_version, str(anchor.env.get("date", "?")),
                      len(entry.since_anchor()) - 1, mcs, verdict)


def with_drift(c: Comparison, d: DriftCheck | None) -> Comparison:
    """``c`` with the drift check attached; a drift FAIL/WARN makes a passing comparison FAIL/WARN, saying why.

    Only a compared result (PASS, IMPROVED, WARN, FAIL) carries drift; NEW, MISMATCH, INVALID stay as they are.
    """
    if d is None or c.verdict in (Verdict.NEW, Verdict.MISMATCH, Verdict.INVALID):
        return c
    c = replace(c, drift=d.to_dict())
    if d.verdict is Verdict.PASS or d.levels < 1:
        return c  # the anchor is the latest recording: the level's own verdict already says it all
    note = f"slow drift {d.describe()}"
    return replace(c, verdict=worst([c.verdict, d.verdict]), note="; ".join(x for x in (note, c.note) if x))


def trend_values(entry: BaselineEntry, metric: str) -> list[float]:
    """The medians of ``metric`` in each recording from the anchor to the latest."""
    return [float(statistics.median(r.metrics[metric])) for r in entry.since_anchor() if r.metrics.get(metric)]
