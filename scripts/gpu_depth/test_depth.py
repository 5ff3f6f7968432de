"""Issue 12 on a GPU: a concurrency sweep and a single-stream run of Llama-2-7B at TP=1 with the
seed's 16 GB per-GPU cap, with GPU telemetry. Run by ``scripts/gpu_depth.sh`` (phase ``sweep``);
not part of ``perf_tests/`` (the sweep takes minutes on the sim in real time).

``MGPU_DEPTH_LAYOUTS=tp1`` (default) or ``tp1,tp2`` (a 2-GPU machine) picks the layouts;
``MGPU_DEPTH_MODEL`` the model (default llama-2-7b; tiny-llama for a smoke test on vLLM-CPU).
"""

import math
import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model(os.environ.get("MGPU_DEPTH_MODEL", "llama-2-7b"))]

LAYOUTS = {
    "tp1": pytest.mark.layout(tp=1, pp=1, gpu_mem_gb=16),
    "tp2": pytest.mark.layout(tp=2, pp=1, gpu_mem_gb=16),
}
CONCURRENCY = [int(c) for c in os.environ.get("MGPU_DEPTH_CONCURRENCY", "1,2,4,8,16,32,64").split(",")]


def with_layouts(fn):
    """The layouts named in MGPU_DEPTH_LAYOUTS."""
    for name in reversed(os.environ.get("MGPU_DEPTH_LAYOUTS", "tp1").split(",")):
        fn = LAYOUTS[name.strip()](fn)
    return fn


@with_layouts
def test_single_stream(mgpu_bench):
    """One request at a time: TPOT p50 against the decode floor (the roofline's efficiency)."""
    r = mgpu_bench.run(input_len=128, output_len=128, num_requests=8, request_rate=math.inf, max_concurrency=1,
                       warmup_requests=1)
    assert r.valid, r.invalid


@with_layouts
def test_sweep(mgpu_bench):
    """Concurrency 1..64, 128 in / 128 out: where throughput per GPU stops growing, and why."""
    sw = mgpu_bench.sweep(concurrency=CONCURRENCY, input_len=128, output_len=128, warmup_requests=2)
    print(f"\n{sw.id}: {sw.describe()}")
    assert all(p.valid for p in sw.points), [p.invalid for p in sw.points if not p.valid]
