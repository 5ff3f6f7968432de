"""A new user's path (issue 18): a gate that checked nothing is never green in CI, a mistyped baseline
directory or mark is caught, a FAIL says how to accept it, interpreters are found like ``--mgpu-ab``'s,
an all-pass run is short, and a project without mgpu tests loads next to nothing of the plugin."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest_plugins = ["pytester"]

#: The sim on the h100 profile, fast; wide tolerances: the verdict on the numbers is not the point here.
SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "2"]
LOOSE = [f"--mgpu-tolerance={m}=60%" for m in ("output_throughput_per_gpu", "ttft_p50", "tpot_p50", "ttft_p99", "tpot_p99")]
FP = "sim-h100-80gb-x4"

ONE = """
import math, pytest

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""


# --- a gate that checked nothing -----------------------------------------------------------------
def test_all_new_fails_under_ci_and_says_how_to_record(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_perf=ONE)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest(*SIM)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "mgpu gate FAILED: the gate checked nothing: all 1 result is NEW",
        f"  why: no baseline for this hardware: */baselines/{FP} does not exist",
        "  record this run's results as baselines (no re-run): pytest-mgpu accept *",
        "*--mgpu-allow-new*",
    ])


def test_all_new_passes_under_ci_with_allow_new_and_outside_ci_with_a_warning(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_perf=ONE)
    monkeypatch.setenv("CI", "true")
    allowed = pytester.runpytest(*SIM, "--mgpu-allow-new")
    assert allowed.ret == pytest.ExitCode.OK
    allowed.stdout.fnmatch_lines(["mgpu gate WARNING: the gate checked nothing: all 1 result is NEW (allowed by --mgpu-allow-new)*"])
    monkeypatch.delenv("CI")
    local = pytester.runpytest(*SIM)
    assert local.ret == pytest.ExitCode.OK
    local.stdout.fnmatch_lines([f"mgpu gate WARNING: the gate checked nothing: all 1 result is NEW; no baseline*{FP}*"])
    assert "mgpu gate FAILED" not in local.stdout.str()


def test_a_gate_that_compared_passes_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_perf=ONE)
    assert pytester.runpytest(*SIM, "--mgpu-update-baselines").ret == pytest.ExitCode.OK
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest(*SIM, *LOOSE)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "checked nothing" not in result.stdout.str()


def test_allow_new_is_documented_in_the_mgpu_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["multi-GPU inference performance testing:", "*--mgpu-allow-new*"])


# --- a baseline directory named explicitly -------------------------------------------------------
def test_a_named_baseline_dir_that_does_not_exist_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=ONE)
    result = pytester.runpytest(*SIM, "--mgpu-baseline-dir=baselnes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mgpu-baseline-dir baselnes: no such directory (*baselnes)*--mgpu-update-baselines*"])


def test_a_named_baseline_dir_may_be_created_when_recording(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=ONE)
    result = pytester.runpytest(*SIM, "--mgpu-baseline-dir=perf-baselines", "--mgpu-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert (pytester.path / "perf-baselines" / FP / "test_perf.py.json").is_file()


# --- interpreters -------------------------------------------------------------------------------
def test_engine_python_is_looked_up_on_path_like_ab(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    pytester.makepyfile("def test_x():\n    pass\n")
    name = Path(sys.executable).name
    result = pytester.runpytest(f"--mgpu-engine-python={name}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    missing = pytester.runpytest("--mgpu-engine-python=no-such-python3", "-p", "no:cacheprovider")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--mgpu-engine-python 'no-such-python3' is not an executable interpreter (not found on PATH*"])


@pytest.mark.parametrize("option", ["--mgpu-engine-python", "--mgpu-ab"])
def test_a_directory_for_an_interpreter_suggests_its_bin_python(pytester: pytest.Pytester, option: str) -> None:
    (pytester.path / ".venv-vllm").mkdir()
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(f"{option}=.venv-vllm", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option} '.venv-vllm' is a directory, not an interpreter; pass its python, "
                                 f"e.g. {option}=.venv-vllm/bin/python*"])
    # Its bin/ folder names the python inside it, not bin/bin/python (a new user's walk-through).
    (pytester.path / ".venv-vllm" / "bin").mkdir()
    (pytester.path / ".venv-vllm" / "bin" / "python").write_text("")
    inner = pytester.runpytest(f"{option}=.venv-vllm/bin", "-p", "no:cacheprovider")
    assert inner.ret == pytest.ExitCode.USAGE_ERROR
    inner.stderr.fnmatch_lines([f"*e.g. {option}=.venv-vllm/bin/python"])


# --- marker typos -------------------------------------------------------------------------------
def test_a_mark_close_to_the_plugins_is_a_collection_error_naming_the_right_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_typo="""
        import pytest

        @pytest.mark.layuot(tp=2)
        def test_typo(mgpu_layout):
            pass

        @pytest.mark.perf_tolerence(tpot_p50="8%")
        def test_tolerance_typo(mgpu_layout):
            pass

        @pytest.mark.slow
        def test_unrelated_mark(mgpu_layout):
            pass

        def test_plain():
            pass
    """)
    result = pytester.runpytest("--mgpu-engine", "sim", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "*test_typo.py::test_typo: unknown mark @pytest.mark.layuot: did you mean @pytest.mark.layout?*",
        "*test_typo.py::test_tolerance_typo: unknown mark @pytest.mark.perf_tolerence: "
        "did you mean @pytest.mark.perf_tolerance?*",
    ])
    assert "test_unrelated_mark: unknown mark" not in result.stdout.str()


def test_a_registered_mark_close_to_the_plugins_is_not_a_typo(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    layouts: the project's own mark\n")
    pytester.makepyfile("import pytest\n\n@pytest.mark.layouts\ndef test_x(mgpu_layout):\n    pass\n")
    result = pytester.runpytest("--mgpu-engine", "sim", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# --- a FAIL says how to accept an intended change ------------------------------------------------
def test_a_fail_names_the_accept_command_for_this_runs_results(pytester: pytest.Pytester) -> None:
    from pytest_mgpu.cli import main as cli

    pytester.makepyfile(test_perf=ONE)
    assert pytester.runpytest(*SIM, "--mgpu-update-baselines").ret == pytest.ExitCode.OK
    slow = [*SIM, "--mgpu-engine-opt", "speed=0.4", "--mgpu-no-confirm"]
    result = pytester.runpytest(*slow)
    result.assert_outcomes(failed=1)
    # One recording is both the anchor and the level: its FAIL is said once, not again as "slow drift".
    assert "slow drift" not in result.stdout.str()
    result.stdout.fnmatch_lines([
        "*FAIL: test_serve*",
        "if this change is intended, record this run's results as the new baseline and anchor once the session ends*",
        "  pytest-mgpu accept .mgpu/results-*.json --only fail --anchor",
    ])
    result.stdout.fnmatch_lines([
        "if the FAIL results are intended changes, record them as the new baselines and anchors (no re-run):",
        "  pytest-mgpu accept .mgpu/results-*.json --only fail --anchor",
    ])
    # The command does what it says: after it, the same run passes (the anchor moved with it, so no drift FAIL).
    (command,) = {line.split("  pytest-mgpu ", 1)[1] for line in result.stdout.lines if "pytest-mgpu accept" in line}
    assert cli(command.split()) == 0
    again = pytester.runpytest(*slow, *LOOSE)
    again.assert_outcomes(passed=1)


# --- what a project without mgpu tests pays --------------------------------------------------------
MODULES_CONFTEST = """
import sys

def pytest_unconfigure(config):
    print("\\nMODULES " + " ".join(sorted(m for m in sys.modules if m.startswith("pytest_mgpu"))))
"""
#: All the plugin imports in a project without mgpu tests: hooks, option registry, marker texts, keys.
LOAD_MODULES = {"pytest_mgpu", "pytest_mgpu.plugin", "pytest_mgpu.run", "pytest_mgpu.run.fixtures", "pytest_mgpu.run.options",
                "pytest_mgpu.run.keys", "pytest_mgpu.run.markers", "pytest_mgpu.layout", "pytest_mgpu.errors",
                "pytest_mgpu.engines"}


def _modules(result: pytest.RunResult) -> set[str]:
    (line,) = [line for line in result.stdout.lines if line.startswith("MODULES")]
    return set(line.split()[1:])


def test_a_project_without_mgpu_tests_imports_only_the_registry(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MODULES_CONFTEST)
    pytester.makepyfile("\n".join(f"def test_{i}():\n    pass\n" for i in range(3)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=3)
    assert _modules(result) <= LOAD_MODULES, sorted(_modules(result) - LOAD_MODULES)
    # An mgpu option given: checked at configure (the session and settings load), still no gate.
    given = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--mgpu-repeats=2")
    given.assert_outcomes(passed=3)
    assert "pytest_mgpu.run.session" in _modules(given)


def test_a_bad_option_is_still_a_usage_error_without_mgpu_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-tolerance=tpot_p50=abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_the_options_show_the_gates_defaults() -> None:
    from pytest_mgpu.judge import verdicts
    from pytest_mgpu.run import options

    for name in ("DEFAULT_GATED", "DEFAULT_TOLERANCE", "DEFAULT_TAIL_TOLERANCE", "DEFAULT_NOISE_K",
                 "DEFAULT_NOISE_FLOOR", "DEFAULT_DRIFT", "STRICT_HELP"):
        assert getattr(options, name) == getattr(verdicts, name), name


# --- quiet when all is well ---------------------------------------------------------------------
THREE = """
import math, pytest

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
@pytest.mark.layout(tp=4)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""
PASS_LINE = "test_serve[[]tp?-pp1[]]::in32-out8-n16-qpsinf-text  PASS  output_throughput_per_gpu *%, ttft_p50 *%, tpot_p50 *%"


def _recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=THREE)
    assert pytester.runpytest(*SIM, "--mgpu-update-baselines").ret == pytest.ExitCode.OK


def test_an_all_pass_run_prints_one_line_per_item_and_the_seed_table(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _recorded(pytester)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest(*SIM, *LOOSE, "--mgpu-repeats=3")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    out = result.stdout.str()
    result.stdout.fnmatch_lines([PASS_LINE, PASS_LINE, PASS_LINE, "", "mgpu gate: 3 passed"])
    result.stdout.fnmatch_lines(["*the seed's table: llama-2-7b, in32-out8-n16-qpsinf-text*"])
    assert "  metric  " not in out  # no per-metric table for a PASS
    assert "result  " not in out  # no per-item table either: the PASS lines say it
    assert "repeat 1/3" not in out  # a quick repeat gets no line of its own in a CI log
    # The test file's name once, not again after every engine's progress lines (3 engines here).
    assert len([line for line in result.stdout.lines if line.startswith("test_perf.py")]) == 1, out
    verbose = pytester.runpytest(*SIM, *LOOSE, "-v")
    verbose.stdout.fnmatch_lines(["  metric * baseline * now * delta % * verdict", "  output_throughput_per_gpu* PASS"])


def test_quiet_is_short_and_its_progress_lines_start_on_their_own_line(pytester: pytest.Pytester) -> None:
    _recorded(pytester)
    result = pytester.runpytest(*SIM, *LOOSE, "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["mgpu gate: 3 passed"])
    assert "PASS" not in result.stdout.str() and "seed's table" not in result.stdout.str()
    progress = [line for line in result.stdout.lines if "[mgpu]" in line]
    assert progress and all(line.startswith("[mgpu] ") for line in progress), progress


def test_a_live_line_keeps_the_repeat_count_at_80_columns() -> None:
    from pytest_mgpu.run.progress import KEEP, fit

    text = f"test_capped_all_at_once[tp1-pp2-mem16] in128-out128-n256-qpsinf-text {KEEP}repeat 2/3: 200/256 requests"
    assert fit(text, 80 - 36) == "repeat 2/3: 200/256 requests"  # the names go first
    assert fit(text, 70) == "test_capped_all_at_once[tp1-pp2-mem16] repeat 2/3: 200/256 requests"
    assert fit(text, 200) == text.replace(KEEP, "")
    assert fit(text, 20) == "repeat 2/3: 200/256…"


@given(
    names=st.lists(st.text(alphabet="abcdefghij_[]-0123456789", min_size=1, max_size=30), max_size=4),
    keep=st.text(alphabet="repat 0123456789/:,", min_size=1, max_size=60),
    room=st.integers(min_value=1, max_value=120),
)
def test_fit_never_overflows_and_keeps_the_counts_when_they_fit(names: list[str], keep: str, room: int) -> None:
    from pytest_mgpu.run.progress import KEEP, fit

    line = fit(" ".join(names) + " " + KEEP + keep, room)
    assert len(line) <= max(room, 1)
    if len(keep) <= room:
        assert line.endswith(keep)


def test_the_plugins_work_folder_ignores_itself_in_git(pytester: pytest.Pytester) -> None:
    """After a first run, ``git status`` of a new repository showed ``.mgpu/`` (results, logs) as
    something to commit, and the README's commit step did not say to ignore it (a new user's walk-through)."""
    _recorded(pytester)
    assert (pytester.path / ".mgpu" / ".gitignore").read_text().splitlines()[-1] == "*"
