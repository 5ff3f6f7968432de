"""The baseline store: one JSON file per hardware fingerprint and test module, with history.

Layout: ``<root>/<fingerprint>/<module path>.json``, e.g.
``baselines/sim-v100-16gb-x4/perf_tests/test_llama.py.json``. Each file holds
``{"schema_version": 2, "fingerprint": ..., "module": ..., "entries": {entry_id: {...}}}``; an
entry holds its identity (:data:`~pytest_mgpu.judge.results.IDENTITY_FIELDS`) and its last
``history`` recordings (oldest first), each with the samples of every stored metric, the engine
version, the environment, the engine options and the gate settings in effect. Schema 1 files
(one recording per entry) are read and migrated; they are written back as schema 2 on update.

Writes are sorted, indented, atomic (temp file + fsync + ``os.replace``), follow the umask,
merge with the entries already there and keep unknown top-level keys. A broken file (bad JSON,
missing keys, corrupt numbers) raises :class:`BaselineError` naming the file and the entry, and
is never overwritten unless ``force=True``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .. import METRIC_DEFINITION_VERSION, __version__
from ..errors import BaselineError
from ..measure.telemetry import aggregate
from .results import BenchResult, Identity, test_id_of
from .verdicts import (
    DEFAULT_CONFIG,
    DEFAULT_GATED,
    DEFAULT_NOISE_FLOOR,
    DEFAULT_WARN_ONLY,
    BaselineStats,
    Comparison,
    GateConfig,
    baseline_stats,
    compare,
)

#: Version of the baseline file format written; :data:`READ_SCHEMA_VERSIONS` are read.
SCHEMA_VERSION = 2
READ_SCHEMA_VERSIONS = (1, 2)
DEFAULT_ROOT = "baselines"
#: How many recordings an entry keeps by default (ini ``mgpu_baseline_history``).
DEFAULT_HISTORY = 5

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

_FINGERPRINT_RE = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")

#: The range of a plausible stored sample (ms, tokens/s, requests/s). Outside it a number is corrupt:
#: 1e-300 beside 50.0 overflows the geometric mean of the recordings.
SAMPLE_RANGE = (1e-12, 1e15)


def _sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits: far below any noise, and short in diffs."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def check_samples(values: Any, what: str) -> tuple[float, ...]:
    """A metric's samples as floats: a non-empty list of finite numbers > 0, else ValueError naming ``what``.

    NaN, infinities, zero or negative values, values outside :data:`SAMPLE_RANGE`, an empty list
    or a non-list are corrupt numbers: the gate must never silently skip them (that would turn it
    off), nor crash on them.
    """
    if isinstance(values, Mapping):  # schema 1: {"samples": [...], "median": ..., "noise": ...}
        values = values.get("samples")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{what}: samples must be a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{what}: sample {v!r} is not a number")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{what}: sample {v!r} is not a finite number > 0")
        if not SAMPLE_RANGE[0] <= v <= SAMPLE_RANGE[1]:
            raise ValueError(f"{what}: sample {v!r} is not a finite number > 0 in the range of a measurement "
                             f"({SAMPLE_RANGE[0]:g} to {SAMPLE_RANGE[1]:g})")
        out.append(float(v))
    return tuple(out)


def undefined_for(metric: str, result: BenchResult, values: Sequence[float]) -> bool:
    """Whether ``metric`` is 0 because the workload cannot define it: TPOT and ITL of one output token."""
    return result.workload.output_len <= 1 and metric.startswith(("tpot_", "itl_")) and all(v == 0 for v in values)


@dataclass(frozen=True)
class Recording:
    """One recording of an entry: every stored metric's samples, and what was running.

    ``engine_options`` and ``gate_settings`` are None for recordings made before they were
    recorded (schema 1).
    """

    metrics: dict[str, tuple[float, ...]]
    engine_version: str
    env: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0
    engine_options: dict[str, str] | None = None
    gate_settings: dict[str, Any] | None = None
    #: Compact GPU telemetry of the recorded repeats (:func:`pytest_mgpu.measure.telemetry.aggregate`): the
    #: busy SM clock, utilisation, power, peak memory; None without NVML. Compared for clock warnings.
    telemetry: dict[str, float] | None = None
    #: Pinned as the entry's anchor (``pytest-mgpu accept --anchor``); slow drift is measured from it.
    anchor: bool = False

    @classmethod
    def from_result(cls, result: BenchResult, metrics: Sequence[str] = ()) -> Recording:
        """A recording of a valid result: :data:`STORED_METRICS` plus ``metrics``, rounded.

        A metric that is not positive in every repeat (TPOT of a one-token workload) is not
        recorded: it could never be compared. Raises BaselineError for an invalid result.
        """
        if result.invalid:
            raise BaselineError(f"{result.entry_id}: an invalid result cannot become a baseline ({result.invalid})")
        names = list(dict.fromkeys([*STORED_METRICS, *metrics, *((result.gate_settings or {}).get("metrics", ()))]))
        gated = set((result.gate_settings or {}).get("gated") or DEFAULT_GATED)
        recs: dict[str, tuple[float, ...]] = {}
        for m in names:
            vals = result.samples(m)
            if not vals:
                continue
            bad = [v for v in vals if not math.isfinite(v)]
            if bad:
                raise BaselineError(f"{result.entry_id}: non-finite values in {m} cannot become a baseline")
            odd = [v for v in vals if v > 0 and not SAMPLE_RANGE[0] <= v <= SAMPLE_RANGE[1]]
            if odd:
                raise BaselineError(f"{result.entry_id}: {m} value {odd[0]!r} is outside the range of a measurement "
                                    f"({SAMPLE_RANGE[0]:g} to {SAMPLE_RANGE[1]:g}) and cannot become a baseline")
            if m in gated and any(v <= 0 for v in vals) and not undefined_for(m, result, vals):
                raise BaselineError(
                    f"{result.entry_id}: the gated metric {m} has a value <= 0 ({min(vals)!r}): a corrupt "
                    f"measurement cannot become a baseline (the gate would skip {m}); measure it again"
                )
            if all(v > 0 for v in vals):
                recs[m] = tuple(_sig(float(v)) for v in vals)
        if not recs:
            raise BaselineError(f"{result.entry_id}: no metric with positive values; nothing to record")
        env = dict(result.env)
        env.setdefault("plugin_version", __version__)
        env.setdefault("metric_definition_version", METRIC_DEFINITION_VERSION)
        return cls(
            metrics=recs, engine_version=result.engine_version, env=env, repeats=len(result.repeats),
            engine_options=dict(result.engine_options), gate_settings=result.gate_settings,
            telemetry=aggregate(r.telemetry for r in result.repeats),
        )

    @property
    def level(self) -> tuple[str, tuple[tuple[str, str], ...] | None]:
        """What makes recordings comparable with each other: the engine version and the options."""
        opts = tuple(sorted(self.engine_options.items())) if self.engine_options is not None else None
        return self.engine_version, opts

    def same_level(self, other: Recording) -> bool:
        """Whether two recordings are of one level: the same engine version, and the same engine options
        where both recorded them (a schema 1 recording has none, and joins the level of its version)."""
        if self.engine_version != other.engine_version:
            return False
        mine, theirs = self.engine_options, other.engine_options
        return mine is None or theirs is None or mine == theirs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d: dict[str, Any] = {
            "engine_version": self.engine_version,
            "env": self.env,
            "repeats": self.repeats,
            "metrics": {k: list(v) for k, v in sorted(self.metrics.items())},
        }
        if self.engine_options is not None:
            d["engine_options"] = dict(sorted(self.engine_options.items()))
        if self.gate_settings is not None:
            d["gate_settings"] = self.gate_settings
        if self.telemetry is not None:
            d["telemetry"] = dict(sorted(self.telemetry.items()))
        if self.anchor:
            d["anchor"] = True
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Recording:
        """Inverse of :meth:`to_dict`; ValueError/KeyError/TypeError name ``where`` on bad data."""
        pre = f"{where}: " if where else ""
        metrics = data["metrics"]
        if not isinstance(metrics, Mapping) or not metrics:
            raise ValueError(f"{pre}'metrics' is empty; a baseline needs at least one metric's samples")
        opts = data.get("engine_options")
        return cls(
            metrics={str(k): check_samples(v, f"{pre}metric {k!r}") for k, v in metrics.items()},
            engine_version=str(data["engine_version"]),
            env=dict(data.get("env") or {}),
            repeats=int(data.get("repeats", 0)),
            engine_options={str(k): str(v) for k, v in opts.items()} if isinstance(opts, Mapping) else None,
            gate_settings=dict(data["gate_settings"]) if isinstance(data.get("gate_settings"), Mapping) else None,
            telemetry=_telemetry(data.get("telemetry")),
            anchor=data.get("anchor") is True,
        )


def _telemetry(value: Any) -> dict[str, float] | None:
    """A recording's compact telemetry: finite numbers only (anything else is dropped, never judged)."""
    if not isinstance(value, Mapping):
        return None
    out = {}
    for k, v in value.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out or None


@dataclass(frozen=True)
class BaselineEntry:
    """A baseline entry: the identity of what was measured and its recordings, oldest first.

    As the gate's ``Measured``: :meth:`samples` are the latest recording's repeats, :meth:`history`
    the earlier recordings of the same level (:attr:`active`).
    """

    entry_id: str
    identity: Identity
    recordings: tuple[Recording, ...]
    nodeid: str = ""
    #: The anchor when it is older than the kept history (trimming never drops it); else None.
    kept_anchor: Recording | None = None

    # --- identity and the latest recording -------------------------------------------------
    def _id(self, name: str) -> Any:
        return self.identity.as_dict()[name]

    @property
    def engine(self) -> str:
        """Engine name (identity)."""
        return str(self._id("engine"))

    @property
    def model(self) -> str:
        """Model name (identity)."""
        return str(self._id("model"))

    @property
    def layout(self) -> dict[str, Any]:
        """Layout (identity)."""
        return dict(self._id("layout"))

    @property
    def workload(self) -> dict[str, Any]:
        """Workload (identity; without the model's vocabulary size)."""
        return dict(self._id("workload"))

    @property
    def latest(self) -> Recording:
        """The newest recording."""
        return self.recordings[-1]

    @property
    def anchor_index(self) -> int | None:
        """Index of the anchor among :attr:`recordings`: the last one pinned (``accept --anchor``), else the
        first; None when the anchor is older than the history and kept beside it (:attr:`kept_anchor`).

        Files written before anchors existed have none pinned: their first recording is the anchor.
        """
        if self.kept_anchor is not None:
            return None
        return max((i for i, r in enumerate(self.recordings) if r.anchor), default=0)

    @property
    def anchor(self) -> Recording:
        """The recording slow drift is measured from."""
        if self.kept_anchor is not None:
            return self.kept_anchor
        return self.recordings[max((i for i, r in enumerate(self.recordings) if r.anchor), default=0)]

    def since_anchor(self) -> tuple[Recording, ...]:
        """The anchor and every recording kept after it, oldest first (``show``'s trend)."""
        i = self.anchor_index
        return (self.anchor, *self.recordings) if i is None else self.recordings[i:]

    def describe_anchor(self) -> str:
        """``recording 1, pinned`` / ``recording 1, the first`` / ``kept beside the history``."""
        i = self.anchor_index
        if i is None:
            return "older than the history, kept beside it" + (", pinned" if self.anchor.anchor else "")
        return f"recording {i + 1}, {'pinned' if self.recordings[i].anchor else 'the first'}"

    @property
    def active(self) -> tuple[Recording, ...]:
        """The recordings the gate uses: the latest one and those before it of the same level.

        A level is a run of recordings with the same engine version and engine options: an
        upgrade or a new setting that was accepted measured something else, so the recordings
        before it are kept (``show`` lists them) but neither centre the baseline nor widen its
        noise band. A recording without engine options (schema 1) belongs to the level of its
        engine version: the options it ran with are unknown, and taken to be the same.
        """
        start = len(self.recordings) - 1
        while start > 0 and self.recordings[start - 1].same_level(self.latest):
            start -= 1
        return self.recordings[start:]

    @property
    def engine_version(self) -> str:
        """The engine version of the latest recording."""
        return self.latest.engine_version

    @property
    def engine_options(self) -> dict[str, str] | None:
        """The engine options of the latest recording (None: not recorded)."""
        return self.latest.engine_options

    @property
    def env(self) -> dict[str, Any]:
        """The environment of the latest recording."""
        return self.latest.env

    @property
    def repeats(self) -> int:
        """Repeats of the latest recording."""
        return self.latest.repeats

    @property
    def metrics(self) -> dict[str, tuple[float, ...]]:
        """The latest recording's samples per metric."""
        return self.latest.metrics

    @property
    def invalid(self) -> str | None:
        """Always None: only valid results become baselines."""
        return None

    def samples(self, metric: str) -> list[float]:
        """The metric's value in each repeat of the latest recording (empty if not recorded)."""
        return list(self.latest.metrics.get(metric, ()))

    def history(self, metric: str) -> list[list[float]]:
        """The metric's samples in each earlier recording of the latest level, oldest first."""
        return [list(r.metrics[metric]) for r in self.active[:-1] if metric in r.metrics]

    def stats(self, metric: str, noise_floor: float = DEFAULT_NOISE_FLOOR) -> BaselineStats:
        """The baseline value and noise the gate uses for ``metric`` (``pytest-mgpu show`` prints them)."""
        return baseline_stats([*self.history(metric), self.samples(metric)] if self.samples(metric) else [],
                              noise_floor)

    def median(self, metric: str) -> float | None:
        """The baseline value the gate compares ``metric`` with (derived, never stored)."""
        return self.stats(metric).value

    # --- building, reading, writing -------------------------------------------------------
    @classmethod
    def from_result(cls, result: BenchResult, metrics: Sequence[str] = ()) -> BaselineEntry:
        """A new entry (one recording) from a valid result."""
        return cls(result.entry_id, result.identity, (Recording.from_result(result, metrics),), result.nodeid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the entry id is the key in the file, not repeated here)."""
        d = {"nodeid": self.nodeid, **self.identity.as_dict(), "recordings": [r.to_dict() for r in self.recordings]}
        if self.kept_anchor is not None:
            d["anchor"] = self.kept_anchor.to_dict()
        return d

    @classmethod
    def from_dict(cls, entry_id: str, data: Mapping[str, Any], schema: int = SCHEMA_VERSION) -> BaselineEntry:
        """Inverse of :meth:`to_dict` (schema 2), or a schema 1 entry migrated to one recording.

        Raises KeyError/TypeError/ValueError on a malformed entry or corrupt numbers.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"entry {entry_id!r} is not a JSON object")
        nodeid = str(data.get("nodeid", ""))
        ident = dict(data)
        if "test" not in ident:  # schema 1: the test lives in the node id (or the entry id)
            ident["test"] = test_id_of(nodeid) if nodeid else entry_id.rsplit("::", 1)[0]
        identity = Identity.from_mapping(ident)
        if schema == 1:
            recordings: tuple[Recording, ...] = (Recording.from_dict(data, ""),)
        else:
            raw = data["recordings"]
            if not isinstance(raw, list) or not raw:
                raise ValueError("'recordings' must be a non-empty list")
            recordings = tuple(Recording.from_dict(r, f"recording {i + 1}") for i, r in enumerate(raw))
        kept = Recording.from_dict(data["anchor"], "anchor") if data.get("anchor") is not None else None
        return cls(entry_id, identity, recordings, nodeid, kept)


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
    if version not in READ_SCHEMA_VERSIONS:
        raise BaselineError(
            f"baseline file {p} has schema_version {version!r}, this pytest-mgpu reads "
            f"{' and '.join(map(str, READ_SCHEMA_VERSIONS))}; upgrade pytest-mgpu, or {_fix_hint(p)}"
        )
    if not isinstance(data.get("entries"), dict) or "fingerprint" not in data:
        raise BaselineError(f"baseline file {p} lacks 'fingerprint' or 'entries'; {_fix_hint(p)}")
    entries: dict[str, BaselineEntry] = {}
    for eid, raw in data["entries"].items():
        try:
            entries[eid] = BaselineEntry.from_dict(eid, raw, schema=version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = str(exc).strip("\"'")
            raise BaselineError(f"baseline file {p}: broken entry {eid!r}: {msg}; {_fix_hint(p)}") from None
    header = {k: v for k, v in data.items() if k != "entries"}
    return header, entries


def dumps_baseline(
    fingerprint: str, module: str, entries: Mapping[str, BaselineEntry], extra: Mapping[str, Any] | None = None
) -> str:
    """The stable, diff-friendly text of a baseline file (sorted keys, indent 2, final newline).

    ``extra`` holds top-level keys this version does not know (kept from the file being updated).
    """
    doc = {
        **(extra or {}),
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "module": module,
        "entries": {eid: e.to_dict() for eid, e in entries.items()},
    }
    return json.dumps(doc, sort_keys=True, indent=2, allow_nan=False) + "\n"


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not the
    0600 of a temp file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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


def run_of(rec: Recording) -> str:
    """The identity of the run that made a recording (``env.run_id``), or its date for older recordings."""
    return str(rec.env.get("run_id") or rec.env.get("date") or "?")


def same_run(old: Recording, new: Recording) -> bool:
    """Whether ``new`` is ``old`` again: the same run id, or (recordings made before run ids) the same
    environment, engine version, engine options and samples."""
    a, b = old.env.get("run_id"), new.env.get("run_id")
    if a and b:
        return bool(a == b)
    return (old.env == new.env and old.engine_version == new.engine_version
            and old.engine_options == new.engine_options and old.metrics == new.metrics)


def _level_change(old: Recording, new: Recording) -> str:
    """Why ``new`` starts a new level after ``old`` (another engine version or options), or ''."""
    why = []
    if old.engine_version != new.engine_version:
        why.append(f"engine version {old.engine_version} -> {new.engine_version}")
    if old.engine_options is not None and new.engine_options is not None and old.engine_options != new.engine_options:
        why.append("engine options changed")
    return ", ".join(why)


# --- the store ---------------------------------------------------------------------------------


@dataclass
class UpdateResult:
    """What :meth:`BaselineStore.update` did."""

    path: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # entry id -> why (invalid results)
    #: entry id -> why the old entry was replaced rather than extended (another identity)
    replaced: dict[str, str] = field(default_factory=dict)
    #: entry id -> why its new recording starts a new level (another engine version or options)
    new_level: dict[str, str] = field(default_factory=dict)
    #: entry id -> the run whose recording the entry already holds (accepting a run twice is a no-op)
    already: dict[str, str] = field(default_factory=dict)


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


def add_recording(entry: BaselineEntry, rec: Recording, history: int, nodeid: str) -> BaselineEntry:
    """``entry`` with ``rec`` added and the last ``history`` recordings kept; the anchor is never dropped.

    A pinned ``rec`` (``anchor=True``) becomes the anchor (earlier pins and a kept anchor go). Otherwise
    an anchor that falls out of the history is kept beside it (:attr:`BaselineEntry.kept_anchor`), so
    the gate's history keeps its meaning (the last ``history`` recordings) and drift its starting point.
    """
    if rec.anchor:
        olds = tuple(replace(x, anchor=False) if x.anchor else x for x in entry.recordings)
        return BaselineEntry(entry.entry_id, entry.identity, (*olds, rec)[-history:], nodeid)
    every = (*entry.recordings, rec)
    kept = every[-history:]
    anchor = entry.kept_anchor
    if anchor is None and entry.anchor_index is not None and entry.anchor_index < len(every) - len(kept):
        anchor = entry.recordings[entry.anchor_index]
    return BaselineEntry(entry.entry_id, entry.identity, kept, nodeid, anchor)


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
        history: int = DEFAULT_HISTORY,
        anchor: bool = False,
    ) -> UpdateResult:
        """Record the valid ``results`` in the file, keeping every entry they do not touch.

        A result of the same identity as its entry adds a recording (the last ``history`` are
        kept, and the entry's anchor recording always: :func:`keep_recordings`; ``anchor`` pins
        the new recording as the anchor instead); one of another identity (model, workload, ...)
        replaces the entry, listed in ``replaced``. A recording of a run the entry already holds
        (:func:`same_run`) is not added again: listed in ``already``. A recording with another
        engine version or engine options than the previous one starts a new level
        (:attr:`BaselineEntry.active`), listed in ``new_level``. Invalid results are skipped (listed
        in ``skipped``). A broken existing file raises BaselineError unless ``force=True``, which
        replaces it with the new entries only.
        """
        if history < 1:
            raise BaselineError(f"the baseline history must keep at least 1 recording, got {history}")
        path = self.path(fingerprint, module)
        res = UpdateResult(path)
        new: dict[str, tuple[BenchResult, Recording]] = {}
        for r in results:
            if check_module(r.module) != check_module(module):
                raise BaselineError(f"{r.entry_id} belongs to {r.module}, not {module}")
            if r.invalid:
                res.skipped[r.entry_id] = r.invalid
                continue
            if r.entry_id in new:
                raise BaselineError(
                    f"two results of {module} share the entry id {r.entry_id!r}; pass label= to tell them apart"
                )
            new[r.entry_id] = (r, Recording.from_result(r, metrics))
        if not new:
            return res
        with _dir_lock(path.parent):
            entries: dict[str, BaselineEntry] = {}
            extra: dict[str, Any] = {}
            if path.exists():
                try:
                    header, entries = read_baseline_file(path)
                    extra = {k: v for k, v in header.items() if k not in ("schema_version", "fingerprint", "module")}
                except BaselineError:
                    if not force:
                        raise
            for eid, (r, rec) in new.items():
                old = entries.get(eid)
                if anchor:
                    rec = replace(rec, anchor=True)
                if old is None:
                    entries[eid] = BaselineEntry(eid, r.identity, (rec,), r.nodeid)
                elif old.identity != r.identity:
                    res.replaced[eid] = old.identity.describe_mismatch(r.identity)
                    entries[eid] = BaselineEntry(eid, r.identity, (rec,), r.nodeid)
                elif any(same_run(o, rec) for o in old.recordings):
                    res.already[eid] = run_of(rec)
                else:
                    why = _level_change(old.latest, rec)
                    if why:
                        res.new_level[eid] = why
                    entries[eid] = add_recording(old, rec, history, r.nodeid)
            res.written = sorted(eid for eid in new if eid not in res.already)
            if res.written:
                text = dumps_baseline(fingerprint, check_module(module), dict(sorted(entries.items())), extra)
                atomic_write_text(path, text)
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
