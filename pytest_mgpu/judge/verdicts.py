"""The gate's decision: tolerances, noise-aware verdicts per metric and per result, confirmation.

The decision for one metric works on the ratio ``q = now / base`` of the medians over repeats:

* ``worse`` when ``q`` moves in the bad direction (``metrics.HIGHER_IS_BETTER`` decides which);
* it is *beyond tolerance* when ``|q - 1| > tol`` (a linear percentage, as the table shows it);
* it is *beyond noise* when
  ``|log q| > k * sqrt(c(n_b)**2 s_b**2 / n_b + c(n_n)**2 s_n**2 / n_n + 2 drift**2)``,
  where ``s`` is the sample std of the log values of the repeats (floored), ``c(n)`` the
  inflation of the standard error of a median over a mean, and ``drift`` an optional allowance
  for day-to-day drift (default 0).

FAIL needs a worse change beyond both (for a gated metric; a warn-only metric gets WARN).
Beyond tolerance but within noise is WARN. IMPROVED is the mirror image of FAIL, judged only
against a baseline of two or more recordings (with one it is PASS, saying why). See
``docs/gate.md`` for the calibration of ``k`` and the floor. Only the decision lives here: the
pytest wiring is :mod:`pytest_mgpu.run.gate`, the tables and messages are in :mod:`pytest_mgpu.report.render`.
"""

from __future__ import annotations

import argparse
import enum
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..measure.metrics import THROUGHPUT_METRICS, latency_keys, worse_sign

#: Metrics that can FAIL a test by default.
DEFAULT_GATED: tuple[str, ...] = ("output_throughput_per_gpu", "ttft_p50", "tpot_p50")
#: Metrics compared and reported, but only ever WARN unless a test opts in.
DEFAULT_WARN_ONLY: tuple[str, ...] = ("ttft_p99", "tpot_p99")
#: Default tolerance of a gated metric, and of a tail (p90/p99) metric.
DEFAULT_TOLERANCE = 0.05
DEFAULT_TAIL_TOLERANCE = 0.10
#: Noise multiplier k and the floor on the per-run log std (see docs/gate.md for the calibration).
DEFAULT_NOISE_K = 2.5
DEFAULT_NOISE_FLOOR = 0.005
#: Expected day-to-day drift (log sigma) between the baseline's run and this one; 0 trusts the repeats.
DEFAULT_DRIFT = 0.0

#: Every metric name the gate accepts.
KNOWN_METRICS: frozenset[str] = frozenset(latency_keys()) | frozenset(THROUGHPUT_METRICS)

# Standard error of the median of n normal samples, divided by that of the mean (sigma/sqrt(n)).
# Measured by Monte Carlo (2e6 draws); n >= 8 uses the asymptote sqrt(pi/2).
_MEDIAN_SE_FACTOR = {1: 1.0, 2: 1.0, 3: 1.159, 4: 1.092, 5: 1.197, 6: 1.136, 7: 1.214}


def median_se_factor(n: int) -> float:
    """How much noisier the median of ``n`` repeats is than their mean."""
    return _MEDIAN_SE_FACTOR.get(n, math.sqrt(math.pi / 2))


class Verdict(str, enum.Enum):
    """Outcome of one comparison; :attr:`severity` orders them (worst wins)."""

    PASS = "PASS"
    IMPROVED = "IMPROVED"
    NEW = "NEW"
    MISMATCH = "MISMATCH"
    WARN = "WARN"
    FAIL = "FAIL"
    INVALID = "INVALID"

    @property
    def severity(self) -> int:
        """INVALID > FAIL > WARN > MISMATCH > NEW > IMPROVED > PASS."""
        return _SEVERITY[self]

    def __str__(self) -> str:
        return self.value


_SEVERITY = {
    Verdict.PASS: 0,
    Verdict.IMPROVED: 1,
    Verdict.NEW: 2,
    Verdict.MISMATCH: 3,
    Verdict.WARN: 4,
    Verdict.FAIL: 5,
    Verdict.INVALID: 6,
}

# --- the one failure rule ----------------------------------------------------------------------

#: Verdicts that fail a test, and make ``pytest-mgpu compare`` exit 1, always.
FAILING: frozenset[Verdict] = frozenset({Verdict.INVALID, Verdict.FAIL})
#: Verdicts that fail too with ``--mgpu-strict`` (CLI: ``--strict``).
FAILING_STRICT: frozenset[Verdict] = FAILING | {Verdict.WARN, Verdict.MISMATCH, Verdict.NEW}
#: The help of ``--mgpu-strict`` / ``--strict``: exactly what :func:`fails` adds with ``strict``.
STRICT_HELP = (
    "Also fail on WARN (beyond tolerance but within noise, not reproduced on a re-measurement, or a "
    "warn-only metric), MISMATCH (the baseline is for another model, workload, layout, engine or engine "
    "options) and NEW (no baseline). INVALID and FAIL always fail"
)


def fails(verdict: Verdict, strict: bool = False) -> bool:
    """THE failure rule, for the plugin and ``pytest-mgpu compare`` alike.

    INVALID and FAIL always fail; with ``strict`` WARN, MISMATCH and NEW fail too. PASS and
    IMPROVED never fail.
    """
    return verdict in (FAILING_STRICT if strict else FAILING)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (PASS for none)."""
    return max(verdicts, key=lambda v: v.severity, default=Verdict.PASS)


# --- tolerances --------------------------------------------------------------------------------

_TOL_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Tolerance:
    """A relative tolerance, e.g. ``Tolerance.parse("5%")`` -> ``fraction=0.05``."""

    fraction: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fraction) and 0 <= self.fraction < 1):
            raise ValueError(f"tolerance {self.fraction!r} must be a fraction in [0, 1), e.g. 0.05 or 5%")

    @classmethod
    def parse(cls, text: str | float | Tolerance) -> Tolerance:
        """Parse ``"5%"``, ``"0.05"`` or a float; bad input raises ``argparse.ArgumentTypeError``.

        A bare number must be a fraction below 1 (``5`` is rejected: write ``5%``).
        """
        if isinstance(text, Tolerance):
            return text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            try:
                return cls(float(text))
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"Could not parse tolerance: {text!r} ({exc})") from None
        m = _TOL_RE.match(str(text))
        if not m:
            raise argparse.ArgumentTypeError(
                f"Could not parse tolerance: {text!r}; write a percentage such as 5% or a fraction such as 0.05"
            )
        value = float(m.group(1))
        if m.group(2):
            value /= 100.0
        elif value >= 1:
            raise argparse.ArgumentTypeError(
                f"Could not parse tolerance: {text!r}; a bare number is a fraction below 1, write {text}% for percent"
            )
        try:
            return cls(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"Could not parse tolerance: {text!r} ({exc})") from None

    @property
    def pct(self) -> float:
        """The tolerance in percent."""
        return self.fraction * 100.0

    def __str__(self) -> str:
        return f"{self.pct:g}%"


def check_metric(name: str) -> str:
    """Return ``name`` if it is a known metric, else raise ``argparse.ArgumentTypeError``."""
    if name not in KNOWN_METRICS:
        raise argparse.ArgumentTypeError(
            f"Unknown metric {name!r}; known metrics: {', '.join(sorted(KNOWN_METRICS))}"
        )
    return name


def parse_metric_tolerance(text: str) -> tuple[str, Tolerance]:
    """Parse ``METRIC=PCT`` (e.g. ``tpot_p50=8%``) for ``--mgpu-tolerance``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"Could not parse {text!r}: expected METRIC=PCT, e.g. tpot_p50=8%")
    name, _, value = text.partition("=")
    return check_metric(name.strip()), Tolerance.parse(value)


def parse_metric_list(text: str) -> list[str]:
    """Parse a comma-separated list of metric names (for ``--mgpu-gate``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"Could not parse metric list: {text!r}")
    return [check_metric(n) for n in names]


def default_tolerance(metric: str) -> Tolerance:
    """5% for everything, 10% for tail percentiles (p90/p99), whose run-to-run noise is larger."""
    if metric.endswith(("_p90", "_p99")):
        return Tolerance(DEFAULT_TAIL_TOLERANCE)
    return Tolerance(DEFAULT_TOLERANCE)


@dataclass(frozen=True)
class GateConfig:
    """What to compare, what may fail, and the thresholds.

    ``metrics`` is the reporting order; ``gated`` the subset that can FAIL. Naming a metric in a
    per-test tolerance map or ``gate`` list (:meth:`with_overrides`) gates it.
    """

    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    gated: frozenset[str] = frozenset(DEFAULT_GATED)
    metrics: tuple[str, ...] = DEFAULT_GATED + DEFAULT_WARN_ONLY
    noise_k: float = DEFAULT_NOISE_K
    noise_floor: float = DEFAULT_NOISE_FLOOR
    strict: bool = False
    drift: float = DEFAULT_DRIFT

    def tolerance(self, metric: str) -> Tolerance:
        """The tolerance of ``metric``: an explicit one, else the default."""
        return self.tolerances.get(metric) or default_tolerance(metric)

    def with_overrides(
        self,
        tolerances: Mapping[str, str | float | Tolerance] | None = None,
        gate: Iterable[str] | None = None,
        *,
        gate_named: bool = True,
    ) -> GateConfig:
        """A copy with per-test tolerances and extra gated metrics (``gate_named``: tolerances gate too)."""
        tol = dict(self.tolerances)
        extra: list[str] = []
        for name, value in (tolerances or {}).items():
            tol[check_metric(name)] = Tolerance.parse(value)
            if gate_named:
                extra.append(name)
        extra.extend(check_metric(n) for n in (gate or ()))
        metrics = self.metrics + tuple(n for n in dict.fromkeys(extra) if n not in self.metrics)
        return replace(self, tolerances=tol, gated=self.gated | frozenset(extra), metrics=metrics)

    def is_failure(self, verdict: Verdict) -> bool:
        """Whether a result with this verdict fails: :func:`fails` with this config's ``strict``."""
        return fails(verdict, self.strict)

    def to_dict(self) -> dict[str, Any]:
        """The settings a result was judged with, as recorded in results and baseline files.

        Every compared metric with its effective tolerance, the gated ones, and the noise
        settings; ``strict`` is a policy of the run, not of the result, and is not recorded.
        """
        return {
            "metrics": list(self.metrics),
            "gated": sorted(self.gated),
            "tolerances": {m: str(self.tolerance(m)) for m in self.metrics},
            "noise_k": self.noise_k,
            "noise_floor": self.noise_floor,
            "drift": self.drift,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = False) -> GateConfig:
        """Inverse of :meth:`to_dict`; raises ValueError (or ``argparse.ArgumentTypeError``) on bad data."""
        metrics = tuple(check_metric(str(m)) for m in data.get("metrics", DEFAULT_GATED + DEFAULT_WARN_ONLY))
        tol = {check_metric(str(m)): Tolerance.parse(v) for m, v in (data.get("tolerances") or {}).items()}
        return cls(
            tolerances=tol,
            gated=frozenset(check_metric(str(m)) for m in data.get("gated", DEFAULT_GATED)),
            metrics=metrics,
            noise_k=float(data.get("noise_k", DEFAULT_NOISE_K)),
            noise_floor=float(data.get("noise_floor", DEFAULT_NOISE_FLOOR)),
            drift=float(data.get("drift", DEFAULT_DRIFT)),
            strict=strict,
        )


DEFAULT_CONFIG = GateConfig()


# --- comparing ---------------------------------------------------------------------------------


class Measured(Protocol):
    """What the gate needs of a baseline entry or a fresh result (both provide it).

    Optional, read with ``getattr``: ``identity`` (an :class:`~pytest_mgpu.judge.results.Identity`),
    ``history(metric)`` (earlier recordings' samples, oldest first), ``engine_options`` (in
    effect; None when not recorded), ``engine`` and ``measurement``.
    """

    @property
    def entry_id(self) -> str:
        """``<test>::<workload name or label>``."""

    @property
    def engine_version(self) -> str:
        """Version of the engine that was measured."""

    @property
    def invalid(self) -> str | None:
        """Why it cannot be compared, or None."""

    def samples(self, metric: str) -> list[float]:
        """The metric's value in each repeat (of the latest recording, for a baseline)."""


@dataclass(frozen=True)
class MetricComparison:
    """One metric: baseline vs now, and what the gate made of it.

    ``delta_pct`` is ``(now/base - 1) * 100``; ``noise_pct`` is the band a change must leave to
    count (k x the noise of the difference, in the direction of the change); ``tolerance_pct`` the
    tolerance. ``base`` is the baseline value (:func:`baseline_stats`), ``now`` the run's median
    over repeats; None where a side has no data. ``recordings`` is how many baseline recordings
    the band used: from two on, their spread (``noise_source``) enters the band.
    """

    metric: str
    base: float | None
    now: float | None
    delta_pct: float | None
    noise_pct: float | None
    tolerance_pct: float
    verdict: Verdict
    gated: bool
    log_ratio: float | None = None  # log(now/base), signed so that positive = worse
    noise_log: float | None = None  # k * standard error of log(now/base)
    n_base: int = 0
    n_now: int = 0
    recordings: int = 0
    why: str = ""  # INVALID: what is wrong with the numbers; PASS: why a better value is not IMPROVED

    @property
    def worse(self) -> bool:
        """Whether the value moved in the bad direction."""
        return self.log_ratio is not None and self.log_ratio > 0

    @property
    def noise_source(self) -> str:
        """Where the noise band came from: ``repeats`` (one recording) or ``N recordings``."""
        return f"{self.recordings} recordings" if self.recordings >= 2 else "repeats"

    def describe(self) -> str:
        """One line, e.g. ``output_throughput_per_gpu -20.0% (tolerance 5%, noise 2.1%): FAIL``."""
        if self.why:
            return f"{self.metric}: {self.why}"
        if self.delta_pct is None:
            return f"{self.metric}: {self.verdict} (no data on one side)"
        return (
            f"{self.metric} {self.delta_pct:+.1f}% "
            f"(tolerance {self.tolerance_pct:g}%, noise {self.noise_pct or 0:.1f}%): {self.verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--mgpu-json``)."""
        return {
            "metric": self.metric, "base": self.base, "now": self.now, "delta_pct": self.delta_pct,
            "noise_pct": self.noise_pct, "tolerance_pct": self.tolerance_pct, "verdict": str(self.verdict),
            "gated": self.gated, "noise_source": self.noise_source, "n_base": self.n_base, "n_now": self.n_now,
            **({"why": self.why} if self.why else {}),
        }


@dataclass(frozen=True)
class Comparison:
    """One result against its baseline entry; ``verdict`` is the worst over ``metrics``.

    ``options`` are the engine options the run had in effect, ``base_options`` those of the
    baseline's latest recording (None: not recorded). ``measurement`` says which measurement the
    ``now`` values are: ``first``, or ``re-measurement`` after the confirm step.
    """

    entry_id: str
    verdict: Verdict
    metrics: tuple[MetricComparison, ...] = ()
    note: str = ""
    base_engine_version: str | None = None
    now_engine_version: str | None = None
    engine: str | None = None
    options: Mapping[str, str] | None = None
    base_options: Mapping[str, str] | None = None
    measurement: str = "first"
    #: The cumulative change since the baseline entry's anchor recording (:mod:`.drift`); None: not checked.
    drift: Mapping[str, Any] | None = None

    @property
    def failed_metrics(self) -> list[MetricComparison]:
        """Metrics whose verdict is FAIL."""
        return [m for m in self.metrics if m.verdict is Verdict.FAIL]

    @property
    def improvements(self) -> list[MetricComparison]:
        """Metrics whose verdict is IMPROVED."""
        return [m for m in self.metrics if m.verdict is Verdict.IMPROVED]

    @property
    def unjudged_improvements(self) -> list[MetricComparison]:
        """Metrics better beyond tolerance and noise that PASS because the baseline has one recording."""
        return [m for m in self.metrics if m.verdict is Verdict.PASS and m.why]

    @property
    def regressions(self) -> list[MetricComparison]:
        """Metrics that FAIL or WARN because they got worse."""
        return [m for m in self.metrics if m.verdict in (Verdict.FAIL, Verdict.WARN)]

    @property
    def options_changed(self) -> list[tuple[str, str | None, str | None]]:
        """``(option, baseline value, this run's value)`` for each engine option that differs.

        Empty when the baseline did not record its options.
        """
        if self.base_options is None or self.options is None:
            return []
        base = {_okey(k): str(v) for k, v in self.base_options.items()}
        now = {_okey(k): str(v) for k, v in self.options.items()}
        return [(k, base.get(k), now.get(k)) for k in sorted(set(base) | set(now)) if base.get(k) != now.get(k)]

    def metric(self, name: str) -> MetricComparison | None:
        """The comparison of one metric, or None."""
        return next((m for m in self.metrics if m.metric == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--mgpu-json``: each result's ``comparison``)."""
        return {
            "verdict": str(self.verdict), "note": self.note, "measurement": self.measurement,
            "base_engine_version": self.base_engine_version, "now_engine_version": self.now_engine_version,
            "engine_options": dict(self.options) if self.options is not None else None,
            "base_engine_options": dict(self.base_options) if self.base_options is not None else None,
            "metrics": [m.to_dict() for m in self.metrics],
            **({"drift": dict(self.drift)} if self.drift is not None else {}),
        }


def _okey(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-").lower()


def log_std(values: Sequence[float]) -> float:
    """Sample std of the log values (0 for fewer than two), computed on ratios to the first value.

    Working on ratios makes it exactly invariant to scaling every value by a power of two.
    """
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    if len(vals) < 2:
        return 0.0
    ref = vals[0]
    return float(statistics.stdev(math.log(v / ref) for v in vals))


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


@dataclass(frozen=True)
class BaselineStats:
    """What the gate reads from one metric's baseline recordings (see :func:`baseline_stats`)."""

    value: float | None  # the baseline value the run is compared with
    recordings: int  # recordings used (the latest and the earlier ones of the same level)
    var_in: float  # variance of one recording's log median predicted from its repeats (mean over recordings)
    var_between: float  # sample variance of the recordings' log medians (0 with one recording)
    latest_noise: float  # the latest recording's log-std over its repeats, floored

    @property
    def var_recording(self) -> float:
        """Variance of one recording's log median: the larger of the between-recording and in-session estimates."""
        return max(self.var_between, self.var_in)

    @property
    def noise_source(self) -> str:
        """``repeats`` (one recording) or ``N recordings``."""
        return f"{self.recordings} recordings" if self.recordings >= 2 else "repeats"


def baseline_stats(recordings: Sequence[Sequence[float]], noise_floor: float = DEFAULT_NOISE_FLOOR) -> BaselineStats:
    """The baseline value and its noise from a metric's recordings (oldest first, the latest last).

    One recording: its median, and the in-session noise of its repeats. Two or more: the
    geometric mean of the recordings' medians, and also their spread (the sample variance of the
    log medians), which catches the drift between sessions (engine restarts, another day) that
    the repeats of one session never show. ``pytest-mgpu show`` prints these same numbers.
    """
    recs = [r for r in (_clean(x) for x in recordings) if r]
    if not recs:
        return BaselineStats(None, 0, 0.0, 0.0, noise_floor)
    meds = [float(statistics.median(r)) for r in recs]
    var_in = statistics.fmean(
        median_se_factor(len(r)) ** 2 * max(log_std(r), noise_floor) ** 2 / len(r) for r in recs
    )
    latest_noise = max(log_std(recs[-1]), noise_floor)
    if len(recs) == 1 or any(m <= 0 for m in meds):
        return BaselineStats(meds[-1], 1, median_se_factor(len(recs[-1])) ** 2 * latest_noise**2 / len(recs[-1]),
                             0.0, latest_noise)
    ref = meds[0]
    logs = [math.log(m / ref) for m in meds]  # ratios: exact under scaling by a power of two
    value = ref * math.exp(statistics.fmean(logs))
    return BaselineStats(value, len(recs), var_in, statistics.variance(logs), latest_noise)


#: The advice on a better metric that a single-recording baseline cannot judge (:func:`compare_metric`).
RECORD_SECOND = "record a second one (pytest-mgpu accept, or --mgpu-update-baselines) to judge improvements"


def compare_metric(
    metric: str,
    base_samples: Sequence[float],
    now_samples: Sequence[float],
    config: GateConfig = DEFAULT_CONFIG,
    *,
    history: Sequence[Sequence[float]] = (),
) -> MetricComparison:
    """Compare one metric's repeats against the baseline's.

    ``base_samples`` are the repeats of the baseline's latest recording, ``history`` those of its
    earlier recordings (oldest first). With one recording the band is the in-session noise of
    both sides' repeats (docs/gate.md, "The rule"); with two or more, the baseline value is the
    geometric mean of the recordings' medians and the band also holds their spread ("History").
    A better value beyond tolerance and noise is IMPROVED only against two or more recordings: with
    one, it is PASS with a ``why`` that says so (the spread between engine starts is unknown).
    """
    gated = metric in config.gated
    tol = config.tolerance(metric)
    b, n = _clean(base_samples), _clean(now_samples)
    recs = [*history, b] if b else []
    stats = baseline_stats(recs, config.noise_floor)
    bm = stats.value
    nm = float(statistics.median(n)) if n else None

    def result(verdict: Verdict, why: str = "", **decided: float | None) -> MetricComparison:
        return MetricComparison(
            metric=metric, base=bm, now=nm, tolerance_pct=tol.pct, gated=gated, n_base=len(b), n_now=len(n),
            verdict=verdict, delta_pct=decided.get("delta_pct"), noise_pct=decided.get("noise_pct"),
            log_ratio=decided.get("log_ratio"), noise_log=decided.get("noise_log"), recordings=stats.recordings,
            why=why,
        )

    if bm is None:
        return result(Verdict.NEW)
    if len(n) < len(now_samples):  # a repeat without a number is a broken measurement, never dropped
        bad = [v for v in now_samples if v is None or not math.isfinite(float(v))]
        return result(Verdict.INVALID, f"{len(bad)} of {len(now_samples)} repeats of this run measured no finite "
                                       f"value ({', '.join(map(str, bad))})")
    if nm is None:
        return result(Verdict.INVALID, f"this run has no value for it (baseline {bm:.6g})")
    if bm <= 0 or nm <= 0:
        # A ratio of non-positive values means nothing; a valid run never produces one.
        return result(Verdict.INVALID, f"not positive (baseline {bm:.6g}, this run {nm:.6g}), so no ratio can be taken")
    q = nm / bm
    log_q = math.log(q)
    r = worse_sign(metric) * log_q  # positive = worse
    sn = max(log_std(n), config.noise_floor)
    var_now = median_se_factor(len(n)) ** 2 * sn**2 / len(n)
    # Standard error of log(now / base). One recording: c(n)^2 s^2 / n per side. With history the
    # baseline side is the mean of m recordings (var/m) and the run is one more recording, whose
    # spread is at least what the recordings showed; drift hits both sides once, not per repeat.
    se = math.sqrt(
        stats.var_recording / stats.recordings
        + max(stats.var_between, var_now)
        + 2 * config.drift**2
    )
    band = config.noise_k * se
    beyond_tol = abs(q - 1.0) > tol.fraction
    beyond_noise = abs(log_q) > band
    if r > 0 and beyond_tol:
        verdict = (Verdict.FAIL if gated else Verdict.WARN) if beyond_noise else Verdict.WARN
    elif r < 0 and beyond_tol and beyond_noise:
        verdict = Verdict.IMPROVED
    else:
        verdict = Verdict.PASS
    noise_pct = abs(math.exp(math.copysign(band, log_q)) - 1.0) * 100.0
    why = ""
    if verdict is Verdict.IMPROVED and stats.recordings < 2:
        # One recording: the band holds the repeats of two engine starts, not the spread between
        # starts, and a restart alone can move TTFT by more than that (issue 17: -17% to -19% on
        # an unchanged engine). Claiming an improvement needs the history's noise.
        verdict = Verdict.PASS
        why = (f"better by {abs(q - 1.0) * 100.0:.1f}% (beyond this run's noise {noise_pct:.1f}%), not judged an "
               "improvement: the baseline has one recording, so the spread between engine starts is unknown; "
               f"{RECORD_SECOND}")
    return result(verdict, why, delta_pct=(q - 1.0) * 100.0, noise_pct=noise_pct, log_ratio=r, noise_log=band)


def _history(m: Measured, metric: str) -> list[list[float]]:
    fn = getattr(m, "history", None)
    return list(fn(metric)) if callable(fn) else []


def compare(
    now: Measured,
    base: Measured | None,
    config: GateConfig = DEFAULT_CONFIG,
    *,
    fingerprint: str | None = None,
    have: Sequence[str] = (),
    engine: str | None = None,
) -> Comparison:
    """Compare a result against its baseline entry (None: no baseline, NEW).

    A baseline of another identity (model, workload, layout, engine, engine options; see
    :mod:`pytest_mgpu.judge.results`) is never compared: MISMATCH, with a note naming the difference.
    ``fingerprint``/``have`` only shape the NEW note: ``no baseline for X; have: Y, Z``.
    """
    eid = now.entry_id
    engine = engine or getattr(now, "engine", None)
    base_v = base.engine_version if base is not None else None
    ctx: dict[str, Any] = {
        "options": getattr(now, "engine_options", None),
        "base_options": getattr(base, "engine_options", None) if base is not None else None,
        "measurement": getattr(now, "measurement", "first"),
    }
    if now.invalid:
        return Comparison(eid, Verdict.INVALID, (), f"not compared: {now.invalid}", base_v, now.engine_version, engine,
                          **ctx)
    if base is None:
        where = f" for {fingerprint}" if fingerprint else ""
        note = f"no baseline{where}"
        if have:
            note += f"; have: {', '.join(have)}"
        return Comparison(eid, Verdict.NEW, (), note, None, now.engine_version, engine, **ctx)
    b_id, n_id = getattr(base, "identity", None), getattr(now, "identity", None)
    if b_id is not None and n_id is not None and b_id != n_id:
        note = b_id.describe_mismatch(n_id) + "; not compared"
        return Comparison(eid, Verdict.MISMATCH, (), note, base_v, now.engine_version, engine, **ctx)
    mcs = tuple(
        compare_metric(m, base.samples(m), now.samples(m), config, history=_history(base, m)) for m in config.metrics
    )
    for mc in mcs:
        if mc.verdict is Verdict.NEW and mc.gated and any(v > 0 for v in _clean(now.samples(mc.metric))):
            # A gated metric missing from the baseline would turn the gate off for it (NEW passes).
            from ..errors import BaselineError  # lazy: keeps this module free of the plugin's imports

            raise BaselineError(
                f"the baseline entry {eid!r} lacks the gated metric {mc.metric} (this run has it); record the "
                f"entry again (--mgpu-update-baselines or pytest-mgpu accept), or stop gating {mc.metric}"
            )
    compared = [m for m in mcs if m.verdict is not Verdict.NEW]
    notes: list[str] = []
    missing = [m.metric for m in mcs if m.verdict is Verdict.NEW]
    if missing:
        notes.append(f"baseline lacks {', '.join(missing)}")
    verdict = worst(m.verdict for m in compared) if compared else Verdict.NEW
    invalid = [m for m in mcs if m.verdict is Verdict.INVALID]
    fails_ = [m for m in mcs if m.verdict is Verdict.FAIL]
    if invalid:
        notes.insert(0, "not comparable: " + "; ".join(m.describe() for m in invalid))
    elif fails_:
        notes.insert(0, "regression: " + "; ".join(m.describe() for m in fails_))
    else:
        within = [m for m in mcs if m.verdict is Verdict.WARN and m.gated]
        if within:
            notes.insert(0, "beyond tolerance but within noise: " + "; ".join(m.describe() for m in within))
        unjudged = [m for m in mcs if m.verdict is Verdict.PASS and m.why]
        if unjudged:
            better = "; ".join(f"{m.metric} better by {abs(m.delta_pct or 0):.1f}% (beyond this run's noise "
                               f"{m.noise_pct or 0:.1f}%)" for m in unjudged)
            notes.append(f"{better}: not judged an improvement: the baseline has one recording, so the spread "
                         f"between engine starts is unknown; {RECORD_SECOND}")
    return Comparison(eid, verdict, mcs, "; ".join(notes), base_v, now.engine_version, engine, **ctx)


def confirm(first: Comparison, second: Comparison) -> Comparison:
    """Combine a FAIL or an IMPROVED with its re-measurement: it stands only if the same metric repeats it.

    A FAIL that does not reproduce becomes WARN ("did not reproduce"); an IMPROVED that does not
    becomes the re-measurement's own verdict, at best PASS ("improvement not confirmed"). In the
    re-measurement, a metric that FAILs or improves without having done so in the first
    measurement counts as WARN or PASS: one measurement decides nothing. Any other ``first`` is
    returned as is. The metrics shown are the re-measurement's (``measurement`` says so).
    """
    if first.verdict not in (Verdict.FAIL, Verdict.IMPROVED):
        return first
    if second.verdict is Verdict.INVALID:
        return replace(second, note=f"first measurement: {first.note or first.verdict}; re-measurement {second.note}",
                       measurement="re-measurement")
    first_failed = {m.metric for m in first.failed_metrics}
    first_improved = {m.metric for m in first.improvements}
    metrics = []
    fail_once: list[str] = []  # failed on the re-measurement only
    for m in second.metrics:
        if m.verdict is Verdict.FAIL and m.metric not in first_failed:
            m = replace(m, verdict=Verdict.WARN)
            fail_once.append(m.metric)
        elif m.verdict is Verdict.IMPROVED and m.metric not in first_improved:
            m = replace(m, verdict=Verdict.PASS)
        metrics.append(m)
    compared = [m.verdict for m in metrics if m.verdict is not Verdict.NEW]
    if first.verdict is Verdict.FAIL:
        if any(m.verdict is Verdict.FAIL for m in metrics):
            verdict = Verdict.FAIL
            note = "confirmed by a re-measurement; " + "; ".join(
                m.describe() for m in metrics if m.verdict is Verdict.FAIL)
        else:
            verdict = worst([Verdict.WARN, *compared])
            gone = ", ".join(sorted(first_failed))
            note = f"did not reproduce: {gone} failed, then not on a re-measurement ({first.note})"
    else:
        verdict = worst(compared)
        kept = [m for m in metrics if m.verdict is Verdict.IMPROVED]
        if verdict is Verdict.IMPROVED:
            note = "improvement confirmed by a re-measurement; " + "; ".join(m.describe() for m in kept)
        else:
            was = "; ".join(m.describe() for m in first.improvements)
            note = f"improvement not confirmed: {was} in the first measurement, not on a re-measurement"
            if fail_once:
                note += f"; {', '.join(fail_once)} failed on the re-measurement only"
            elif second.note:
                note += f"; {second.note}"
    return replace(second, verdict=verdict, metrics=tuple(metrics), note=note, measurement="re-measurement")


def verdict_counts(comparisons: Iterable[Comparison]) -> dict[Verdict, int]:
    """How many results got each verdict (only verdicts that occur)."""
    counts: dict[Verdict, int] = {}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return counts
