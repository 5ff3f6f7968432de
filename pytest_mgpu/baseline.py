"""The baseline store: one JSON file per hardware fingerprint and test module.

Layout: ``<root>/<fingerprint>/<module path>.json``, e.g.
``baselines/sim-v100-16gb-x4/perf_tests/test_llama.py.json``. Each file holds
``{"schema_version": 1, "fingerprint": ..., "module": ..., "entries": {entry_id: {...}}}``.
Writes are sorted, indented, atomic (temp file + fsync + ``os.replace``) and merge with the
entries already there. A broken file raises :class:`BaselineError` and is never overwritten
unless ``force=True``.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import METRIC_DEFINITION_VERSION, __version__
from .errors import BaselineError
from .results import BenchResult
from .verdicts import DEFAULT_CONFIG, DEFAULT_GATED, DEFAULT_WARN_ONLY, Comparison, GateConfig, compare, log_std

#: Version of the baseline file format.
SCHEMA_VERSION = 1
DEFAULT_ROOT = "baselines"

#: Metrics every baseline entry records (the gated and warn-only ones plus context for humans).
STORED_METRICS: tuple[str, ...] = DEFAULT_GATED + DEFAULT_WARN_ONLY + (
    "output_throughput",
    "request_throughput",
    "ttft_mean",
    "tpot_mean",
    "itl_p50",
    "itl_p99",
    "e2el_p50",
    "e2el_p99",
)

_ENTRY_KEYS = ("engine", "engine_version", "model", "layout", "workload", "metrics", "env")
_FINGERPRINT_RE = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")


def _sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits: far below any noise, and short in diffs."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class MetricRecord:
    """One metric of a baseline entry: the value of each repeat, their median and log-std noise."""

    samples: tuple[float, ...]
    median: float
    noise: float

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> MetricRecord:
        """Round the samples and derive the median and noise from the rounded values."""
        vals = tuple(_sig(float(v)) for v in samples)
        return cls(vals, _sig(float(statistics.median(vals))), _sig(log_std(vals)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"samples": list(self.samples), "median": self.median, "noise": self.noise}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(v) for v in data["samples"]), float(data["median"]), float(data["noise"]))


@dataclass(frozen=True)
class BaselineEntry:
    """What one result recorded as the baseline: context, per-repeat metric values, environment."""

    entry_id: str
    engine: str
    engine_version: str
    model: str
    layout: dict[str, Any]
    workload: dict[str, Any]
    metrics: dict[str, MetricRecord]
    env: dict[str, Any] = field(default_factory=dict)
    nodeid: str = ""
    repeats: int = 0

    @property
    def invalid(self) -> str | None:
        """Always None: only valid results become baselines."""
        return None

    def samples(self, metric: str) -> list[float]:
        """The metric's value in each recorded repeat (empty if not recorded)."""
        rec = self.metrics.get(metric)
        return list(rec.samples) if rec else []

    def median(self, metric: str) -> float | None:
        """The recorded median of a metric."""
        rec = self.metrics.get(metric)
        return rec.median if rec else None

    @classmethod
    def from_result(cls, result: BenchResult, metrics: Sequence[str] = ()) -> BaselineEntry:
        """Build an entry from a valid result; ``metrics`` are recorded beside :data:`STORED_METRICS`."""
        if result.invalid:
            raise BaselineError(f"{result.entry_id}: an invalid result cannot become a baseline ({result.invalid})")
        names = list(dict.fromkeys([*STORED_METRICS, *metrics]))
        recs = {m: MetricRecord.from_samples(s) for m in names if (s := result.samples(m))}
        bad = sorted(m for m, r in recs.items() if not all(math.isfinite(v) for v in r.samples))
        if bad:
            raise BaselineError(f"{result.entry_id}: non-finite values in {', '.join(bad)} cannot become a baseline")
        env = dict(result.env)
        env.setdefault("plugin_version", __version__)
        env.setdefault("metric_definition_version", METRIC_DEFINITION_VERSION)
        return cls(
            entry_id=result.entry_id,
            engine=result.engine,
            engine_version=result.engine_version,
            model=result.model,
            layout=result.layout.to_dict(),
            workload=result.workload.to_dict(),
            metrics=recs,
            env=env,
            nodeid=result.nodeid,
            repeats=len(result.repeats),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the entry id is the key in the file, not repeated here)."""
        return {
            "nodeid": self.nodeid,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model": self.model,
            "layout": self.layout,
            "workload": self.workload,
            "repeats": self.repeats,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "env": self.env,
        }

    @classmethod
    def from_dict(cls, entry_id: str, data: Mapping[str, Any]) -> BaselineEntry:
        """Inverse of :meth:`to_dict`; raises KeyError/TypeError/ValueError on a malformed entry."""
        missing = [k for k in _ENTRY_KEYS if k not in data]
        if missing:
            raise KeyError(f"entry {entry_id!r} lacks {', '.join(missing)}")
        return cls(
            entry_id=entry_id,
            engine=str(data["engine"]),
            engine_version=str(data["engine_version"]),
            model=str(data["model"]),
            layout=dict(data["layout"]),
            workload=dict(data["workload"]),
            metrics={k: MetricRecord.from_dict(v) for k, v in data["metrics"].items()},
            env=dict(data["env"]),
            nodeid=str(data.get("nodeid", "")),
            repeats=int(data.get("repeats", 0)),
        )


# --- file I/O ----------------------------------------------------------------------------------


def _fix_hint(path: Path) -> str:
    return (
        f"restore it from git (`git checkout -- {path}`), or delete it and record a new "
        f"baseline with --mgpu-update-baselines"
    )


def read_baseline_file(path: str | Path) -> tuple[dict[str, Any], dict[str, BaselineEntry]]:
    """Read one baseline file: (its header without entries, its entries). Raises BaselineError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"baseline file {p} does not exist") from None
    except OSError as exc:
        raise BaselineError(f"cannot read baseline file {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline file {p} is not valid JSON ({exc}); {_fix_hint(p)}") from None
    return parse_baseline_data(data, p)


def parse_baseline_data(data: Any, path: Path | str = "<data>") -> tuple[dict[str, Any], dict[str, BaselineEntry]]:
    """Validate decoded baseline JSON; raises BaselineError naming ``path`` and the fix."""
    p = Path(path)
    if not isinstance(data, dict):
        raise BaselineError(f"baseline file {p} does not hold a JSON object; {_fix_hint(p)}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline file {p} has schema_version {version!r}, this pytest-mgpu reads {SCHEMA_VERSION}; "
            f"upgrade pytest-mgpu, or {_fix_hint(p)}"
        )
    if not isinstance(data.get("entries"), dict) or "fingerprint" not in data:
        raise BaselineError(f"baseline file {p} lacks 'fingerprint' or 'entries'; {_fix_hint(p)}")
    entries: dict[str, BaselineEntry] = {}
    for eid, raw in data["entries"].items():
        try:
            entries[eid] = BaselineEntry.from_dict(eid, raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BaselineError(f"baseline file {p}: malformed entry {eid!r} ({exc}); {_fix_hint(p)}") from None
    header = {k: v for k, v in data.items() if k != "entries"}
    return header, entries


def dumps_baseline(fingerprint: str, module: str, entries: Mapping[str, BaselineEntry]) -> str:
    """The stable, diff-friendly text of a baseline file (sorted keys, indent 2, final newline)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "module": module,
        "entries": {eid: e.to_dict() for eid, e in entries.items()},
    }
    return json.dumps(doc, sort_keys=True, indent=2, allow_nan=False) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive flock on a directory, so concurrent updates (xdist workers) do not lose entries."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- the store ---------------------------------------------------------------------------------


@dataclass
class UpdateResult:
    """What :meth:`BaselineStore.update` did."""

    path: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # entry id -> why (invalid results)


@dataclass
class BaselineFile:
    """One file found by :meth:`BaselineStore.iter_all`; ``error`` set when it is broken."""

    fingerprint: str
    module: str
    path: Path
    entries: dict[str, BaselineEntry] = field(default_factory=dict)
    error: str | None = None


def check_module(module: str) -> str:
    """Normalise a test module path (relative, forward slashes, no ``..``)."""
    m = str(module).replace("\\", "/")
    pp = PurePosixPath(m)
    if not m or pp.is_absolute() or ".." in pp.parts:
        raise BaselineError(f"module path {module!r} must be relative to the rootdir, e.g. perf_tests/test_llama.py")
    return str(pp)


def check_fingerprint(fingerprint: str) -> str:
    """A fingerprint must be a safe directory name such as ``nvidia-h100-80gb-hbm3-x2``."""
    if not _FINGERPRINT_RE.match(fingerprint or ""):
        raise BaselineError(
            f"fingerprint {fingerprint!r} is not a lowercase name of letters, digits, '+', '.', '_' or '-'"
        )
    return fingerprint


class BaselineStore:
    """Baseline files under ``root`` (default ``baselines/``), keyed by hardware fingerprint and module."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def path(self, fingerprint: str, module: str) -> Path:
        """``<root>/<fingerprint>/<module>.json``."""
        return self.root / check_fingerprint(fingerprint) / (check_module(module) + ".json")

    def load(self, fingerprint: str, module: str) -> dict[str, BaselineEntry]:
        """Entries of one file; empty when it does not exist; BaselineError when it is broken."""
        p = self.path(fingerprint, module)
        if not p.exists():
            return {}
        return read_baseline_file(p)[1]

    def get(self, fingerprint: str, module: str, entry_id: str) -> BaselineEntry | None:
        """One entry, or None."""
        return self.load(fingerprint, module).get(entry_id)

    def fingerprints(self) -> list[str]:
        """Fingerprints that have a directory under the root."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _FINGERPRINT_RE.match(p.name))

    def fingerprints_with(self, module: str, entry_id: str, exclude: str | None = None) -> list[str]:
        """Fingerprints whose file for ``module`` holds ``entry_id`` (broken files are skipped).

        For the NEW note: ``no baseline for nvidia-h100-80gb-hbm3-x2; have: sim-v100-16gb-x4``.
        """
        out = []
        for fp in self.fingerprints():
            if fp == exclude:
                continue
            try:
                if entry_id in self.load(fp, module):
                    out.append(fp)
            except BaselineError:
                continue
        return out

    def update(
        self,
        fingerprint: str,
        module: str,
        results: Sequence[BenchResult],
        *,
        force: bool = False,
        metrics: Sequence[str] = (),
    ) -> UpdateResult:
        """Write the valid ``results`` into the file, keeping every entry they do not replace.

        Invalid results are skipped (listed in ``skipped``). A broken existing file raises
        BaselineError unless ``force=True``, which replaces it with the new entries only.
        """
        path = self.path(fingerprint, module)
        res = UpdateResult(path)
        new: dict[str, BaselineEntry] = {}
        for r in results:
            if check_module(r.module) != check_module(module):
                raise BaselineError(f"{r.entry_id} belongs to {r.module}, not {module}")
            if r.invalid:
                res.skipped[r.entry_id] = r.invalid
                continue
            new[r.entry_id] = BaselineEntry.from_result(r, metrics)
        if not new:
            return res
        with _dir_lock(path.parent):
            entries: dict[str, BaselineEntry] = {}
            if path.exists():
                try:
                    entries = read_baseline_file(path)[1]
                except BaselineError:
                    if not force:
                        raise
            entries.update(new)
            atomic_write_text(path, dumps_baseline(fingerprint, check_module(module), dict(sorted(entries.items()))))
        res.written = sorted(new)
        return res

    def compare(self, fingerprint: str, result: BenchResult, config: GateConfig = DEFAULT_CONFIG) -> Comparison:
        """Gate one result against its entry for ``fingerprint`` (NEW names the fingerprints that have it).

        Raises BaselineError when the module's baseline file is broken.
        """
        base = self.get(fingerprint, result.module, result.entry_id)
        have = [] if base is not None else self.fingerprints_with(result.module, result.entry_id, exclude=fingerprint)
        return compare(result, base, config, fingerprint=fingerprint, have=have)

    def iter_all(self) -> Iterator[BaselineFile]:
        """Every baseline file under the root, broken ones with ``error`` set."""
        for fp in self.fingerprints():
            base = self.root / fp
            for p in sorted(base.rglob("*.json")):
                module = p.relative_to(base).as_posix()[: -len(".json")]
                try:
                    entries = read_baseline_file(p)[1]
                    yield BaselineFile(fp, module, p, entries)
                except BaselineError as exc:
                    yield BaselineFile(fp, module, p, error=str(exc))
