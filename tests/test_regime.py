"""The decode roofline, the card table and the knee rule (hypothesis on synthetic throughput curves)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_mgpu.cards import BY_KEY, CARDS, card_for_name, nvml_bandwidth_gbs
from pytest_mgpu.models import resolve_model
from pytest_mgpu.models.sizes import ModelShape
from pytest_mgpu.report.regime import SATURATION, Knee, Roofline, find_knee, is_single_stream, kv_cache_tokens, roofline
from pytest_mgpu.sim.model import GPU_PROFILES

LLAMA = resolve_model("llama-2-7b")


# --- cards ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,key",
    [
        ("NVIDIA H100 80GB HBM3", "h100-80gb"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200-141gb"), ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"), ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("Tesla V100-SXM2-16GB", "v100-16gb"),
        ("Tesla V100-SXM2-32GB", "v100-32gb"), ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"), ("NVIDIA A10G", "a10g"),
        ("NVIDIA A10", "a10"), ("Tesla T4", "t4"),
    ],
)
def test_nvml_names_map_to_cards(name: str, key: str) -> None:
    card = card_for_name(name)
    assert card is not None and card.key == key


def test_unknown_card_and_the_sim_profiles_come_from_the_one_table() -> None:
    assert card_for_name("NVIDIA GeForce RTX 4090") is None
    for key in ("v100-16gb", "a100-80gb", "h100-80gb", "h200-141gb"):
        p, c = GPU_PROFILES[key], BY_KEY[key]
        assert (p.mem_bw_gbs, p.memory_gib, p.fp16_tflops, p.link_gbs) == (c.mem_bw_gbs, c.memory_gib, c.fp16_tflops,
                                                                          c.link_gbs)
    assert len({c.key for c in CARDS}) == len(CARDS)


def test_nvml_bandwidth_is_twice_clock_times_bus_width() -> None:
    nv = FakeNvml([FakeGpu(name="NVIDIA Future", mem_clock_mhz=2619, bus_width=5120)])
    assert nvml_bandwidth_gbs(0, nv) == pytest.approx(3352.3, abs=0.1)  # the H100 SXM's 3.35 TB/s
    assert nvml_bandwidth_gbs(0, FakeNvml([FakeGpu()], fail_init=True)) is None


# --- roofline -------------------------------------------------------------------------------
def test_llama_7b_floor_per_layout_on_h100() -> None:
    shape = ModelShape.from_config(LLAMA.config)
    tp1 = roofline(LLAMA, 1, 1, card_key="h100-80gb")
    assert tp1 is not None and tp1.weight_bytes_per_gpu == shape.weight_bytes
    assert tp1.floor_ms == pytest.approx(shape.weight_bytes / 3350e9 * 1e3) and 3.9 < tp1.floor_ms < 4.1
    tp2 = roofline(LLAMA, 2, 1, card_key="h100-80gb")
    pp2 = roofline(LLAMA, 1, 2, card_key="h100-80gb")
    assert tp2 is not None and pp2 is not None
    assert tp2.floor_ms == pytest.approx(tp1.floor_ms / 2, rel=0.01)
    # A single stream passes both pipeline stages in turn: the floor stays about TP=1's.
    assert pp2.floor_ms == pytest.approx(tp1.floor_ms, rel=0.05) and pp2.pp == 2
    assert tp1.efficiency(tp1.floor_ms * 2) == pytest.approx(0.5) and tp1.efficiency(0) is None
    assert Roofline.from_dict(tp1.to_dict()) == tp1


def test_roofline_from_nvml_names_and_fallback() -> None:
    rl = roofline(LLAMA, 1, 1, gpu_names=["NVIDIA H200"], gpu_ids=[0])
    assert rl is not None and rl.card == "NVIDIA H200 SXM 141GB" and rl.hbm_gbs == 4800 and rl.source == "spec sheet"
    nv = FakeNvml([FakeGpu(name="NVIDIA Future", mem_clock_mhz=3000, bus_width=8192)])
    rl = roofline(LLAMA, 1, 1, gpu_names=["NVIDIA Future"], gpu_ids=[0], nvml=nv)
    assert rl is not None and rl.hbm_gbs == pytest.approx(6144.0) and rl.source.startswith("NVML")
    assert roofline(LLAMA, 1, 1) is None  # CPU: no card, no floor
    assert roofline(LLAMA, 1, 1, gpu_names=["NVIDIA Future"], gpu_ids=[0],
                    nvml=FakeNvml([FakeGpu()], fail_init=True)) is None


def test_single_stream_workloads() -> None:
    assert is_single_stream({"max_concurrency": 1, "num_requests": 8})
    assert is_single_stream({"max_concurrency": None, "num_requests": 1})
    assert not is_single_stream({"max_concurrency": 4, "num_requests": 8})


# --- the knee on synthetic curves -------------------------------------------------------------
def ideal(b: float, b_star: float) -> float:
    """Roofline throughput: b / max(T_mem, b * t_flop), with T_mem / t_flop = b_star."""
    return min(b, b_star)


def grid(b0: int, n: int) -> list[float]:
    return [float(b0 * 2**k) for k in range(n)]


@given(b0=st.sampled_from([1, 2, 4]), n=st.integers(3, 10), b_star=st.floats(0.5, 3000))
def test_knee_of_an_ideal_roofline_is_the_first_batch_past_90_percent(b0: int, n: int, b_star: float) -> None:
    xs = grid(b0, n)
    k = find_knee(xs, [ideal(x, b_star) for x in xs])
    past = [x for x in xs if x >= SATURATION * b_star]
    if not past:  # still below the knee at the largest batch
        assert k.kind == "no-knee" and k.batch == xs[-1]
        return
    assert k.batch == past[0]
    assert k.kind == {xs[0]: "compute-bound", xs[-1]: "no-knee"}.get(past[0], "memory-bound")
    if k.kind == "memory-bound":
        assert SATURATION * b_star <= k.batch < 2 * SATURATION * b_star  # within one doubling of the true knee


@given(b0=st.sampled_from([1, 2]), n=st.integers(4, 9), b_star=st.floats(2, 200),
       noise=st.lists(st.floats(-0.02, 0.02), min_size=9, max_size=9))
def test_two_percent_noise_moves_the_knee_by_at_most_one_step(b0: int, n: int, b_star: float,
                                                               noise: list[float]) -> None:
    xs = grid(b0, n)
    clean = find_knee(xs, [ideal(x, b_star) for x in xs])
    noisy = find_knee(xs, [ideal(x, b_star) * (1 + e) for x, e in zip(xs, noise)])
    assert clean.batch is not None and noisy.batch is not None
    assert abs(math.log2(noisy.batch / clean.batch)) <= 1


@given(t_mem=st.floats(1, 50), t_flop=st.floats(0.001, 1), n=st.integers(3, 10))
def test_smooth_roofline_knee_reaches_90_percent(t_mem: float, t_flop: float, n: int) -> None:
    """Step time T_mem + b * t_flop (no sharp corner): the knee is where 90% of the best is first reached."""
    xs = grid(1, n)
    ys = [x / (t_mem + x * t_flop) for x in xs]
    k = find_knee(xs, ys)
    assert k.batch is not None
    i = xs.index(k.batch)
    assert ys[i] >= SATURATION * max(ys) and (i == 0 or ys[i - 1] < SATURATION * max(ys))
    assert all(-1e-9 <= s <= 1 + 1e-9 for s in k.scaling)  # throughput never falls, never more than linear


def test_regime_sentences() -> None:
    xs = [1, 2, 4, 8, 16, 32]
    mem = find_knee(xs, [10, 20, 40, 80, 84, 85])
    assert mem.kind == "memory-bound" and mem.batch == 8
    assert mem.describe().startswith("memory-bound up to batch 8 (scaling per step 1.00, 1.00, 1.00, 0.07")
    comp = find_knee(xs, [80, 84, 85, 85, 86, 85])
    assert comp.kind == "compute-bound" and comp.describe().startswith("compute-bound: throughput is within 10%")
    grow = find_knee(xs, [1, 2, 4, 8, 16, 32])
    assert grow.kind == "no-knee" and "throughput still grows; sweep further" in grow.describe()
    assert find_knee([4], [1.0]).kind == "too-few-points"
    # The seed's case: the knee where the KV cache is full, not where compute takes over.
    kv = find_knee(xs, [10, 20, 40, 80, 84, 85], kv_seqs=9.0)
    assert kv.kv_limited and "the KV cache holds ~9 sequences" in kv.describe()
    assert "tensor parallelism" in kv.describe()
    roomy = find_knee(xs, [10, 20, 40, 80, 84, 85], kv_seqs=500.0)
    assert not roomy.kv_limited and "compute-bound beyond it" in roomy.describe()
    assert Knee("memory-bound", 8, (1.0,)).to_dict()["batch"] == 8


def test_kv_cache_tokens_from_engine_logs(tmp_path: Path) -> None:
    vllm = tmp_path / "v.log"
    vllm.write_text("INFO [kv_cache_utils.py:2327] GPU KV cache size: 262,144 tokens, Maximum concurrency ...\n")
    sim = tmp_path / "s.log"
    sim.write_text("[sim] starting: model=llama-2-7b ... kv_cache=1488 tokens (93 blocks; ...)\n")
    none = tmp_path / "n.log"
    none.write_text("nothing here\n")
    assert kv_cache_tokens(vllm) == 262_144 and kv_cache_tokens(sim) == 1488
    assert kv_cache_tokens(none) is None and kv_cache_tokens(tmp_path / "missing.log") is None


@given(st.lists(st.tuples(st.integers(1, 512), st.floats(0, 1e5)), min_size=0, max_size=12))
def test_find_knee_never_fails_on_any_curve(points: list[tuple[int, float]]) -> None:
    xs = [p[0] for p in points]
    assume(len(set(xs)) == len(xs))
    k = find_knee(xs, [p[1] for p in points])
    assert k.kind in ("memory-bound", "compute-bound", "no-knee", "too-few-points")
    assert k.batch is None or k.batch in xs


def _sweep_results(kv_tokens: int | None = 2304) -> list:
    from pytest_mgpu.judge.results import BenchResult, RepeatResult
    from pytest_mgpu.layout import Layout
    from pytest_mgpu.measure.workload import Workload
    from pytest_mgpu.report.sweep import sweep_info

    out = []
    for c, y in [(1, 100.0), (2, 200.0), (4, 390.0), (8, 760.0), (16, 800.0), (32, 810.0)]:
        wl = Workload(input_len=128, output_len=128, num_requests=4 * c, request_rate=math.inf, max_concurrency=c,
                      prompt="text")
        r = BenchResult(nodeid="t.py::test_s[tp1-pp1]", test_name="test_s[tp1-pp1]", module="t.py", workload=wl,
                        layout=Layout(), engine="vllm", engine_version="0.26.0", model="llama-2-7b")
        r.repeats = [RepeatResult(summary={"output_throughput_per_gpu": y, "output_throughput": y, "tpot_p50": 5.0 + c / 8,
                                           "ttft_p50": 10.0})]
        r.sweep = sweep_info("sweep-concurrency", "concurrency", float(c), kv_tokens)
        out.append(r)
    return out


def test_sweeps_are_rebuilt_from_results_and_name_the_kv_limit() -> None:
    from pytest_mgpu.report.analysis import sweep_sections
    from pytest_mgpu.report.sweep import group_sweeps

    (sw,) = group_sweeps(_sweep_results())
    assert sw.xs == [1, 2, 4, 8, 16, 32] and sw.kv_seqs == 9.0
    assert sw.knee.kind == "memory-bound" and sw.knee.batch == 8 and sw.knee.kv_limited
    lines = [text for _, text in sweep_sections(_sweep_results())]
    assert lines[0] == "sweep test_s[tp1-pp1]::sweep-concurrency (vllm, tp1-pp1, concurrency)"
    assert any(line.startswith("c=8 ") and "0.963" in line for line in lines)
    assert lines[-1].startswith("regime: memory-bound up to batch 8") and "KV cache holds ~9 sequences" in lines[-1]


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pytest_mgpu.report.sweep import group_sweeps, plot_file_name, plot_sweep

    (sw,) = group_sweeps(_sweep_results())
    path = plot_sweep(sw, tmp_path / plot_file_name(sw))
    assert path.name == "test_s_tp1-pp1_sweep-concurrency.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
