"""The sim's predictions for layouts on one node and spread over several (docs/multinode.md).

    python benchmarks/sim_nodes.py                          # llama-2-7b on h100-80gb, 512 x 128/128, rate inf
    python benchmarks/sim_nodes.py --gpu v100-16gb --requests 1000

Each layout once with all its GPUs on one node, then over 2 (and 4) nodes where that divides its
GPUs: TP groups that span nodes all-reduce over the network (:data:`INTERNODE_GBS`), pipeline
stages on different nodes send their activations over it. The numbers come from the offline
scheduler (:func:`pytest_mgpu.sim.scheduler.throughput`): predictions, not measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_mgpu.errors import SimError  # noqa: E402
from pytest_mgpu.models import resolve_model  # noqa: E402
from pytest_mgpu.sim.model import INTERNODE_GBS, PerfModel, SimOptions, load_shape  # noqa: E402
from pytest_mgpu.sim.scheduler import throughput  # noqa: E402

LAYOUTS = [(2, 1), (1, 2), (4, 1), (2, 2), (1, 4), (8, 2)]


def nodes_table(model: str, gpu: str, requests: int, input_len: int, output_len: int) -> str:
    """A markdown table: per layout and node count, throughput, TTFT and TPOT, and the change from one node."""
    spec = load_shape(resolve_model(model).path)
    rows = ["| layout | GPUs | nodes | GPUs per node | TP spans nodes | PP sends across nodes | output tok/s | "
            "tok/s per GPU | vs one node | mean TTFT ms | mean TPOT ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tp, pp in LAYOUTS:
        one = None
        for nodes in (1, 2, 4):
            if (tp * pp) % nodes or nodes > tp * pp:
                continue
            try:
                perf = PerfModel(spec, tp, pp, None, SimOptions(gpu=gpu, nodes=nodes))
            except SimError as exc:
                rows.append(f"| tp{tp}-pp{pp} | {tp * pp} | {nodes} | does not fit: {str(exc)[:50]}... | | | | | | | |")
                break
            r = throughput(perf, requests, input_len, output_len)
            per = r["output_throughput_per_gpu"]
            one = one or per
            rows.append(
                f"| tp{tp}-pp{pp} | {tp * pp} | {nodes} | {perf.gpus_per_node} | {'yes' if perf.tp_spans_nodes else 'no'} | "
                f"{perf.pp_crossings} of {pp - 1} | {r['output_throughput']:.0f} | {per:.0f} | {per / one - 1:+.1%} | "
                f"{r['mean_ttft_ms']:.0f} | {r['mean_tpot_ms']:.2f} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="h100-80gb")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    print(f"{args.model} on {args.gpu} (inter-node {INTERNODE_GBS[args.gpu]:g} GB/s per GPU), {args.requests} "
          f"requests of {args.input_len} in / {args.output_len} out at rate inf\n")
    print(nodes_table(args.model, args.gpu, args.requests, args.input_len, args.output_len))


if __name__ == "__main__":
    main()
