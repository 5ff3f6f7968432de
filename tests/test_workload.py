"""Workload: arrival process as vLLM, deterministic prompts, and its serialised form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_mgpu.measure.workload import Workload, WorkloadError


def test_offsets_deterministic_by_seed() -> None:
    a = Workload(num_requests=50, request_rate=10.0, seed=1).arrival_offsets()
    assert a == Workload(num_requests=50, request_rate=10.0, seed=1).arrival_offsets()
    assert a != Workload(num_requests=50, request_rate=10.0, seed=2).arrival_offsets()


@pytest.mark.parametrize("burstiness", [0.3, 1.0, 4.0, math.inf])
def test_last_offset_at_n_over_rate(burstiness: float) -> None:
    w = Workload(num_requests=37, request_rate=5.0, burstiness=burstiness)
    off = w.arrival_offsets()
    assert len(off) == 37
    assert off[-1] == pytest.approx(37 / 5.0)
    assert all(b >= a for a, b in zip(off, off[1:]))
    assert off[0] > 0  # vLLM sleeps the first gap before the first request, too


def test_infinite_burstiness_is_constant_rate() -> None:
    off = Workload(num_requests=10, request_rate=4.0, burstiness=math.inf).arrival_offsets()
    assert np.allclose(np.diff(off), 0.25)


def test_poisson_gaps_are_exponential() -> None:
    rate = 20.0
    off = np.asarray(Workload(num_requests=4000, request_rate=rate, burstiness=1.0, seed=3).arrival_offsets())
    gaps = np.diff(np.concatenate([[0.0], off]))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)  # rescaled: exactly n/rate over n gaps
    # Exponential: coefficient of variation 1, median ln2/rate.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.08)
    assert np.median(gaps) == pytest.approx(math.log(2) / rate, rel=0.1)


def test_burstiness_changes_gap_spread() -> None:
    def cv(b: float) -> float:
        off = np.asarray(Workload(num_requests=3000, request_rate=10.0, burstiness=b).arrival_offsets())
        g = np.diff(off)
        return float(g.std() / g.mean())

    # gamma(shape=k): CV = 1/sqrt(k).
    assert cv(0.25) == pytest.approx(2.0, rel=0.15)
    assert cv(4.0) == pytest.approx(0.5, rel=0.15)


def test_inf_rate_sends_all_at_once() -> None:
    assert Workload(num_requests=9, request_rate=math.inf).arrival_offsets() == [0.0] * 9


def test_prompts_deterministic_distinct_in_vocab() -> None:
    w = Workload(input_len=64, vocab_size=1000, seed=5)
    p = w.prompts(20)
    assert p == w.prompts(20)
    assert len(p) == 20 and all(len(x) == 64 for x in p)
    assert len({tuple(x) for x in p}) == 20
    assert all(100 <= t < 1000 for x in p for t in x)
    warm = w.prompts(4, offset=1)
    assert not {tuple(x) for x in warm} & {tuple(x) for x in p}
    assert Workload(input_len=64, vocab_size=1000, seed=6).prompts(1) != p[:1]


def test_invalid_parameters_name_the_field() -> None:
    with pytest.raises(WorkloadError, match="input_len"):
        Workload(input_len=0)
    with pytest.raises(WorkloadError, match="request_rate"):
        Workload(request_rate=0.0)
    with pytest.raises(WorkloadError, match="max_concurrency"):
        Workload(max_concurrency=0)


def test_name() -> None:
    assert Workload(128, 64, 100, math.inf).name == "in128-out64-n100-qpsinf"
    assert Workload(128, 64, 100, 2.5, burstiness=0.5, max_concurrency=8).name == "in128-out64-n100-qps2.5-b0.5-c8"


@settings(max_examples=100, deadline=None)
@given(
    input_len=st.integers(1, 4096),
    output_len=st.integers(1, 4096),
    num_requests=st.integers(1, 10_000),
    rate=st.one_of(st.just(math.inf), st.floats(0.01, 1e4)),
    burstiness=st.floats(0.05, 20.0),
    conc=st.one_of(st.none(), st.integers(1, 1024)),
    seed=st.integers(0, 2**31),
)
def test_dict_round_trip(
    input_len: int, output_len: int, num_requests: int, rate: float, burstiness: float, conc: int | None, seed: int
) -> None:
    w = Workload(input_len, output_len, num_requests, rate, burstiness, conc, seed=seed)
    d = json.loads(json.dumps(w.to_dict()))  # through real JSON, as results are stored
    back = Workload.from_dict(d)
    assert back == w
    assert back.name == w.name
