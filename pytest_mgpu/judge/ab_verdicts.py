"""The paired decision of a same-job A/B: old engine (A) vs new engine (B), measured in rounds.

Each round measures the workload once on a freshly started A engine and once on a freshly
started B engine (the order alternates, A B then B A, so a steady trend cancels). For one metric
the round gives one paired sample, the log ratio ``d = sign * log(B / A)`` of the two
measurements (the median of the repeats taken on that engine start), with ``sign`` chosen so that
``d > 0`` means B is worse. Drift that both sides share (host, day, thermal state) cancels in
``d``; what remains is the restart-to-restart and run-to-run noise, which the spread of the
``d`` values measures directly.

After ``n >= min_rounds`` rounds every metric is *looked at* (``mean`` and ``sd`` of its ``d``,
``se = sd / sqrt(n)``, the sd floored at ``sqrt(2) * noise_floor``; ``delta`` = the tolerance as a
log ratio in the bad direction):

* **regressed**: ``mean > fail_fraction * delta`` **and** a one-sided paired t-test rejects
  "B is not worse" at level ``alpha`` (``mean / se > t(1 - alpha, n - 1)``);
* **improved**: the mirror image;
* **inside**: the upper ``1 - beta`` confidence bound ``mean + t(1 - beta, n - 1) * se`` is below
  ``delta``: B is not worse than the tolerance;
* otherwise **undecided**.

A gated metric FAILs when it is *regressed* at two consecutive looks (the second after one more
round: the A/B's own confirmation), PASSes when *inside*, is IMPROVED when *improved*. The A/B
stops at the first look where every gated metric is decided (or one has FAILed), and at
``max_rounds`` at the latest, where an undecided metric is WARN ("inconclusive"). So the
tolerance is the size of regression the A/B is built to catch, and a change smaller than
``fail_fraction`` of it is never called a regression. The error rates of this rule are
calibrated by ``benchmarks/calibrate_ab.py`` (docs/gate.md, *Same-job A/B*).

Only the decision lives here; :mod:`pytest_mgpu.run.ab` runs the rounds, :mod:`.ab_results` holds
them and :mod:`pytest_mgpu.report.render.ab` shows the result.
"""

from __future__ import annotations

import enum
import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..measure.metrics import HIGHER_IS_BETTER, worse_sign
from .verdicts import GateConfig, Verdict, worst

#: One-sided level of the paired t-test at each look (calibrated: docs/gate.md, *Same-job A/B*).
DEFAULT_ALPHA = 0.005
#: A metric is *inside* the tolerance when its one-sided ``1 - beta`` upper bound is below it.
DEFAULT_BETA = 0.05
#: A regression must be worse than this fraction of the tolerance (on average) to FAIL.
DEFAULT_FAIL_FRACTION = 0.5
#: Rounds before the first look, and the cap.
DEFAULT_MIN_ROUNDS = 3
DEFAULT_MAX_ROUNDS = 10
#: Floor on the per-measurement noise (log sigma); the sd of a paired difference is floored at sqrt(2) x this.
DEFAULT_AB_NOISE_FLOOR = 0.005


class LookState(str, enum.Enum):
    """What one look at one metric says."""

    REGRESSED = "regressed"
    IMPROVED = "improved"
    INSIDE = "inside"
    UNDECIDED = "undecided"
    INVALID = "invalid"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AbConfig:
    """The sequential rule's parameters (defaults calibrated in docs/gate.md)."""

    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    fail_fraction: float = DEFAULT_FAIL_FRACTION
    min_rounds: int = DEFAULT_MIN_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    noise_floor: float = DEFAULT_AB_NOISE_FLOOR
    confirm: bool = True  # FAIL needs *regressed* at two consecutive looks

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha={self.alpha} and beta={self.beta} must lie in (0, 0.5)")
        if not (0 <= self.fail_fraction <= 1):
            raise ValueError(f"fail_fraction={self.fail_fraction} must lie in [0, 1]")
        if self.min_rounds < 2:
            raise ValueError(f"min_rounds={self.min_rounds}: a paired t-test needs at least 2 rounds")
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds={self.max_rounds} is below min_rounds={self.min_rounds}")


# --- Student's t without scipy -------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (the one-sided p-value of ``t``)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    if t2 < df:  # near 0: the complementary form keeps its precision (1 - x would cancel)
        tail = 0.5 * (1.0 - betainc(0.5, df / 2.0, t2 / (df + t2)))
    else:
        tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2))
    return tail if t > 0 else 1.0 - tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (``t_quantile(0.99, 2)`` = 6.965), by bisection on :func:`t_sf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > 1.0 - p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --- one look at one metric ----------------------------------------------------------------------


def log_tolerance(metric: str, tol: float) -> float:
    """The tolerance as a log ratio in the bad direction: ``-log(1 - tol)`` for a throughput, ``log(1 + tol)`` else.

    The same line as the stored-baseline gate: a throughput below ``(1 - tol) x`` or a latency
    above ``(1 + tol) x`` is beyond it.
    """
    return -math.log1p(-tol) if metric in HIGHER_IS_BETTER else math.log1p(tol)


@dataclass(frozen=True)
class Look:
    """The statistics of one metric after ``n`` rounds (log ratios, positive = B worse)."""

    n: int
    mean: float
    sd: float  # floored
    se: float
    t: float
    p_worse: float  # one-sided p-value of "B is worse"
    upper: float  # one-sided 1 - beta upper confidence bound of the mean
    lower: float  # one-sided 1 - beta lower confidence bound
    state: LookState


def look(d: Sequence[float], delta: float, cfg: AbConfig) -> Look:
    """Look at the paired log ratios ``d`` (positive = worse) against the log tolerance ``delta``."""
    n = len(d)
    if n < 2:
        raise ValueError("a look needs at least 2 rounds")
    mean = math.fsum(d) / n
    sd = max(statistics.stdev(d), math.sqrt(2.0) * cfg.noise_floor)
    se = sd / math.sqrt(n)
    t = mean / se
    p_worse = t_sf(t, n - 1)
    crit = t_quantile(1.0 - cfg.alpha, n - 1)
    bound = t_quantile(1.0 - cfg.beta, n - 1) * se
    upper, lower = mean + bound, mean - bound
    threshold = cfg.fail_fraction * delta
    if mean > threshold and t > crit:
        state = LookState.REGRESSED
    elif mean < -threshold and t < -crit:
        state = LookState.IMPROVED
    elif upper < delta:
        state = LookState.INSIDE
    else:
        state = LookState.UNDECIDED
    return Look(n=n, mean=mean, sd=sd, se=se, t=t, p_worse=p_worse, upper=upper, lower=lower, state=state)


# --- one metric over the rounds ------------------------------------------------------------------


@dataclass(frozen=True)
class PairedMetric:
    """One metric of an A/B: old vs new over the rounds, and the verdict.

    ``old``/``new`` are the medians of each side's per-round values; ``delta_pct`` is the paired
    estimate of the change of new over old (``exp(mean log(new/old)) - 1``, in %), ``ci_low_pct``
    and ``ci_high_pct`` its two-sided ``1 - 2 beta`` confidence interval. ``threshold_pct`` is the
    change a FAIL must exceed on average; ``tolerance_pct`` the regression the A/B is built to catch.
    """

    metric: str
    gated: bool
    verdict: Verdict
    state: LookState
    rounds: int
    tolerance_pct: float
    threshold_pct: float
    old: float | None = None
    new: float | None = None
    delta_pct: float | None = None
    ci_low_pct: float | None = None
    ci_high_pct: float | None = None
    p_worse: float | None = None
    sd_pct: float | None = None  # per-round sd of the log ratio, in %
    old_values: tuple[float, ...] = ()
    new_values: tuple[float, ...] = ()
    note: str = ""

    def describe(self) -> str:
        """One line, e.g. ``tpot_p50 +10.3% [+8.1%, +12.6%] (tolerance 5%, 4 rounds): FAIL``."""
        if self.delta_pct is None:
            return f"{self.metric}: {self.verdict} ({self.note or 'no data'})"
        return (
            f"{self.metric} {self.delta_pct:+.1f}% [{self.ci_low_pct:+.1f}%, {self.ci_high_pct:+.1f}%] "
            f"(tolerance {self.tolerance_pct:g}%, {self.rounds} rounds): {self.verdict}"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "metric": self.metric, "gated": self.gated, "verdict": str(self.verdict), "state": str(self.state),
            "rounds": self.rounds, "tolerance_pct": self.tolerance_pct, "threshold_pct": self.threshold_pct,
            "old": self.old, "new": self.new, "delta_pct": self.delta_pct, "ci_low_pct": self.ci_low_pct,
            "ci_high_pct": self.ci_high_pct, "p_worse": self.p_worse, "sd_pct": self.sd_pct,
            "old_values": list(self.old_values), "new_values": list(self.new_values), "note": self.note,
        }


def _pct(log_ratio: float) -> float:
    return (math.exp(log_ratio) - 1.0) * 100.0


def _clean_pairs(old: Sequence[float], new: Sequence[float]) -> tuple[list[float], list[float]] | None:
    """The rounds' values if every one is positive and finite, else None (the metric cannot be compared)."""
    if len(old) != len(new):
        raise ValueError(f"{len(old)} old values but {len(new)} new ones: the rounds are paired")
    o = [float(v) for v in old]
    n = [float(v) for v in new]
    if not all(math.isfinite(v) and v > 0 for v in o + n):
        return None
    return o, n


def decide_metric(
    metric: str,
    old: Sequence[float],
    new: Sequence[float],
    tolerance: float,
    gated: bool,
    cfg: AbConfig,
    *,
    final: bool,
) -> PairedMetric:
    """The verdict of one metric from its per-round values (``old[i]`` and ``new[i]`` from round i).

    ``final``: this is the last look (the cap, or another metric ended the A/B), so an undecided
    metric becomes WARN rather than "needs more rounds" (which :func:`decide` reads off ``state``).
    """
    delta = log_tolerance(metric, tolerance)
    pm = PairedMetric(
        metric=metric, gated=gated, verdict=Verdict.WARN, state=LookState.UNDECIDED, rounds=len(old),
        tolerance_pct=tolerance * 100.0, threshold_pct=abs(_pct(worse_sign(metric) * cfg.fail_fraction * delta)),
        old_values=tuple(old), new_values=tuple(new),
    )
    pairs = _clean_pairs(old, new)
    if pairs is None:
        return replace(pm, verdict=Verdict.INVALID, state=LookState.INVALID,
                       note="a round measured a non-positive or non-finite value")
    o, n = pairs
    sign = worse_sign(metric)
    d = [sign * math.log(b / a) for a, b in zip(o, n)]
    pm = replace(pm, old=float(statistics.median(o)), new=float(statistics.median(n)))
    if len(d) < cfg.min_rounds:
        return replace(pm, note=f"only {len(d)} round(s); the first look is after {cfg.min_rounds}")
    now = look(d, delta, cfg)
    prev = look(d[:-1], delta, cfg) if len(d) - 1 >= cfg.min_rounds else None
    # The two-sided 1 - 2 beta interval of log(new/old): the one-sided bounds, back in new/old terms.
    lo, hi = sorted((sign * now.lower, sign * now.upper))
    pm = replace(
        pm, delta_pct=_pct(sign * now.mean), ci_low_pct=_pct(lo), ci_high_pct=_pct(hi), p_worse=now.p_worse,
        sd_pct=now.sd * 100.0, state=now.state,
    )
    if now.state is LookState.REGRESSED:
        confirmed = not cfg.confirm or (prev is not None and prev.state is LookState.REGRESSED)
        if confirmed:
            note = "regressed" + (f" at rounds {len(d) - 1} and {len(d)}" if cfg.confirm else f" at round {len(d)}")
            return replace(pm, verdict=Verdict.FAIL if gated else Verdict.WARN, note=note)
        if final:
            return replace(pm, verdict=Verdict.WARN, note=f"regressed at round {len(d)}, not confirmed (stopped there)")
        return replace(pm, verdict=Verdict.WARN, state=LookState.UNDECIDED,
                       note="regressed at this look; one more round to confirm")
    if now.state is LookState.IMPROVED:
        return replace(pm, verdict=Verdict.IMPROVED)
    if now.state is LookState.INSIDE:
        return replace(pm, verdict=Verdict.PASS)
    if not gated:
        # A warn-only metric warns about a regression it saw, not about one it could not rule out.
        return replace(pm, verdict=Verdict.PASS, note="undecided (warn-only metric)")
    return replace(pm, verdict=Verdict.WARN, note=f"inconclusive after {len(d)} rounds" if final else "undecided")


# --- a whole result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbDecision:
    """The A/B decision for one result after some rounds: per-metric verdicts and whether to stop."""

    verdict: Verdict
    done: bool
    rounds: int
    metrics: tuple[PairedMetric, ...] = ()
    note: str = ""

    def metric(self, name: str) -> PairedMetric | None:
        """The decision of one metric, or None."""
        return next((m for m in self.metrics if m.metric == name), None)

    @property
    def failed_metrics(self) -> list[PairedMetric]:
        """Metrics whose verdict is FAIL."""
        return [m for m in self.metrics if m.verdict is Verdict.FAIL]


def decide(
    old: Mapping[str, Sequence[float]],
    new: Mapping[str, Sequence[float]],
    gate: GateConfig,
    cfg: AbConfig,
    *,
    invalid: str | None = None,
) -> AbDecision:
    """Decide after the rounds so far: ``old[metric][i]``, ``new[metric][i]`` are round i's values.

    ``done`` says whether to stop: every gated metric decided, a gated metric FAILed (confirmed),
    an invalid run, or the cap reached. Call it after every round; it is a pure function of the
    values, so a decision can always be recomputed from the recorded rounds.
    """
    rounds = min((len(v) for v in new.values()), default=0)
    if invalid:
        return AbDecision(Verdict.INVALID, True, rounds, (), f"not compared: {invalid}")
    names = [m for m in gate.metrics if m in old and m in new]
    cap = rounds >= cfg.max_rounds

    def all_metrics(final: bool) -> list[PairedMetric]:
        return [
            decide_metric(m, old[m], new[m], gate.tolerance(m).fraction, m in gate.gated, cfg, final=final)
            for m in names
        ]

    ms = all_metrics(final=cap)
    gated = [m for m in ms if m.gated]
    failed = any(m.verdict is Verdict.FAIL for m in gated)
    invalid_metric = any(m.verdict is Verdict.INVALID for m in gated)
    decided = all(m.state in (LookState.INSIDE, LookState.IMPROVED) for m in gated)
    done = cap or failed or invalid_metric or (rounds >= cfg.min_rounds and decided)
    if done and not cap:
        ms = all_metrics(final=True)  # stopping now: what is undecided stays WARN
    verdict = worst(m.verdict for m in ms) if ms else Verdict.WARN
    notes: list[str] = []
    fails = [m for m in ms if m.verdict is Verdict.FAIL]
    if fails:
        notes.append("regression: " + "; ".join(m.describe() for m in fails))
    open_ = [m for m in ms if m.gated and m.verdict is Verdict.WARN]
    if open_ and done:
        notes.append("; ".join(f"{m.metric}: {m.note}" for m in open_))
    if not ms:
        notes.append("no metric to compare")
    return AbDecision(verdict, done, rounds, tuple(ms), "; ".join(notes))


@dataclass
class SideCost:
    """Time one side of an A/B spent holding GPUs: engine starts, measurements, stops."""

    starts: list[float] = field(default_factory=list)  # seconds from launch to ready, per start
    measure_s: float = 0.0
    stop_s: float = 0.0

    @property
    def seconds(self) -> float:
        """Every second this side held its GPUs."""
        return math.fsum(self.starts) + self.measure_s + self.stop_s
