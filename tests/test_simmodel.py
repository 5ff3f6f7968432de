"""The sim's roofline model and continuous-batching scheduler."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_mgpu.errors import SimError, SimOptionError
from pytest_mgpu.models import BUILTIN_DIR
from pytest_mgpu.models.sizes import ModelShape
from pytest_mgpu.sim.model import GPU_PROFILES, PerfModel, SimOptions
from pytest_mgpu.sim.scheduler import Scheduler, SimRequest, simulate, throughput

LLAMA7B = ModelShape.from_dir(BUILTIN_DIR / "llama-2-7b")
TINY = ModelShape.from_dir(BUILTIN_DIR / "tiny-llama")


def perf(tp: int = 1, pp: int = 1, mem: float | None = None, **opts: object) -> PerfModel:
    return PerfModel(LLAMA7B, tp, pp, mem, SimOptions(**opts))  # type: ignore[arg-type]


# --- model shape -------------------------------------------------------------------------------


def test_llama7b_shape_from_config() -> None:
    assert 6.7e9 < LLAMA7B.param_count < 6.8e9  # Llama-2-7b has 6.74B parameters
    assert LLAMA7B.kv_bytes_per_token == 2 * 32 * 4096 * 2  # K and V, 32 layers, fp16
    assert 13.4e9 < LLAMA7B.weight_bytes < 13.6e9
    assert TINY.dtype_bytes == 2 and TINY.head_dim == 64


def test_tp_and_pp_split_weights_and_kv() -> None:
    one, tp2, pp2 = perf(), perf(tp=2), perf(pp=2)
    assert tp2.weight_bytes_per_gpu < 0.51 * one.weight_bytes_per_gpu
    assert tp2.kv_bytes_per_token_gpu * 2 == one.kv_bytes_per_token_gpu
    assert pp2.kv_bytes_per_token_gpu * 2 == one.kv_bytes_per_token_gpu
    assert tp2.kv_tokens > 10 * one.kv_tokens  # 13.5 GB of weights leave TP=1 little KV room


def test_model_too_large_is_a_clear_error() -> None:
    with pytest.raises(SimError, match="does not fit.*use more tensor/pipeline parallelism"):
        perf(mem=12)
    big = ModelShape("llama-70b", 80, 8192, 28672, 64, 8, 32000)
    with pytest.raises(SimError, match="does not fit"):
        PerfModel(big, 1, 1)
    assert PerfModel(big, 4, 1, options=SimOptions(gpu="h100-80gb")).kv_tokens > 0


def test_bad_layout_and_max_model_len() -> None:
    with pytest.raises(SimError, match="does not divide"):
        perf(tp=3)
    with pytest.raises(SimError, match="max_model_len=4096 is larger"):
        perf(max_model_len=4096)
    assert perf().max_model_len == perf().kv_tokens < 4096  # capped to the cache by default


# --- the seed article's results come out of the model ----------------------------------------


def test_tp2_beats_tp1_per_gpu_on_v100() -> None:
    t1 = throughput(perf(), 200, 128, 128)["output_throughput_per_gpu"]
    t2 = throughput(perf(tp=2), 200, 128, 128)["output_throughput_per_gpu"]
    assert t2 > 1.5 * t1


def test_tp2_beats_pp2_per_gpu() -> None:
    tp = throughput(perf(tp=2), 200, 128, 128)["output_throughput_per_gpu"]
    pp = throughput(perf(pp=2), 200, 128, 128)["output_throughput_per_gpu"]
    assert tp > pp


def test_decode_is_memory_bound_and_sublinear_in_batch() -> None:
    p = perf(tp=2)
    times = [p.decode_step_time(b, 200) for b in (1, 2, 4, 8, 16, 32)]
    assert all(a < b for a, b in zip(times, times[1:]))
    assert all(b < 1.2 * a for a, b in zip(times, times[1:]))  # doubling the batch: far from 2x time


def test_prefill_turns_compute_bound() -> None:
    p = perf(tp=2)
    # 2048 prompt tokens cost much more than 16 decode tokens: the GEMMs become compute bound.
    assert p.prefill_time(2048) > 5 * p.decode_step_time(16, 0)


def test_tp_all_reduce_costs_time_and_grows_with_tp() -> None:
    assert perf().allreduce_s(1 << 20) == 0.0
    assert 0 < perf(tp=2).allreduce_s(1 << 20) < perf(tp=4).allreduce_s(1 << 20)


def test_profiles_order_by_speed() -> None:
    times = [PerfModel(LLAMA7B, 2, 1, None, SimOptions(gpu=g)).decode_step_time(32, 256)
             for g in ("v100-16gb", "a100-80gb", "h100-80gb", "h200-141gb")]
    assert times == sorted(times, reverse=True)
    assert set(GPU_PROFILES) >= {"v100-16gb", "a100-80gb", "h100-80gb", "h200-141gb", "instant"}


# --- scheduler -------------------------------------------------------------------------------


def test_simulate_counts_and_order() -> None:
    reqs = simulate(perf(tp=2), [0.0, 0.01, 0.02, 5.0], 128, [16, 32, 1, 8])
    assert [r.num_output for r in reqs] == [16, 32, 1, 8]
    for r in reqs:
        assert r.first_token is not None and r.finish is not None
        assert r.arrival < r.first_token <= r.finish
    assert reqs[2].tpot is None and reqs[0].tpot is not None


def test_small_cache_preempts_but_never_overflows() -> None:
    p = perf()  # ~2k tokens of KV
    sched_reqs = simulate(p, [0.0] * 40, 300, 200)
    assert all(r.num_output == 200 for r in sched_reqs)
    assert any(r.preemptions for r in sched_reqs)


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=25),
    ins=st.integers(1, 600),
    outs=st.lists(st.integers(1, 80), min_size=1, max_size=25),
    max_seqs=st.integers(1, 64),
    budget=st.integers(16, 2048),
)
def test_scheduler_invariants(gaps: list[float], ins: int, outs: list[int], max_seqs: int, budget: int) -> None:
    arrivals = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    out_lens = [outs[i % len(outs)] for i in range(len(gaps))]
    p = perf(max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    sched = Scheduler(p)
    reqs = [SimRequest(i, a, ins, o) for i, a, o in zip(range(len(arrivals)), arrivals, out_lens)]
    t, k = 0.0, 0
    while k < len(reqs) or sched.has_work:
        while k < len(reqs) and reqs[k].arrival <= t:
            sched.add(reqs[k])
            k += 1
        step = sched.plan(t)
        if step is None:
            t = reqs[k].arrival
            continue
        assert sum(n for _, n in step.items) <= budget
        assert len(sched.running) <= max_seqs
        assert 0 <= sched.free_blocks <= p.kv_blocks
        assert sum(r.blocks for r in sched.running) == p.kv_blocks - sched.free_blocks
        t += step.duration
        for r in sched.finish(step, t):
            assert r.first_token is not None and r.first_token > r.arrival
    assert [r.num_output for r in reqs] == out_lens
    assert sched.peak_blocks <= p.kv_blocks and sched.peak_running <= max_seqs
    assert sched.free_blocks == p.kv_blocks


@settings(max_examples=20, deadline=None)
# Speeds 0.25 .. 4.0 in quarters: hypothesis 6.83 (the floor, nox floors) intermittently failed its
# data_too_large health check on st.floats(0.25, 4.0) here (cause not pinned down; not seen since).
@given(speed=st.integers(1, 16).map(lambda k: k / 4), n=st.integers(1, 30))
def test_speed_scales_every_time(speed: float, n: int) -> None:
    base = simulate(perf(tp=2), [0.0] * n, 128, 32)
    fast = simulate(perf(tp=2, speed=speed), [0.0] * n, 128, 32)
    for a, b in zip(base, fast):
        assert b.finish == pytest.approx(a.finish / speed, rel=1e-9)


def test_speed_0_8_is_20_percent_slower_steps() -> None:
    p, slow = perf(tp=2), perf(tp=2, speed=0.8)
    a, b = Scheduler(p), Scheduler(slow)
    item = [(SimRequest(0, 0.0, 128, 16), 128)]
    assert b.duration(item) == pytest.approx(a.duration(item) / 0.8)


def test_noise_is_seeded_and_drawn_per_busy_period() -> None:
    arrivals = [0.0, 100.0, 200.0, 300.0]  # four separate busy periods
    runs = [simulate(perf(tp=2, noise=0.1, seed=s), arrivals, 64, 16) for s in (1, 1, 2)]
    ttfts = [[r.ttft for r in run] for run in runs]
    assert ttfts[0] == ttfts[1]  # same seed: identical
    assert ttfts[0] != ttfts[2]  # other seed: different
    assert len(set(ttfts[0])) == 4  # a fresh draw each time the server goes from idle to busy
    quiet = [r.ttft for r in simulate(perf(tp=2), arrivals, 64, 16)]
    assert max(quiet) == pytest.approx(min(quiet), rel=1e-9)
    assert max(ttfts[0]) / min(ttfts[0]) > 1.01


def test_noise_spread_matches_sigma() -> None:
    p = perf(tp=2, noise=0.05, seed=3)
    sched = Scheduler(p)
    factors = []
    for i in range(400):
        sched.add(SimRequest(i, 0.0, 8, 1))
        step = sched.plan(0.0)
        assert step is not None
        sched.finish(step, 0.0)
        factors.append(math.log(sched.factor))
    mean = sum(factors) / len(factors)
    sd = (sum((f - mean) ** 2 for f in factors) / len(factors)) ** 0.5
    assert abs(mean) < 0.015 and 0.04 < sd < 0.06


def test_zero_mode_has_no_delay() -> None:
    reqs = simulate(perf(tp=2, zero=True), [0.0] * 5, 128, 16)
    assert all(r.finish == 0.0 for r in reqs)


# --- options -----------------------------------------------------------------------------------


def test_options_parse_and_reject() -> None:
    o = SimOptions.parse({"speed": "0.8", "zero": "1", "max_num_seqs": "8", "gpu": "h100-80gb"})
    assert (o.speed, o.zero, o.max_num_seqs, o.gpu) == (0.8, True, 8, "h100-80gb")
    with pytest.raises(SimOptionError, match="unknown sim option 'bogus'; valid options: gpu, speed"):
        SimOptions.parse({"bogus": "1"})
    with pytest.raises(SimOptionError, match="speed"):
        SimOptions.parse({"speed": "0"})
    with pytest.raises(SimOptionError, match="unknown GPU profile"):
        SimOptions.parse({"gpu": "tpu"})
    with pytest.raises(SimOptionError, match="not a valid int"):
        SimOptions.parse({"max_num_seqs": "many"})
