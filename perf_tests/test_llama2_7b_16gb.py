"""The seed's memory-bound regime: each GPU capped at 16 GB (a V100's memory), on any card.

With 12.6 GiB of fp16 weights, TP=1 has little room left for the KV cache; splitting the model
over two GPUs frees memory for a larger batch, which is where the seed's per-GPU gain comes from.
"""

import math

import pytest

# TTFT p50 moved by up to 11% between engine restarts on 4x H200 with nothing changed (A/A in
# docs/vllm.md), more than the 5% default, so it is gated at 12% here; throughput and TPOT stay at 5%.
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b"), pytest.mark.perf_tolerance(ttft_p50="12%")]


@pytest.mark.layout(tp=1, pp=1, gpu_mem_gb=16)
@pytest.mark.layout(tp=2, pp=1, gpu_mem_gb=16)
@pytest.mark.layout(tp=1, pp=2, gpu_mem_gb=16)
def test_capped_poisson_32qps(mgpu_bench):
    """Poisson arrivals at 32 requests/s with 16 GB per GPU."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=32.0)
    assert result.valid, result.invalid


@pytest.mark.layout(tp=1, pp=1, gpu_mem_gb=16)
@pytest.mark.layout(tp=2, pp=1, gpu_mem_gb=16)
@pytest.mark.layout(tp=1, pp=2, gpu_mem_gb=16)
def test_capped_all_at_once(mgpu_bench):
    """Every request at once with 16 GB per GPU: the batch is capped by the KV cache."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=math.inf)
    assert result.valid, result.invalid
