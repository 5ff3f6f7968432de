"""summarize() and invalid_reason() against hand computation and invariances (vLLM definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_mgpu.measure.metrics import (
    LATENCY_METRICS,
    LATENCY_STATS,
    RequestRecord,
    invalid_reason,
    latency_keys,
    summarize,
)


def rec(start: float, chunks: list[float], out: int | None = None, prompt: int = 4, error: str | None = None) -> RequestRecord:
    return RequestRecord(
        prompt_len=prompt, expected_output_len=out or len(chunks), start=start, chunk_times=list(chunks),
        end=(chunks[-1] if chunks else start), output_tokens=len(chunks) if out is None else out, error=error,
    )


def test_hand_computed_two_requests() -> None:
    # Request A: sent at 0, chunks at 1.0, 1.5, 2.5 (3 tokens). Request B: sent at 1, chunks at 1.2, 2.0 (2 tokens).
    a = rec(0.0, [1.0, 1.5, 2.5])
    b = rec(1.0, [1.2, 2.0])
    s = summarize([a, b], num_gpus=2, dispatch_start=0.0)
    assert s["completed"] == 2 and s["failed"] == 0
    assert s["duration_s"] == pytest.approx(2.5)
    assert s["total_output_tokens"] == 5 and s["total_input_tokens"] == 8
    assert s["output_throughput"] == pytest.approx(5 / 2.5)
    assert s["total_token_throughput"] == pytest.approx(13 / 2.5)
    assert s["request_throughput"] == pytest.approx(2 / 2.5)
    assert s["output_throughput_per_gpu"] == pytest.approx(1.0)
    # TTFT: 1.0 s and 0.2 s.
    assert s["ttft_mean"] == pytest.approx(600.0)
    assert s["ttft_p50"] == pytest.approx(600.0)
    # TPOT: A (2.5-1.0)/2 = 0.75 s, B (1.0-0.2)/1 = 0.8 s -> each request weighs the same.
    assert s["tpot_mean"] == pytest.approx(775.0)
    # ITL pooled per chunk: 0.5, 1.0, 0.8.
    assert s["itl_mean"] == pytest.approx(1000 * (0.5 + 1.0 + 0.8) / 3)
    assert s["itl_p50"] == pytest.approx(800.0)
    # E2EL: 2.5 and 1.0.
    assert s["e2el_mean"] == pytest.approx(1750.0)
    assert s["achieved_request_rate"] == pytest.approx(1.0)


def test_multi_token_chunks_itl_per_chunk_tpot_per_token() -> None:
    # Speculative decoding: 2 chunks carrying 5 tokens.
    r = rec(0.0, [0.1, 0.5], out=5)
    s = summarize([r], 1, 0.0)
    assert s["itl_mean"] == pytest.approx(400.0)
    assert s["tpot_mean"] == pytest.approx(100.0)


def test_single_token_request_has_no_tpot() -> None:
    assert rec(0.0, [0.3]).tpot is None
    s = summarize([rec(0.0, [0.3]), rec(0.0, [0.1, 0.2])], 1, 0.0)
    assert s["tpot_mean"] == pytest.approx(100.0)


def test_failed_requests_excluded() -> None:
    ok = rec(0.0, [1.0, 2.0])
    bad = rec(0.0, [0.5], error="HTTP 500")
    s = summarize([ok, bad], 1, 0.0)
    assert s["completed"] == 1 and s["failed"] == 1
    assert s["ttft_mean"] == pytest.approx(1000.0)
    assert s["total_output_tokens"] == 2


def test_all_keys_present_even_when_empty() -> None:
    s = summarize([], 1)
    for k in latency_keys():
        assert k in s and s[k] == 0.0
    assert len(latency_keys()) == len(LATENCY_METRICS) * len(LATENCY_STATS)


# ------------------------------------------------------------------------------ properties

_gap = st.floats(1e-4, 2.0, allow_nan=False, allow_infinity=False)


@st.composite
def records(draw: st.DrawFn) -> list[RequestRecord]:
    n = draw(st.integers(1, 6))
    out = []
    for _ in range(n):
        # On a 1 ms grid: distinct starts stay distinct after a shift (no 1e-300 s gaps).
        start = draw(st.integers(0, 5000)) / 1000
        gaps = draw(st.lists(_gap, min_size=1, max_size=6))
        chunks = list(start + np.cumsum(gaps))
        tokens = draw(st.integers(len(chunks), 3 * len(chunks)))
        out.append(rec(start, chunks, out=tokens, prompt=draw(st.integers(1, 64))))
    return out


def _latencies(s: dict[str, float]) -> dict[str, float]:
    return {k: s[k] for k in latency_keys()}


@settings(max_examples=60, deadline=None)
@given(recs=records())
def test_stats_match_numpy(recs: list[RequestRecord]) -> None:
    s = summarize(recs, 1)
    tpots = [(r.chunk_times[-1] - r.chunk_times[0]) / (r.output_tokens - 1) for r in recs if r.output_tokens > 1]
    itls = [b - a for r in recs for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    ttfts = [r.chunk_times[0] - r.start for r in recs]
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls)):
        arr = np.asarray(vals or [0.0]) * 1000
        assert s[f"{name}_p50"] == pytest.approx(float(np.median(arr)), rel=1e-9, abs=1e-9)
        assert s[f"{name}_p90"] == pytest.approx(float(np.percentile(arr, 90)), rel=1e-9, abs=1e-9)
        assert s[f"{name}_p99"] == pytest.approx(float(np.percentile(arr, 99)), rel=1e-9, abs=1e-9)
        assert s[f"{name}_std"] == pytest.approx(float(np.std(arr)), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(recs=records(), gpus=st.integers(1, 64))
def test_per_gpu_is_throughput_over_gpus(recs: list[RequestRecord], gpus: int) -> None:
    s = summarize(recs, gpus)
    assert s["output_throughput_per_gpu"] == pytest.approx(s["output_throughput"] / gpus, rel=1e-12)
    assert s["output_throughput"] == pytest.approx(summarize(recs, 1)["output_throughput"], rel=1e-12)


def _shift(r: RequestRecord, d: float, c: float = 1.0) -> RequestRecord:
    return RequestRecord(r.prompt_len, r.expected_output_len, (r.start + d) * c,
                         [(t + d) * c for t in r.chunk_times], (r.end + d) * c, r.output_tokens, r.error)


@settings(max_examples=60, deadline=None)
@given(recs=records(), d=st.floats(-1e3, 1e4))
def test_shift_changes_nothing(recs: list[RequestRecord], d: float) -> None:
    t0 = min(r.start for r in recs)
    a = summarize(recs, 2, t0)
    b = summarize([_shift(r, d) for r in recs], 2, t0 + d)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-6), k


@settings(max_examples=60, deadline=None)
@given(recs=records(), c=st.floats(0.01, 100.0))
def test_scaling_time_scales_latency_and_inverts_throughput(recs: list[RequestRecord], c: float) -> None:
    t0 = min(r.start for r in recs)
    a = summarize(recs, 1, t0)
    b = summarize([_shift(r, 0.0, c) for r in recs], 1, t0 * c)
    for k in latency_keys():
        assert b[k] == pytest.approx(a[k] * c, rel=1e-6, abs=1e-9), k
    for k in ("request_throughput", "output_throughput", "total_token_throughput", "output_throughput_per_gpu"):
        assert b[k] == pytest.approx(a[k] / c, rel=1e-6), k
    assume(math.isfinite(a["achieved_request_rate"]))
    assert b["achieved_request_rate"] == pytest.approx(a["achieved_request_rate"] / c, rel=1e-6)


# ------------------------------------------------------------------------------ validity


def test_invalid_reason() -> None:
    good = [rec(0.0, [0.1, 0.2, 0.3]) for _ in range(3)]
    assert invalid_reason(good, 3, 3) is None
    assert "2 of 3 requests were sent" in (invalid_reason(good[:2], 3, 3) or "")
    failed = good[:2] + [rec(0.0, [0.1], error="timeout after 5s")]
    reason = invalid_reason(failed, 3, 3) or ""
    assert "1 of 3 requests failed" in reason and "timeout after 5s" in reason
    no_chunk = good[:2] + [rec(0.0, [])]
    assert "no chunk received" in (invalid_reason(no_chunk, 3, 3) or "")
    short = good[:2] + [rec(0.0, [0.1, 0.2])]
    reason = invalid_reason(short, 3, 3) or ""
    assert "returned [2] output tokens" in reason and "expected exactly 3" in reason


def test_record_round_trip() -> None:
    r = rec(1.0, [1.5, 2.0], error=None)
    assert RequestRecord.from_dict(r.to_dict()) == r
