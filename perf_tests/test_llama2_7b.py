"""The seed article's experiment: Llama-2-7B fp16, 128 tokens in / 128 out, on TP and PP layouts.

Six layouts of up to 4 GPUs (TP=1, 2, 4; PP=2, 4; TP=2 x PP=2), each at three loads: every
request at once (the largest batch the KV cache allows), Poisson arrivals at 32 requests/s (the
seed's load) and a single stream (latency without batching). ``test_llama2_7b_16gb.py`` repeats
the grid with each GPU capped at 16 GB, the seed's V100s. Run with ``pytest -m gpu perf_tests/``;
without a GPU the sim engine models the seed's 4 x V100-16GB. A layout that needs more GPUs than
are visible is skipped with the reason.
"""

import math

import pytest

# TTFT p50 moved by up to 11% between engine restarts on 4x H200 with nothing changed (A/A in
# docs/vllm.md), more than the 5% default, so it is gated at 12% here; throughput and TPOT stay at 5%.
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b"), pytest.mark.perf_tolerance(ttft_p50="12%")]

LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2)]  # (tp, pp)


def seed_layouts(fn):
    """One item per layout of the seed's grid."""
    for tp, pp in reversed(LAYOUTS):
        fn = pytest.mark.layout(tp=tp, pp=pp)(fn)
    return fn


@seed_layouts
def test_all_at_once(mgpu_bench):
    """Every request at once: the largest batch the KV cache allows (the throughput regime)."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=math.inf)
    assert result.valid, result.invalid


@seed_layouts
def test_poisson_32qps(mgpu_bench):
    """Poisson arrivals at 32 requests/s, the seed's load."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=32.0)
    assert result.valid, result.invalid


@seed_layouts
def test_single_stream(mgpu_bench):
    """One request at a time: latency (TTFT, TPOT) without batching."""
    # 40 requests: the smallest count whose TTFT p50 has a 95% CI (order statistics) within
    # +-5% at the per-request TTFT spread seen on 1x H100 (CV 12%); 8 gave +-15%.
    # benchmarks/ttft_samples.py prints the numbers, docs/gate.md explains them.
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=40, request_rate=math.inf,
                            max_concurrency=1, warmup_requests=1)
    assert result.valid, result.invalid
