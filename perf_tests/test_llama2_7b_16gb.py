"""The seed's memory-bound regime: the same grid with each GPU capped at 16 GB (a V100's memory).

With 12.6 GiB of fp16 weights, TP=1 has little room left for the KV cache on a 16 GB card;
splitting the model over two GPUs frees memory for a larger batch, which is where the seed's
per-GPU gain comes from. On larger cards the cap (``gpu_mem_gb=16``) reproduces that regime.
"""

import math

import pytest

# TTFT p50 moved by up to 11% between engine restarts on 4x H200 with nothing changed (A/A in
# docs/vllm.md), more than the 5% default, so it is gated at 12% here; throughput and TPOT stay at 5%.
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b"), pytest.mark.perf_tolerance(ttft_p50="12%")]

LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2)]  # (tp, pp)


def capped_layouts(fn):
    """One item per layout of the seed's grid, 16 GB per GPU."""
    for tp, pp in reversed(LAYOUTS):
        fn = pytest.mark.layout(tp=tp, pp=pp, gpu_mem_gb=16)(fn)
    return fn


@capped_layouts
def test_capped_all_at_once(mgpu_bench):
    """Every request at once with 16 GB per GPU: the batch is capped by the KV cache."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=math.inf)
    assert result.valid, result.invalid


@capped_layouts
def test_capped_poisson_32qps(mgpu_bench):
    """Poisson arrivals at 32 requests/s with 16 GB per GPU."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=32.0)
    assert result.valid, result.invalid


@capped_layouts
def test_capped_single_stream(mgpu_bench):
    """One request at a time with 16 GB per GPU."""
    # 40 requests: the smallest count whose TTFT p50 has a 95% CI (order statistics) within
    # +-5% at the per-request TTFT spread seen on 1x H100 (CV 12%); 8 gave +-15%.
    # benchmarks/ttft_samples.py prints the numbers, docs/gate.md explains them.
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=40, request_rate=math.inf,
                            max_concurrency=1, warmup_requests=1)
    assert result.valid, result.invalid
