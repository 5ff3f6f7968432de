"""Nothing measured must not pass (issue 8): a missing engine stops the run before any test, and a
session whose perf tests measured nothing fails, saying so; skips the user asked for stay skips."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PERF = """
import os, pytest

@pytest.mark.model("tiny-llama")
def test_serve(mgpu_bench):
    open("ran.txt", "a").write("x")
    mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"), warmup_requests=0)

def test_plain():
    open("ran.txt", "a").write("x")
"""

#: A machine with two GPUs, as NVML would report them (nothing here touches a real GPU).
FAKE_GPUS = """
import pytest_mgpu.gpus as gpus
from pytest_mgpu.gpus import GpuInfo, GpuInventory

def _two_gpus():
    return GpuInventory(gpus=[GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559) for i in range(2)], driver="550.0")

gpus.query_inventory = _two_gpus
try:
    import pytest_mgpu.run.session as _session
    if hasattr(_session, "query_inventory"):  # the plugin before issue 8 imported it by name
        _session.query_inventory = _two_gpus
except ImportError:
    pass
"""


def test_named_engine_missing_is_a_usage_error_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF)
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "trtllm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mgpu-engine trtllm cannot run: TensorRT-LLM*is not installed for *pip install tensorrt-llm*"
            "--mgpu-engine-python*. Or choose another engine (--mgpu-engine sim or --mgpu-engine vllm; sim needs "
            "no GPU), or make it optional with --mgpu-engine 'trtllm?' to skip its tests"
        ]
    )
    assert not (pytester.path / "ran.txt").exists()  # no test ran, not even the plain one


def test_default_vllm_missing_on_a_gpu_machine_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """On a GPU machine the default engine is vLLM: where it is not installed, the run stops (it used to skip, green)."""
    pytester.makeconftest(FAKE_GPUS)
    pytester.makepyfile(test_perf=PERF)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # the fake NVML stays in that process
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: the default engine vllm (2 GPU(s) found; no --mgpu-engine given) cannot run: vLLM is not installed "
            "for *; install it *--mgpu-engine-python=VENV/bin/python. Or choose another engine (*--mgpu-engine sim*)*"
        ]
    )
    assert not (pytester.path / "ran.txt").exists()


def test_optional_engine_missing_skips_its_tests_and_nothing_measured_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF)
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "trtllm?", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "mgpu: no result was measured: 1 test uses mgpu_bench (skipped 1); skipped because: optional engine trtllm? missing*",
            "SKIPPED * optional engine trtllm? missing: TensorRT-LLM*is not installed*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_every_perf_test_skipped_for_lack_of_gpus_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_big="""
        import pytest

        @pytest.mark.layout(tp=8)
        @pytest.mark.model("llama-2-7b")
        def test_serve(mgpu_bench):
            mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "sim", "-rs")
    result.assert_outcomes(skipped=1)  # the skip stays a skip ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... but a green run with nothing measured is not
    result.stdout.fnmatch_lines(
        ["mgpu: no result was measured: 1 test uses mgpu_bench (skipped 1); skipped because: needs 8 sim GPUs, 4 visible*"]
    )


def test_perf_test_that_measures_nothing_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_none="def test_serve(mgpu_bench):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "sim", "--mgpu-engine-opt", "zero=1")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["mgpu: no result was measured: 1 test uses mgpu_bench (passed 1)*"])


def test_a_run_that_measured_something_passes_with_its_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mixed="""
        import pytest

        @pytest.mark.layout(tp=1)
        @pytest.mark.layout(tp=8)
        @pytest.mark.model("llama-2-7b")
        def test_serve(mgpu_bench):
            mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"), warmup_requests=0)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "sim", "--mgpu-engine-opt", "zero=1")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "no result was measured" not in result.stdout.str()


def test_collect_only_measures_nothing_and_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF)
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "sim", "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    assert "no result was measured" not in result.stdout.str()


def test_layout_only_tests_need_no_engine(pytester: pytest.Pytester) -> None:
    """Tests that only read ``mgpu_layout`` start no engine, so a missing engine does not stop them."""
    pytester.makepyfile(test_lay="def test_layout(mgpu_layout):\n    assert mgpu_layout.tp == 1\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine", "trtllm")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
