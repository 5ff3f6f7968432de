"""Check the sim's run-to-run noise model, which the gate's calibration relies on.

    python benchmarks/sim_noise.py                          # noise 0, 0.02, 0.05; 8 repeats each
    python benchmarks/sim_noise.py --noise 0.03 --repeats 12 --gpu a100-80gb

For each configured ``noise`` (the lognormal sigma of the per-busy-period drift) it starts the sim
server, runs the same short workload ``--repeats`` times through the real client
(:func:`pytest_mgpu.measure.client.run_workload` + :func:`pytest_mgpu.measure.metrics.summarize`), and prints the
observed run-to-run sigma of the gated metrics: the sample standard deviation (ddof=1) of their
natural logs, with a 90% chi-square confidence interval, and a robust sigma (1.4826 x MAD of the
logs) that one run stalled by a busy machine does not inflate. At ``noise=0`` it shows the floor that
the client, the event loop and this machine add. A run at rate inf keeps the server busy from the
first measured request to the last, so each repeat sees exactly one drift draw.

``--clock wall`` (the default) times requests by this host's clock, as a plain client of the sim
does; ``--clock model`` times them by the sim's modelled stamps at the plugin's time scale (50), as
``mgpu_bench`` does on the sim: the noise the plugin's own tests see.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pytest_mgpu.engines.base import EngineSpec  # noqa: E402
from pytest_mgpu.engines.sim import SimAdapter  # noqa: E402
from pytest_mgpu.gpus import GpuInventory  # noqa: E402
from pytest_mgpu.layout import Layout  # noqa: E402
from pytest_mgpu.measure.client import run_workload  # noqa: E402
from pytest_mgpu.measure.metrics import invalid_reason, summarize  # noqa: E402
from pytest_mgpu.measure.workload import Workload  # noqa: E402
from pytest_mgpu.models import resolve_model  # noqa: E402
from pytest_mgpu.run.options import DEFAULT_SIM_TIME_SCALE  # noqa: E402

METRICS = ("output_throughput_per_gpu", "ttft_p50", "tpot_p50")


def log_sigma(values: list[float]) -> tuple[float, float, float]:
    """Sample std of ``log(values)`` (ddof=1) and its 90% chi-square confidence interval."""
    from scipy.stats import chi2

    logs = np.log(np.asarray(values, dtype=float))
    n = len(logs)
    s = float(np.std(logs, ddof=1))
    lo = s * math.sqrt((n - 1) / chi2.ppf(0.95, n - 1))
    hi = s * math.sqrt((n - 1) / chi2.ppf(0.05, n - 1))
    return s, lo, hi


def mad_sigma(values: list[float]) -> float:
    """Robust sigma of ``log(values)``: 1.4826 x median absolute deviation (ignores a stalled run)."""
    logs = np.log(np.asarray(values, dtype=float))
    return float(1.4826 * np.median(np.abs(logs - np.median(logs))))


def busy_periods(base_url: str) -> int:
    """How many drift draws the server has made so far."""
    with urllib.request.urlopen(base_url + "/sim/info", timeout=10) as resp:
        return int(json.loads(resp.read())["busy_periods"])


def measure(noise: float, args: argparse.Namespace, workload: Workload) -> tuple[dict[str, list[float]], int]:
    """Repeat ``workload`` on a fresh sim with ``noise``; per metric, the value of each repeat."""
    model = resolve_model(args.model)
    layout = Layout(tp=args.tp, pp=args.pp)
    opts = {**dict(kv.split("=", 1) for kv in args.opt), "gpu": args.gpu, "noise": f"{noise:g}",
            "seed": str(args.seed)}
    if args.clock == "model":
        opts.setdefault("time_scale", f"{DEFAULT_SIM_TIME_SCALE:g}")
    spec = EngineSpec("sim", model, layout, options=tuple(sorted(opts.items())), python=sys.executable)
    engine = SimAdapter()
    with tempfile.TemporaryDirectory() as tmp:
        eng = engine.start(spec, GpuInventory(), [], Path(tmp), start_timeout_s=60)
        try:
            values: dict[str, list[float]] = {m: [] for m in METRICS}
            draws0 = busy_periods(eng.base_url)
            for _ in range(args.repeats):
                out = run_workload(eng.base_url, model.name, workload, timeout_s=300,
                                   sim_clock=args.clock == "model")
                why = invalid_reason(out.records, workload.num_requests, workload.output_len)
                if why:
                    raise SystemExit(f"noise={noise:g}: invalid run: {why}")
                summary = summarize(out.records, layout.tp * layout.pp, out.dispatch_start)
                for m in METRICS:
                    values[m].append(summary[m])
                if args.verbose:
                    print(f"  noise={noise:g}: " + " ".join(f"{m}={summary[m]:.4g}" for m in METRICS),
                          file=sys.stderr, flush=True)
            draws = busy_periods(eng.base_url) - draws0
        finally:
            engine.stop(eng)
    return values, draws


def main(argv: list[str] | None = None) -> int:
    """Run the check and print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.05], help="Configured sigmas")
    p.add_argument("--repeats", type=int, default=8, help="Runs per sigma")
    p.add_argument("--model", default="llama-2-7b", help="Model name or directory")
    p.add_argument("--gpu", default="h100-80gb", help="Sim GPU profile")
    p.add_argument("--tp", type=int, default=1, help="Tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="Pipeline parallel size")
    p.add_argument("--requests", type=int, default=64, help="Measured requests per run")
    p.add_argument("--input-len", type=int, default=128, help="Prompt tokens")
    p.add_argument("--output-len", type=int, default=64, help="Output tokens")
    p.add_argument("--rate", type=float, default=math.inf, help="Request rate, requests/s (default inf)")
    p.add_argument("--warmup", type=int, default=None,
                   help="Warm-up requests per run (default: as many as --requests, so that every measured "
                        "request reuses an open connection and all arrive within a few ms)")
    p.add_argument("--seed", type=int, default=1, help="Seed of the sim's noise")
    # One prefill step takes every request that arrived after the first step: the median TTFT then
    # no longer jumps between step boundaries with the arrival timing (a 7% floor at the default 2048).
    p.add_argument("--opt", action="append", default=["max_num_batched_tokens=8192"], metavar="KEY=VALUE",
                   help="Extra sim option, repeatable (see docs/sim.md); default max_num_batched_tokens=8192")
    p.add_argument("--clock", choices=("wall", "model"), default="wall",
                   help="Time by this host's clock (a plain client) or the sim's modelled stamps (mgpu_bench)")
    p.add_argument("-v", "--verbose", action="store_true", help="Print every repeat's values")
    args = p.parse_args(argv)
    bad = [kv for kv in args.opt if "=" not in kv]
    if bad:
        p.error(f"--opt {bad[0]!r} is not KEY=VALUE")
    if args.repeats < 3:
        p.error(f"--repeats {args.repeats} is too few to estimate a spread; use at least 3")
    wl = Workload(input_len=args.input_len, output_len=args.output_len, num_requests=args.requests,
                  request_rate=args.rate,
                  warmup_requests=args.requests if args.warmup is None else args.warmup)
    print(f"# {args.model} tp{args.tp}-pp{args.pp} on {args.gpu}, workload {wl.name}, "
          f"{wl.warmup_requests} warm-ups, {args.repeats} repeats per sigma, seed {args.seed}, "
          f"options {' '.join(args.opt)}, {args.clock} clock", flush=True)
    rows = ["| configured σ | metric | median | observed σ: std of log (ddof=1) | its 90% CI | robust σ (MAD) "
            "| expected √(σ² + floor²) | drift draws per run |",
            "|---|---|---|---|---|---|---|---|"]
    floor: dict[str, float] = {}
    t0 = time.perf_counter()
    for noise in sorted(args.noise):
        values, draws = measure(noise, args, wl)
        for m in METRICS:
            s, lo, hi = log_sigma(values[m])
            if noise == 0:
                floor[m] = s  # what the client, event loop and machine add with no modelled noise
            expected = f"{math.hypot(noise, floor[m]):.4f}" if m in floor else "—"
            rows.append(f"| {noise:g} | {m} | {np.median(values[m]):.4g} | {s:.4f} | {lo:.4f} – {hi:.4f} | "
                        f"{mad_sigma(values[m]):.4f} | {expected} | {draws / args.repeats:.3g} |")
        print(f"noise={noise:g} done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
