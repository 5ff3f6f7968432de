"""Calibrate the stored-baseline gate on recorded runs: false-fail rate and minimum detectable regression.

Input: any number of baseline files (schema 1 or 2, every recording is one session) and
``--mgpu-json`` results files (one session each), e.g. the committed H200 runs in docs/data/ and
the A/A runs recorded later. Sessions are grouped by hardware fingerprint and entry id; a session
seen twice (the same samples in two files) counts once.

For every gated metric of every entry (test, workload, layout) it prints:

* ``sess``: how many sessions (engine restarts) measured it; ``in-run``: the repeat-to-repeat
  noise within a session (log sigma, pooled); ``drift``: the session-to-session spread of the
  medians beyond what the repeats explain (log sigma; ``?`` with one session);
* ``A/A``: the real pairs replayed through the gate: how many of the ordered session pairs
  (baseline, run) FAIL (first comparison; no re-measurement exists for recorded data);
* ``false-fail`` and ``MDR`` (minimum detectable regression: the smallest regression that FAILs,
  confirmed, in >= 90% of trials) from a simulation with these two sigmas, through the real
  ``verdicts.compare_metric`` and ``verdicts.confirm``: a session is ``true x exp(N(0, drift))``
  times ``n`` repeats of ``exp(N(0, in-run))``; the baseline holds 1 recording (``@1``) or
  ``--history`` recordings (``@H``, the between-recording spread enters the band); the
  re-measurement before a FAIL runs on the same engine (same session effect).

Rows with one session assume no drift: their MDR is a lower bound (marked ``*``).

    python benchmarks/calibrate_real.py                                  # docs/data/*.json, default gate
    python benchmarks/calibrate_real.py --tolerance ttft_p50=12%         # the perf suite's TTFT tolerance
    python benchmarks/calibrate_real.py docs/data/*.json gpu-aa/*.json --trials 4000 --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_mgpu.judge.baseline import parse_baseline_data  # noqa: E402
from pytest_mgpu.judge.results import BenchResult  # noqa: E402
from pytest_mgpu.judge.verdicts import (  # noqa: E402
    DEFAULT_CONFIG,
    DEFAULT_GATED,
    Comparison,
    GateConfig,
    Verdict,
    compare_metric,
    confirm,
    log_std,
    median_se_factor,
    parse_metric_tolerance,
)

SHORT = {"output_throughput_per_gpu": "tok/s/GPU", "tpot_p50": "TPOT p50", "ttft_p50": "TTFT p50"}


@dataclass
class Entry:
    """One measured thing (fingerprint, entry id) and its sessions: {metric: samples} each."""

    fingerprint: str
    entry_id: str
    layout: str
    sessions: list[dict[str, list[float]]] = field(default_factory=list)
    seen: set[tuple[float, ...]] = field(default_factory=set)

    def add(self, metrics: dict[str, list[float]]) -> None:
        """Add a session unless the same one was already read from another file."""
        # The gated metrics' samples, rounded as baselines store them (6 significant digits): a
        # results file and the baseline recorded from it are the same session.
        key = tuple(float(f"{v:.6g}") for m in DEFAULT_GATED for v in metrics.get(m, ()))
        if key not in self.seen:
            self.seen.add(key)
            self.sessions.append(metrics)


def _layout_id(layout: dict) -> str:
    lid = f"tp{layout.get('tp', 1)}-pp{layout.get('pp', 1)}"
    if layout.get("gpu_mem_gb"):
        lid += f"-mem{layout['gpu_mem_gb']:g}"
    return lid


def load(paths: Sequence[Path]) -> dict[tuple[str, str], Entry]:
    """Every session of every entry in ``paths`` (baseline files and --mgpu-json results files)."""
    out: dict[tuple[str, str], Entry] = {}
    for p in paths:
        doc = json.loads(p.read_text())
        if "entries" in doc:
            header, entries = parse_baseline_data(doc, p)
            fp = str(header["fingerprint"])
            for eid, e in entries.items():
                ent = out.setdefault((fp, eid), Entry(fp, eid, _layout_id(e.layout)))
                for rec in e.recordings:
                    ent.add({m: list(v) for m, v in rec.metrics.items()})
        else:
            for raw in doc["results"]:
                r = BenchResult.from_dict(raw)
                if r.invalid:
                    continue
                fp = str(doc.get("fingerprint") or r.env.get("fingerprint"))
                ent = out.setdefault((fp, r.entry_id), Entry(fp, r.entry_id, r.layout.id))
                ent.add({m: r.samples(m) for m in r.repeats[0].summary})
    return out


@dataclass
class Noise:
    """The two sigmas of a metric of an entry, estimated from its sessions."""

    sessions: int
    repeats: int
    in_run: float  # pooled log-std of the repeats within a session
    drift: float | None  # session-to-session log sigma beyond the repeats; None with one session


def estimate(sessions: list[list[float]], floor: float) -> Noise:
    """Pooled in-run sigma and the between-session drift sigma (method of moments, floored at 0)."""
    n = round(statistics.median(len(s) for s in sessions))
    in_run = math.sqrt(statistics.fmean(max(log_std(s), 0.0) ** 2 for s in sessions))
    if len(sessions) < 2:
        return Noise(1, n, in_run, None)
    logs = [math.log(statistics.median(s)) for s in sessions]
    between = statistics.variance(logs)
    explained = median_se_factor(n) ** 2 * max(in_run, floor) ** 2 / n
    return Noise(len(sessions), n, in_run, math.sqrt(max(between - explained, 0.0)))


def real_aa(metric: str, sessions: list[list[float]], config: GateConfig) -> tuple[int, int]:
    """(FAILs, ordered pairs): every session against every other one, through the gate."""
    fails = pairs = 0
    for i, base in enumerate(sessions):
        for j, now in enumerate(sessions):
            if i != j:
                pairs += 1
                fails += compare_metric(metric, base, now, config).verdict is Verdict.FAIL
    return fails, pairs


def _draw(rng: np.random.Generator, true: float, n: int, noise: Noise, day: float) -> list[float]:
    return (true * np.exp(day + rng.normal(0.0, noise.in_run, n))).tolist()


def fail_rate(metric: str, effect: float, noise: Noise, history: int, config: GateConfig, trials: int,
              seed: int) -> float:
    """Fraction of simulated trials that end in a confirmed FAIL for a true regression of ``effect``."""
    rng = np.random.default_rng(seed)
    drift = noise.drift or 0.0
    higher = metric.endswith("throughput") or "throughput_per_gpu" in metric
    worse = 1000.0 * (1 - effect) if higher else 1000.0 * (1 + effect)
    n = noise.repeats
    fails = 0
    for _ in range(trials):
        recs = [_draw(rng, 1000.0, n, noise, rng.normal(0.0, drift)) for _ in range(history)]
        day = rng.normal(0.0, drift)
        first = compare_metric(metric, recs[-1], _draw(rng, worse, n, noise, day), config, history=recs[:-1])
        if first.verdict is not Verdict.FAIL:
            continue
        second = compare_metric(metric, recs[-1], _draw(rng, worse, n, noise, day), config, history=recs[:-1])
        c = confirm(Comparison("t", Verdict.FAIL, (first,)), Comparison("t", second.verdict, (second,)))
        fails += c.verdict is Verdict.FAIL
    return fails / trials


def mdr(metric: str, noise: Noise, history: int, config: GateConfig, trials: int, seed: int,
        power: float = 0.9) -> float | None:
    """The smallest regression (fraction, to 0.25%) detected in >= ``power`` of trials; None beyond 95%."""
    lo, hi = 0.0, 0.95
    if fail_rate(metric, hi, noise, history, config, trials, seed) < power:
        return None
    while hi - lo > 0.0025:
        mid = (lo + hi) / 2
        if fail_rate(metric, mid, noise, history, config, trials, seed) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def _pct(v: float | None, digits: int = 1) -> str:
    return "?" if v is None else f"{100 * v:.{digits}f}%"


def main(argv: list[str] | None = None) -> int:
    """Print the calibration table for the given (or the committed) recorded runs."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="Baseline files and --mgpu-json files (default: docs/data/*.json)")
    ap.add_argument("--metrics", nargs="+", default=list(DEFAULT_GATED), help="Metrics (default: the gated ones)")
    ap.add_argument("--tolerance", action="append", type=parse_metric_tolerance, default=[], metavar="METRIC=PCT",
                    help="Tolerance override, as --mgpu-tolerance (e.g. ttft_p50=12%%, the perf suite's)")
    ap.add_argument("--history", type=int, default=5, help="Recordings in the baseline for the @H columns (default 5)")
    ap.add_argument("--trials", type=int, default=1000, help="Simulated trials per rate (default 1000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="Print a Markdown table")
    args = ap.parse_args(argv)

    files = args.files or sorted((ROOT / "docs" / "data").glob("*.json"))
    config = DEFAULT_CONFIG.with_overrides(dict(args.tolerance), gate_named=False) if args.tolerance else DEFAULT_CONFIG
    entries = load(files)
    t0 = time.perf_counter()
    print(f"files: {', '.join(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f) for f in files)}")
    print(f"gate: k={config.noise_k:g} floor={config.noise_floor:.1%} drift={config.drift:.1%} confirm=on; "
          f"tolerances: {', '.join(f'{m} {config.tolerance(m)}' for m in args.metrics)}; "
          f"trials={args.trials}; MDR = smallest regression FAILed (confirmed) in >= 90% of trials")
    h = args.history
    headers = ["metric", "test", "layout", "sess", "in-run", "drift", "A/A real", "false-fail @1", "MDR @1",
               f"false-fail @{h}", f"MDR @{h}"]
    rows: list[list[str]] = []
    order = sorted(entries.values(), key=lambda e: (e.fingerprint, e.entry_id.split("[")[0], e.layout))
    for metric in args.metrics:
        for e in order:
            sessions = [s[metric] for s in e.sessions if s.get(metric)]
            if not sessions:
                continue
            noise = estimate(sessions, config.noise_floor)
            fails, pairs = real_aa(metric, sessions, config)
            cells = [SHORT.get(metric, metric), e.entry_id.split("[")[0], e.layout, str(noise.sessions),
                     _pct(noise.in_run), _pct(noise.drift), f"{fails}/{pairs}" if pairs else "-"]
            star = "*" if noise.drift is None else ""
            for hist in (1, h):
                ff = fail_rate(metric, 0.0, noise, hist, config, args.trials, args.seed)
                m = mdr(metric, noise, hist, config, args.trials, args.seed + 1)
                cells += [_pct(ff, 2), (">95%" if m is None else _pct(m)) + star]
            rows.append(cells)
    if args.markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
        for r in [headers, *rows]:
            print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(f"({time.perf_counter() - t0:.0f}s; * one session: drift unknown, taken as 0, so the MDR is a lower bound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
