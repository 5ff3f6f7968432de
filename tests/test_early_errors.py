"""Errors that arrive early and say what happened (issue 8): bad marks, options, model configs,
workload arguments, engine start failures, each reported once and by name."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

import pytest

from pytest_mgpu.errors import EngineError, ModelError, first_error_block, root_cause
from pytest_mgpu.models import resolve_model

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider"]


@pytest.fixture(autouse=True)
def _terminal_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count messages as a terminal shows them: under CI (or BUILD_NUMBER) pytest prints the short
    summary untruncated, repeating each error's whole message there."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


def _no_chain(result: pytest.RunResult) -> None:
    assert "During handling of the above exception" not in result.stdout.str()


# --- several bad marks in one module ---------------------------------------------------------


def test_every_bad_mark_is_reported_by_name_and_the_good_tests_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marks="""
        import pytest

        @pytest.mark.layout(tp=0)
        def test_zero(mgpu_layout):
            pass

        @pytest.mark.layout(tp=3)
        @pytest.mark.model("llama-2-7b")
        def test_three(mgpu_layout):
            pass

        @pytest.mark.perf_tolerance(tpot_p50="lots")
        @pytest.mark.engine_opts(max_num_seqs=[1, 2])
        def test_two_problems(mgpu_layout):
            pass

        @pytest.mark.layout(tp=2)
        def test_good_mgpu(mgpu_layout):
            pass

        def test_good_plain():
            pass
        """
    )
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(passed=2, errors=3)
    for pattern in (
        "test_marks.py::test_zero: tp=0 is not a positive int",
        "test_marks.py::test_three: layout tp3-pp1: tp=3 does not divide the 32 attention heads of llama-2-7b",
        "test_marks.py::test_two_problems: engine_opts() values must be scalars (str, int, float or bool), got max_num_seqs=[[]1, 2[]]*",
        "test_marks.py::test_two_problems: perf_tolerance: *'lots'*",
    ):
        assert len([line for line in result.stdout.lines if fnmatch.fnmatch(line, pattern)]) == 1, pattern
    _no_chain(result)
    result.stdout.fnmatch_lines(["ERROR test_marks.py::test_zero*", "ERROR test_marks.py::test_three*"])


def test_a_bad_mark_is_still_selected_by_its_marks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sel="""
        import pytest

        @pytest.mark.gpu
        @pytest.mark.layout(tp=0)
        def test_bad(mgpu_layout):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest(*SIM, "-m", "gpu")
    result.assert_outcomes(errors=1, deselected=1)


@pytest.mark.parametrize(
    "opts",
    ["x=[1]", "x={'a': 1}", "x=None", "x=float('nan')"],
)
def test_engine_opts_values_must_be_scalars(pytester: pytest.Pytester, opts: str) -> None:
    pytester.makepyfile(
        test_opts=f"""
        import pytest

        @pytest.mark.engine_opts({opts})
        def test_opt(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["test_opts.py::test_opt: engine_opts() values must be scalars*"])


def test_engine_opts_the_sim_does_not_know_name_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_opts="""
        import pytest

        @pytest.mark.engine_opts(spede=2)
        def test_typo(mgpu_layout):
            pass

        def test_ok(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["test_opts.py::test_typo[[]tp1-pp1[]]: engine_opts: unknown sim option 'spede'; valid options: *"])


# --- options checked before any engine starts ------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mgpu-baseline-dir", "afile"], "--mgpu-baseline-dir */afile is a file, not a directory*"),
        (["--mgpu-log-dir", "afile"], "--mgpu-log-dir */afile is a file, not a directory*"),
        (["--mgpu-log-dir", "afile/logs"], "--mgpu-log-dir */afile/logs cannot be created: */afile is a file*"),
        (["--mgpu-json", "afile/out.json"], "--mgpu-json */afile/out.json cannot be written: its directory */afile is a file*"),
        (["--mgpu-report-md", "adir"], "--mgpu-report-md */adir is a directory; give a file name"),
        (["--mgpu-benchmark-json", "/proc/mgpu-bench.json"], "--mgpu-benchmark-json /proc/mgpu-bench.json cannot be written*"),
        (["--mgpu-sim-gpu", "h300-1tb"], "--mgpu-sim-gpu 'h300-1tb' is not a sim GPU profile; choose one of: v100-16gb, *"),
        (["--mgpu-engine-opt", "spede=2"], "--mgpu-engine-opt: unknown sim option 'spede'; valid options: *speed*"),
        (["--mgpu-engine-opt", "max_num_seqs=1.5"], "--mgpu-engine-opt: sim option max_num_seqs='1.5' is not a valid int"),
        (["--mgpu-engine-opt", "clock=fast"], "--mgpu-engine-opt: sim option clock='fast' must be model or wall"),
    ],
)
def test_bad_options_are_usage_errors_before_any_engine_starts(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    (pytester.path / "afile").write_text("not a directory\n")
    (pytester.path / "adir").mkdir()
    pytester.makepyfile(
        test_perf="""
        def test_serve(mgpu_bench):
            mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"), warmup_requests=0)
        """
    )
    result = pytester.runpytest(*SIM, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert not (pytester.path / ".mgpu").exists()  # no engine was started, no log written


def test_unwritable_output_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """An existing directory that refuses new files, for any user: CI runs as root."""
    ro = pytester.path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(ro, os.W_OK):  # root ignores permission bits; procfs refuses new files even to root
        ro = Path("/proc/self")
        assert ro.is_dir() and not os.access(ro, os.W_OK)
    pytester.makepyfile(test_x="def test_x(mgpu_layout):\n    pass\n")
    result = pytester.runpytest(*SIM, "--mgpu-json", str(ro / "out.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --mgpu-json {ro}/out.json cannot be written: its directory {ro} "
                                 f"cannot be created or written: {ro} is not writable*"])


def test_sim_options_are_checked_when_the_sim_is_chosen_for_lack_of_gpus(pytester: pytest.Pytester) -> None:
    """No --mgpu-engine and no GPU: the sim is chosen once NVML has answered, then its options are checked."""
    pytester.makepyfile(test_x="def test_x(mgpu_bench):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-engine-opt", "spede=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mgpu-engine-opt: unknown sim option 'spede'*"])


# --- broken model configs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"num_attention_heads": 32, "num_hidden', "is not valid JSON (*); is it truncated?*"),
        ("{}", "lacks num_attention_heads, num_hidden_layers, hidden_size, vocab_size*"),
        ("[1, 2, 3]", "holds a JSON list, not an object of model settings*"),
        ('{"num_attention_heads": "32", "num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 100}',
         "has num_attention_heads='32'; these must be positive integers"),
        ("", "is not valid JSON*"),
    ],
)
def test_broken_model_config_is_an_error_naming_model_and_file(
    pytester: pytest.Pytester, text: str, message: str
) -> None:
    model = pytester.path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text(text)
    pytester.makepyfile(
        test_model="""
        import pytest

        @pytest.mark.model("broken-model")
        def test_broken(mgpu_bench):
            pass

        @pytest.mark.model("tiny-llama")
        def test_fine(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines([f"test_model.py::test_broken: model 'broken-model': */broken-model/config.json {message}"])
    assert "KeyError" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    _no_chain(result)


def test_resolve_model_checks_the_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"model 'm': .*config.json lacks"):
        resolve_model("m", [tmp_path])


# --- workload arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        ("repeats=0", "*test_run*: mgpu_bench.run(repeats=0): repeats must be an int >= 1, or None for --mgpu-repeats (1)"),
        ("repeats=-2", "*mgpu_bench.run(repeats=-2): repeats must be an int >= 1*"),
        ("repeats=1.5", "*mgpu_bench.run(repeats=1.5): repeats must be an int >= 1*"),
        ("seed=-1", "*test_run*: mgpu_bench.run(): seed=-1 must be an int >= 0"),
        ("max_concurrency=1.5", "*test_run*: mgpu_bench.run(): max_concurrency=1.5 must be an int >= 1 or None"),
        ("max_concurrency=0", "*max_concurrency=0 must be an int >= 1 or None"),
        ("warmup_requests=-1", "*warmup_requests=-1 must be an int >= 0"),
    ],
)
def test_bad_run_arguments_are_errors_not_defaults(pytester: pytest.Pytester, call: str, message: str) -> None:
    pytester.makepyfile(
        test_run=f"""
        def test_run(mgpu_bench):
            mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"), {call})
        """
    )
    result = pytester.runpytest(*SIM, "--mgpu-repeats", "1", "--mgpu-engine-opt", "zero=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E   *WorkloadError: {message}"])
    result.stdout.fnmatch_lines(["mgpu: no result was measured: 1 test uses mgpu_bench (failed 1)*"])


# --- engine start failures: the root cause, printed once -------------------------------------

#: The shape of a vLLM start that fails in EngineCore: the cause first, then ~60 lines of the
#: API server's own traceback ending in "See root cause above".
VLLM_LIKE_LOG = """#!/bin/sh
echo "INFO 05-02 10:00:00 [api_server.py:1] vLLM API server version 0.26.0"
echo "(EngineCore_DP0 pid=42) INFO 05-02 10:00:01 [core.py:90] Initializing a V1 LLM engine"
echo "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708] EngineCore failed to start."
echo "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708] Traceback (most recent call last):"
echo "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708]   File \\"kv_cache_utils.py\\", line 859, in check"
echo "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708] ValueError: No available memory for the cache blocks. Try increasing gpu_memory_utilization."
echo "(EngineCore_DP0 pid=42) Process EngineCore_DP0:"
i=0
while [ $i -lt 60 ]; do
  echo "(APIServer pid=41)   File \\"/venv/vllm/v1/engine/utils.py\\", line $i, in launch_core_engines"
  i=$((i+1))
done
echo "(APIServer pid=41) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
exit 1
"""


def test_engine_start_failure_shows_the_root_cause_above_the_tail_once(pytester: pytest.Pytester) -> None:
    fake = pytester.path / "fake-python"
    fake.write_text(VLLM_LIKE_LOG)
    fake.chmod(0o755)
    pytester.makepyfile(
        test_start="""
        import pytest

        @pytest.mark.model("tiny-llama")
        def test_one(mgpu_bench):
            pass

        @pytest.mark.model("tiny-llama")
        def test_two(mgpu_bench):
            pass
        """
    )
    result = pytester.runpytest(*SIM, "--mgpu-engine-python", str(fake))
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "sim exited with code 1 before it became ready (tp1-pp1)",
            "--- root cause: the first error in */sim-tp1-pp1-*.log ---",
            "*ERROR * EngineCore failed to start.",
            "*Traceback (most recent call last):",
            "*ValueError: No available memory for the cache blocks.*",
            "*Process EngineCore_DP0:",
            "--- last 30 lines of */sim-tp1-pp1-*.log ---",
        ]
    )
    out = result.stdout.str()
    assert out.count("No available memory for the cache blocks") == 1  # the first test shows it once
    assert out.count("--- last 30 lines of") == 1  # the second test does not repeat the log
    result.stdout.fnmatch_lines(
        ["sim tp1-pp1 failed to start earlier in this session (sim exited with code 1 before it became ready (tp1-pp1)); not retried*"]
    )
    _no_chain(result)


def test_engine_start_failure_in_the_tail_is_not_repeated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_start="def test_one(mgpu_bench):\n    pass\n")
    result = pytester.runpytest(*SIM, "--mgpu-engine-opt", "fail_start=1")
    result.assert_outcomes(errors=1)
    assert "--- root cause" not in result.stdout.str()
    assert result.stdout.str().count("sim: error: injected startup failure (fail_start=1)") == 1
    _no_chain(result)


def test_first_error_block_of_a_vllm_log() -> None:
    lines = [
        "$ python -m vllm.entrypoints.openai.api_server --model m",
        "INFO 05-02 10:00:00 [api_server.py:1] starting ERRORS_ARE_NOT_THIS",
        "(EngineCore_DP0 pid=42) WARNING 05-02 10:00:01 [x.py:1] something odd",
        "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708] EngineCore failed to start.",
        "(EngineCore_DP0 pid=42) ERROR 05-02 10:00:02 [core.py:708] ValueError: boom",
        "(EngineCore_DP0 pid=42) INFO 05-02 10:00:03 [core.py:1] shutting down",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    assert first_error_block(lines) == (3, lines[3:5])
    assert first_error_block(["all fine", "INFO ok"]) is None
    assert first_error_block(["usage: api_server.py [-h]", "api_server.py: error: unrecognized arguments: --x"]) == (
        1, ["api_server.py: error: unrecognized arguments: --x"])


def test_engine_error_puts_the_root_cause_before_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("\n".join(["Traceback (most recent call last):", "  File x", "OSError: cause"] + [f"noise {i}" for i in range(50)]))
    err = EngineError("engine exited with code 1", log)
    text = str(err)
    assert text.index("--- root cause") < text.index("OSError: cause") < text.index("--- last 30 lines")
    assert text.count("OSError: cause") == 1
    assert root_cause(log, tail_lines=60) == ""  # inside the tail: shown there only
