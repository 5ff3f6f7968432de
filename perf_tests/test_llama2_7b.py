"""The seed article's experiment: Llama-2-7B, 128 in / 128 out, TP and PP layouts on up to 4 GPUs.

Run with ``pytest -m gpu perf_tests/``. Without a GPU the sim engine models the seed's V100s.
"""

import math

import pytest

# TTFT p50 moved by up to 11% between engine restarts on 4x H200 with nothing changed (A/A in
# docs/vllm.md), more than the 5% default, so it is gated at 12% here; throughput and TPOT stay at 5%.
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b"), pytest.mark.perf_tolerance(ttft_p50="12%")]

LAYOUTS = [
    pytest.mark.layout(tp=1, pp=1),
    pytest.mark.layout(tp=2, pp=1),
    pytest.mark.layout(tp=1, pp=2),
    pytest.mark.layout(tp=4, pp=1),
    pytest.mark.layout(tp=2, pp=2),
]


def with_layouts(fn):
    """Apply every layout of the seed's experiment to a test."""
    for mark in reversed(LAYOUTS):
        fn = mark(fn)
    return fn


@with_layouts
def test_poisson_32qps(mgpu_bench):
    """Poisson arrivals at 32 requests/s, as in the seed."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=32.0)
    assert result.valid, result.invalid


@with_layouts
def test_all_at_once(mgpu_bench):
    """Every request at once: the largest batch the KV cache allows (throughput regime)."""
    result = mgpu_bench.run(input_len=128, output_len=128, num_requests=256, request_rate=math.inf)
    assert result.valid, result.invalid


@pytest.mark.layout(tp=1, pp=1)
@pytest.mark.layout(tp=2, pp=1)
@pytest.mark.layout(tp=4, pp=1)
def test_single_stream(mgpu_bench):
    """One request at a time: pure latency (TTFT, TPOT) without batching."""
    result = mgpu_bench.run(
        input_len=128, output_len=128, num_requests=8, request_rate=math.inf, max_concurrency=1,
        warmup_requests=1,
    )
    assert result.valid, result.invalid
