"""Result objects: one measurement (a repeat), one benchmarked workload of a test item, and its identity.

A result's **identity** (:class:`Identity`, fields listed once in :data:`IDENTITY_FIELDS`) says
what was measured: the test item, the workload, the layout, the model, the engine and the engine
options that change what is computed. A result is only ever compared with a baseline entry of the
same identity. The engine *version* is never part of it: comparing versions is the point.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..layout import Layout
from ..measure.metrics import RequestRecord
from ..measure.workload import Workload

#: Schema version of the ``--mgpu-json`` results file (version 1 files are still read).
RESULTS_SCHEMA_VERSION = 2

#: Engine options that change *what* is computed rather than how fast, compared by normalised key
#: (``max_num_seqs`` and ``--max-num-seqs`` are the same key). They are part of a result's
#: identity. Every other option (``max-num-seqs``, the sim's ``speed``, ...) is a tuning knob: a
#: change is compared, and shown beside the verdict. The sim's ``time_scale`` (how much faster
#: than real time its modelled clock runs) is in too: it never changes the sim's numbers, and a
#: result says so by being compared only with baselines recorded at the same scale.
IDENTITY_ENGINE_OPTIONS: frozenset[str] = frozenset({"dtype", "quantization", "kv-cache-dtype", "time-scale"})


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as a string (``"inf"``, ``"-inf"``, ``"nan"``).

    JSON has no infinity: ``json.dumps`` would write ``Infinity``, which other tools refuse. The
    readers of this package take the strings back with ``float()`` (and still read the old form).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(doc: Any, indent: int = 2) -> str:
    """Standard JSON text of an output document (sorted keys, no ``Infinity`` or ``NaN``), final newline."""
    return json.dumps(json_safe(doc), indent=indent, sort_keys=True, allow_nan=False) + "\n"


def option_key(key: str) -> str:
    """``--Max_Num_Seqs`` -> ``max-num-seqs``: the form in which engine options are compared."""
    return key.strip().lstrip("-").replace("_", "-").lower()


def engine_config(options: Mapping[str, Any] | None) -> dict[str, str]:
    """The identity part of engine options: those in :data:`IDENTITY_ENGINE_OPTIONS`, keys normalised."""
    opts = {option_key(k): str(v) for k, v in (options or {}).items()}
    return {k: v for k, v in sorted(opts.items()) if k in IDENTITY_ENGINE_OPTIONS}


def test_id_of(nodeid: str) -> str:
    """The part of a node id after the module: ``TestFast::test_serve[tp2-pp1]``."""
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


def _norm_workload(value: Any) -> Any:
    """A workload as compared: every knob of :class:`Workload` except the vocabulary (the model's)."""
    if not isinstance(value, Mapping):
        return value
    d = Workload.from_dict(value).to_dict()
    d.pop("vocab_size", None)
    return d


def _norm_layout(value: Any) -> Any:
    return Layout.from_dict(value).to_dict() if isinstance(value, Mapping) else value


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class IdentityField:
    """One field of a result's identity.

    ``name`` is the key in a result's and a baseline entry's JSON (and the :class:`BenchResult`
    attribute or property that holds it); ``default`` is the value that an entry written before
    the field existed is taken to have (``REQUIRED``: every entry has it); ``normalize`` puts
    both sides in one form before they are compared (old entries lacking a sub-key get the
    class's default through it, e.g. a layout without a new key).
    """

    name: str
    default: Any
    normalize: Callable[[Any], Any] = _same
    label: str = ""

    @property
    def title(self) -> str:
        """How a difference in this field is named in a note: ``model``, ``engine options``."""
        return self.label or self.name


REQUIRED = object()

#: THE list of identity fields. Adding one is one line here (plus the attribute that holds it);
#: its ``default`` is what baseline entries recorded before it existed are taken to have.
IDENTITY_FIELDS: tuple[IdentityField, ...] = (
    IdentityField("test", REQUIRED),
    IdentityField("workload", REQUIRED, _norm_workload),
    IdentityField("layout", REQUIRED, _norm_layout),
    IdentityField("model", REQUIRED),
    IdentityField("engine", REQUIRED),
    IdentityField("engine_config", {}, engine_config, "engine options"),
)


def _show_pair(base: Any, now: Any) -> tuple[str, str]:
    """Both sides of a differing identity field, as short text (mappings: only the keys that differ)."""
    if isinstance(base, Mapping) and isinstance(now, Mapping):
        keys = [k for k in dict.fromkeys([*base, *now]) if base.get(k) != now.get(k)]

        def part(d: Mapping[str, Any]) -> str:
            return ", ".join(f"{k}={d[k]}" if k in d else f"{k} unset" for k in keys) or "none"

        return part(base), part(now)
    return str(base), str(now)


@dataclass(frozen=True, eq=False)
class Identity:
    """What a result measured: the values of :data:`IDENTITY_FIELDS`, normalised, as canonical JSON.

    Two identities are equal when their values are, whichever copy of this module made them
    (pytester re-imports lazily loaded modules between in-process runs).
    """

    values: tuple[tuple[str, str], ...]

    def __eq__(self, other: object) -> bool:
        return isinstance(getattr(other, "values", None), tuple) and self.values == other.values  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Identity:
        """Read the identity fields from a result's or an entry's JSON; a missing field takes its default.

        Raises KeyError for a missing field that has no default.
        """
        out = []
        for f in IDENTITY_FIELDS:
            if f.name in data:
                value = data[f.name]
            elif f.default is REQUIRED:
                raise KeyError(f"lacks identity field {f.name!r}")
            else:
                value = f.default
            out.append((f.name, json.dumps(f.normalize(value), sort_keys=True)))
        return cls(tuple(out))

    def as_dict(self) -> dict[str, Any]:
        """The identity as JSON values, in :data:`IDENTITY_FIELDS` order."""
        return {k: json.loads(v) for k, v in self.values}

    def differences(self, other: Identity) -> list[tuple[str, Any, Any]]:
        """``(field title, this value, other value)`` for each field that differs."""
        mine, theirs = dict(self.values), dict(other.values)
        titles = {f.name: f.title for f in IDENTITY_FIELDS}
        return [
            (titles.get(k, k), json.loads(v), json.loads(theirs[k]) if k in theirs else None)
            for k, v in mine.items()
            if theirs.get(k) != v
        ]

    def describe_mismatch(self, now: Identity) -> str:
        """``baseline is for model tiny-llama; this run: llama-2-7b`` (``self`` is the baseline's)."""
        parts = []
        for title, b, n in self.differences(now):
            sb, sn = _show_pair(b, n)
            parts.append(f"{title} {sb}; this run: {sn}")
        return "baseline is for " + "; and for ".join(parts) if parts else ""


@dataclass
class RepeatResult:
    """One measurement of a workload: its summary, validity and (optionally) raw records."""

    summary: dict[str, float]
    invalid: str | None = None
    records: list[RequestRecord] = field(default_factory=list)
    #: GPU telemetry of the measured phase (:mod:`pytest_mgpu.measure.telemetry`); None without NVML/GPUs.
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


def _medians(repeats: Sequence[RepeatResult]) -> dict[str, float]:
    keys = repeats[0].summary.keys() if repeats else []
    return {k: float(statistics.median([r.summary[k] for r in repeats if k in r.summary])) for k in keys}


@dataclass
class BenchResult:
    """A workload measured ``len(repeats)`` times against one engine, for one test item.

    ``repeats`` is the measurement that the gate's verdict used. When the gate re-measured before
    a FAIL was final, ``repeats`` is the re-measurement and ``first_repeats`` keeps the first
    (see :attr:`measurement`), so that every report shows the numbers the verdict was made on.
    """

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
    #: The layout's decode floor on its card (:class:`pytest_mgpu.report.regime.Roofline` as a dict), if known.
    roofline: dict[str, Any] | None = None
    #: For a point of ``mgpu_bench.sweep``: ``{"id", "axis", "x", "kv_cache_tokens"}``; else None.
    sweep: dict[str, Any] | None = None
    #: Every engine option in effect (``--mgpu-engine-opt`` under the test's ``engine_opts`` marks).
    engine_options: dict[str, str] = field(default_factory=dict)
    #: The gate settings this result was judged with (:meth:`GateConfig.to_dict`); None if not gated.
    gate_settings: dict[str, Any] | None = None
    #: The first measurement, when the verdict used a re-measurement (confirm step).
    first_repeats: list[RepeatResult] = field(default_factory=list)

    @property
    def test(self) -> str:
        """The test item within its module, class included: ``TestFast::test_serve[tp2-pp1]``."""
        return test_id_of(self.nodeid)

    @property
    def engine_config(self) -> dict[str, str]:
        """The engine options that are part of the identity (:data:`IDENTITY_ENGINE_OPTIONS`)."""
        return engine_config(self.engine_options)

    @property
    def identity(self) -> Identity:
        """What this result measured (:data:`IDENTITY_FIELDS`)."""
        return Identity.from_mapping({f.name: _identity_value(self, f.name) for f in IDENTITY_FIELDS})

    @property
    def entry_id(self) -> str:
        """Key of this result in a baseline file: ``<test>::<workload name or label>``, unique per item."""
        return f"{self.test}::{self.label or self.workload.name}"

    @property
    def measurement(self) -> str:
        """Which measurement :attr:`repeats` is: ``"first"``, or ``"re-measurement"`` after a confirm step."""
        return "re-measurement" if self.first_repeats else "first"

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
        return _medians(self.repeats)

    def noise(self, metric: str) -> float:
        """Run-to-run noise of a metric: sample std of its log values (0 with < 2 repeats)."""
        vals = [v for v in self.samples(metric) if v > 0 and math.isfinite(v)]
        if len(vals) < 2:
            return 0.0
        return float(statistics.stdev(math.log(v) for v in vals))

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        """JSON-ready form (the ``--mgpu-json`` schema, one element of ``results``)."""
        d: dict[str, Any] = {
            "nodeid": self.nodeid,
            "test_name": self.test_name,
            "module": self.module,
            "entry_id": self.entry_id,
            "label": self.label,
            "engine_version": self.engine_version,
            "engine_options": dict(self.engine_options),
            "num_gpus": self.num_gpus,
            "valid": self.valid,
            "invalid": self.invalid,
            "measurement": self.measurement,
            "median": self.median if self.repeats else {},
            "repeats": [r.to_dict(with_records) for r in self.repeats],
            "gate_settings": self.gate_settings,
            "env": self.env,
            **({"roofline": self.roofline} if self.roofline is not None else {}),
            **({"sweep": self.sweep} if self.sweep is not None else {}),
        }
        d.update(engine=self.engine, model=self.model, layout=self.layout.to_dict(), workload=self.workload.to_dict(),
                 test=self.test, engine_config=self.engine_config)
        for f in IDENTITY_FIELDS:  # identity fields added later land here too
            d.setdefault(f.name, _identity_value(self, f.name))
        if self.first_repeats:
            d["first_measurement"] = {
                "median": _medians(self.first_repeats),
                "repeats": [r.to_dict(with_records) for r in self.first_repeats],
            }
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """Inverse of :meth:`to_dict`; reads schema 1 files too (no options, gate settings or first measurement)."""
        first = data.get("first_measurement") or {}
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
            engine_options={str(k): str(v) for k, v in (data.get("engine_options") or {}).items()},
            gate_settings=data.get("gate_settings"),
            first_repeats=[RepeatResult.from_dict(r) for r in first.get("repeats", [])],
        )


def _identity_value(result: BenchResult, name: str) -> Any:
    value = getattr(result, name)
    if isinstance(value, (Workload, Layout)):
        return value.to_dict()
    return value
