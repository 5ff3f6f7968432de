"""Result objects: one measurement (a repeat) and one benchmarked workload of a test item."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .layout import Layout
from .metrics import RequestRecord
from .workload import Workload

#: Schema version of the ``--mgpu-json`` results file.
RESULTS_SCHEMA_VERSION = 1


@dataclass
class RepeatResult:
    """One measurement of a workload: its summary, validity and (optionally) raw records."""

    summary: dict[str, float]
    invalid: str | None = None
    records: list[RequestRecord] = field(default_factory=list)
    #: GPU telemetry of the measured phase (:mod:`pytest_mgpu.telemetry`); None without NVML/GPUs.
    telemetry: dict[str, Any] | None = None

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        """JSON-ready form; raw per-request records only on request (they are large)."""
        d: dict[str, Any] = {"summary": self.summary, "invalid": self.invalid}
        if self.telemetry is not None:
            d["telemetry"] = self.telemetry
        if with_records:
            d["records"] = [r.to_dict() for r in self.records]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepeatResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            summary={k: float(v) for k, v in data["summary"].items()},
            invalid=data.get("invalid"),
            records=[RequestRecord.from_dict(r) for r in data.get("records", [])],
            telemetry=data.get("telemetry"),
        )


@dataclass
class BenchResult:
    """A workload measured ``len(repeats)`` times against one engine, for one test item."""

    nodeid: str
    test_name: str  # item name incl. layout id, e.g. "test_serve[tp2-pp1]"
    module: str  # test module path relative to the rootdir, e.g. "perf_tests/test_llama.py"
    workload: Workload
    layout: Layout
    engine: str
    engine_version: str
    model: str
    repeats: list[RepeatResult] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)  # fingerprint, driver, cuda, commit, date, ...
    label: str | None = None  # optional user label, replaces workload.name in the entry id
    #: The layout's decode floor on its card (:class:`pytest_mgpu.regime.Roofline` as a dict), if known.
    roofline: dict[str, Any] | None = None
    #: For a point of ``mgpu_bench.sweep``: ``{"id", "axis", "x", "kv_cache_tokens"}``; else None.
    sweep: dict[str, Any] | None = None

    @property
    def entry_id(self) -> str:
        """Key of this result in a baseline file: ``<test name>::<workload name or label>``."""
        return f"{self.test_name}::{self.label or self.workload.name}"

    @property
    def num_gpus(self) -> int:
        """tp x pp."""
        return self.layout.num_gpus

    @property
    def invalid(self) -> str | None:
        """Why this result cannot be compared: the first invalid repeat's reason, or None."""
        if not self.repeats:
            return "no measurement was taken"
        for i, r in enumerate(self.repeats):
            if r.invalid:
                return f"repeat {i + 1}/{len(self.repeats)}: {r.invalid}"
        return None

    @property
    def valid(self) -> bool:
        """True when every repeat completed every request in full."""
        return self.invalid is None

    def samples(self, metric: str) -> list[float]:
        """The metric's value in each repeat."""
        return [r.summary[metric] for r in self.repeats if metric in r.summary]

    @property
    def median(self) -> dict[str, float]:
        """Per-metric median over the repeats."""
        keys = self.repeats[0].summary.keys() if self.repeats else []
        return {k: float(statistics.median(self.samples(k))) for k in keys}

    def noise(self, metric: str) -> float:
        """Run-to-run noise of a metric: sample std of its log values (0 with < 2 repeats)."""
        vals = [v for v in self.samples(metric) if v > 0 and math.isfinite(v)]
        if len(vals) < 2:
            return 0.0
        return float(statistics.stdev(math.log(v) for v in vals))

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        """JSON-ready form (the ``--mgpu-json`` schema, one element of ``results``)."""
        return {
            "nodeid": self.nodeid,
            "test_name": self.test_name,
            "module": self.module,
            "entry_id": self.entry_id,
            "label": self.label,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model": self.model,
            "layout": self.layout.to_dict(),
            "num_gpus": self.num_gpus,
            "workload": self.workload.to_dict(),
            "valid": self.valid,
            "invalid": self.invalid,
            "median": self.median if self.repeats else {},
            "repeats": [r.to_dict(with_records) for r in self.repeats],
            "env": self.env,
            **({"roofline": self.roofline} if self.roofline is not None else {}),
            **({"sweep": self.sweep} if self.sweep is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            nodeid=data["nodeid"],
            test_name=data["test_name"],
            module=data["module"],
            workload=Workload.from_dict(data["workload"]),
            layout=Layout.from_dict(data["layout"]),
            engine=data["engine"],
            engine_version=data["engine_version"],
            model=data["model"],
            repeats=[RepeatResult.from_dict(r) for r in data.get("repeats", [])],
            env=dict(data.get("env", {})),
            label=data.get("label"),
            roofline=data.get("roofline"),
            sweep=data.get("sweep"),
        )
