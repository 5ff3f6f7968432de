"""GPU inventory without NVML, fingerprints, disjoint allocation and the engine environment."""

from __future__ import annotations

import pytest

from pytest_mgpu.engines.base import EngineAdapter, EngineSpec
from pytest_mgpu.gpus import GpuAllocator, GpuInfo, GpuInventory, normalise_name, query_inventory, wait_memory_back
from pytest_mgpu.layout import Layout
from pytest_mgpu.models import resolve_model


def test_no_nvml_is_a_normal_empty_inventory() -> None:
    inv = query_inventory()  # this machine has no NVIDIA driver
    assert inv.count == 0 and inv.fingerprint() == "cpu"
    assert inv.error and "NVML" in inv.error


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("NVIDIA H200", "nvidia-h200"),
        ("Tesla V100-SXM2-16GB", "nvidia-tesla-v100-sxm2-16gb"),
    ],
)
def test_fingerprint_normalises_names(name: str, expected: str) -> None:
    assert normalise_name(name) == expected
    inv = GpuInventory(gpus=[GpuInfo(i, name, 81559) for i in range(2)])
    assert inv.fingerprint() == f"{expected}-x2"


def test_allocator_hands_out_disjoint_sets() -> None:
    alloc = GpuAllocator([0, 1, 2, 3])
    a, b = alloc.acquire(2), alloc.acquire(1)
    assert a == [0, 1] and b == [2] and not set(a) & set(b)
    with pytest.raises(RuntimeError, match="needs 2 GPUs, 1 free"):
        alloc.acquire(2)
    alloc.release(a)
    assert alloc.acquire(2) == [0, 1]


def test_engine_environment_pins_its_gpus_and_keeps_nccl_safety(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    inv = GpuInventory(gpus=[GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559) for i in range(4)])
    spec = EngineSpec("sim", resolve_model("tiny-llama"), Layout(tp=2), env=(("NCCL_P2P_DISABLE", "1"),))
    env = EngineAdapter().environment(spec, [2, 3], inv)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["NCCL_P2P_DISABLE"] == "1"
    assert "SECRET_TOKEN" not in env


def test_wait_memory_back_without_gpus_returns_at_once() -> None:
    assert wait_memory_back({}, timeout_s=0.1) == {}


def test_memory_not_coming_back_is_an_engine_error_and_frees_the_slot(tmp_path) -> None:
    from pytest_mgpu.engines import RunningEngine
    from pytest_mgpu.errors import EngineError, GpuMemoryError
    from pytest_mgpu.run.engine_manager import EngineManager
    from pytest_mgpu.run.settings import Settings

    class LeakyAdapter(EngineAdapter):
        def stop(self, running, check_memory=True):  # type: ignore[no-untyped-def]
            raise GpuMemoryError("GPU memory did not come back within 120s after the engine stopped (GPU 0: +2048 MiB)")

    inv = GpuInventory(gpus=[GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559) for i in range(2)])
    settings = Settings(
        engine="vllm", engine_named=True, engine_options={}, engine_env={}, engine_python="python", model="tiny-llama",
        sim_gpu="v100-16gb", sim_gpus=4, start_timeout_s=1, request_timeout_s=1, log_dir=tmp_path, json_path=None,
        json_records=False, repeats=1, baseline_dir=tmp_path, update_baselines=False, confirm=True, report_md=None,
        benchmark_json=None,
    )
    manager = EngineManager(settings, inv)
    ids = manager.allocator.acquire(2)
    manager.current = RunningEngine(
        name="vllm", version="0", base_url="http://127.0.0.1:1", layout=Layout(tp=2),
        model=resolve_model("tiny-llama"), log_path=tmp_path / "engine.log", gpu_ids=ids,
    )
    manager.current_adapter = LeakyAdapter()
    with pytest.raises(EngineError, match=r"GPU 0: \+2048 MiB"):
        manager.stop_current()
    assert manager.current is None and manager.allocator.free == [0, 1]
