"""Calibrate the regression gate: A/A false-fail rate and power, through the real gate code.

Each repeat of a metric is drawn as ``true * exp(N(0, sigma_run))`` (the sim engine's ``noise``
knob has the same meaning). The baseline and the run each get a day effect
``exp(N(0, sigma_drift))`` shared by all their repeats; the confirmation re-measurement happens
in the same job as the run, so it shares the run's day effect. A trial FAILs when
``compare.compare_metric`` says FAIL and, after a fresh re-measurement, ``compare.confirm``
keeps FAIL. With ``--history H`` the baseline holds H recordings, each from its own day, and the
gate uses their spread (docs/gate.md, "History").

    python benchmarks/calibrate.py                       # defaults: k=3, floor 0.5%, 20000 trials
    python benchmarks/calibrate.py --k 2 2.5 3 4 --trials 5000
    python benchmarks/calibrate.py --drift 0.02          # baseline and run from different days
    python benchmarks/calibrate.py --drift 0.02 --history 1 2 3 5   # baselines that remember
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_mgpu.judge.verdicts import (
    DEFAULT_NOISE_FLOOR,
    DEFAULT_NOISE_K,
    Comparison,
    GateConfig,
    Verdict,
    compare_metric,
    confirm,
)

#: One gated metric of each direction; their tolerances are the defaults (5%).
METRICS = {"output_throughput_per_gpu": "higher", "tpot_p50": "lower"}


def _draw(rng: np.random.Generator, true: float, n: int, sigma: float, day: float) -> list[float]:
    return (true * np.exp(day + rng.normal(0.0, sigma, n))).tolist()


def fail_rate(
    metric: str,
    effect: float,
    sigma: float,
    n: int,
    drift: float,
    config: GateConfig,
    trials: int,
    seed: int,
    use_confirm: bool = True,
    history: int = 1,
) -> float:
    """Fraction of trials that end in FAIL when the true value worsens by ``effect`` (0 = A/A).

    The baseline holds ``history`` recordings, each with its own day effect.
    """
    rng = np.random.default_rng(seed)
    true = 1000.0
    worse = true * (1 - effect) if METRICS[metric] == "higher" else true * (1 + effect)
    fails = 0
    for _ in range(trials):
        recs = [_draw(rng, true, n, sigma, rng.normal(0.0, drift)) for _ in range(history)]
        base, earlier = recs[-1], recs[:-1]
        day = rng.normal(0.0, drift)
        first = compare_metric(metric, base, _draw(rng, worse, n, sigma, day), config, history=earlier)
        if first.verdict is not Verdict.FAIL:
            continue
        if not use_confirm:
            fails += 1
            continue
        second = compare_metric(metric, base, _draw(rng, worse, n, sigma, day), config, history=earlier)
        c = confirm(Comparison("t", Verdict.FAIL, (first,)), Comparison("t", second.verdict, (second,)))
        fails += c.verdict is Verdict.FAIL
    return fails / trials


def main(argv: list[str] | None = None) -> int:
    """Print false-fail and detection rates per (noise, repeats) for each k."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=float, nargs="+", default=[DEFAULT_NOISE_K], help="Noise multipliers to try")
    ap.add_argument("--floor", type=float, default=DEFAULT_NOISE_FLOOR, help="Noise floor (fraction)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05], help="Run-to-run sigma (fraction)")
    ap.add_argument("--repeats", type=int, nargs="+", default=[3, 5], help="Repeats per side")
    ap.add_argument("--effects", type=float, nargs="+", default=[0.05, 0.10, 0.20], help="Injected regressions")
    ap.add_argument("--drift", type=float, default=0.0, help="Day-to-day sigma between baseline and run")
    ap.add_argument("--allow-drift", type=float, default=0.0, help="The gate's drift allowance (GateConfig.drift)")
    ap.add_argument("--trials", type=int, default=20000, help="Trials per cell")
    ap.add_argument("--no-confirm", action="store_true", help="Fail on the first measurement")
    ap.add_argument("--history", type=int, nargs="+", default=[1], help="Recordings in the baseline (default 1)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    print(
        f"trials={args.trials} floor={args.floor:.2%} drift={args.drift:.1%} allow-drift={args.allow_drift:.1%} "
        f"confirm={'off' if args.no_confirm else 'on'} tolerance=5% (defaults)"
    )
    eff_cols = " ".join(f"{'det@' + format(e, '.0%'):>8}" for e in args.effects)
    print(f"{'k':>4} {'noise':>6} {'n':>2} {'rec':>3} {'metric':<26} {'false-fail':>10} {eff_cols}")
    for k in args.k:
        cfg = GateConfig(noise_k=k, noise_floor=args.floor, drift=args.allow_drift)
        for sigma in args.noise:
            for n in args.repeats:
                for hist in args.history:
                    for metric in METRICS:
                        seed = args.seed
                        conf = not args.no_confirm
                        row = [fail_rate(metric, 0.0, sigma, n, args.drift, cfg, args.trials, seed, conf, hist)]
                        for e in args.effects:
                            seed += 1
                            row.append(fail_rate(metric, e, sigma, n, args.drift, cfg, args.trials, seed, conf, hist))
                        cells = " ".join(f"{100 * v:>7.1f}%" for v in row[1:])
                        print(f"{k:>4g} {sigma:>6.1%} {n:>2} {hist:>3} {metric:<26} {100 * row[0]:>9.2f}% {cells}")
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
