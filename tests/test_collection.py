"""Collection: layout ids, marker validation, skips, ordering by engine key, option errors."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_layout_marks_make_one_item_per_layout(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        @pytest.mark.layout(tp=1, pp=1)
        @pytest.mark.layout(tp=2, pp=1)
        @pytest.mark.layout(tp=1, pp=2, gpu_mem_gb=16)
        def test_serve(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_layout_marks_make_one_item_per_layout.py::test_serve[[]tp1-pp1[]]",
            "test_layout_marks_make_one_item_per_layout.py::test_serve[[]tp2-pp1[]]",
            "test_layout_marks_make_one_item_per_layout.py::test_serve[[]tp1-pp2-mem16[]]",
        ]
    )
    assert result.ret == 0


def test_layout_fixture_value_and_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.layout(tp=2, pp=2)
        def test_marked(mgpu_layout):
            assert (mgpu_layout.tp, mgpu_layout.pp, mgpu_layout.num_gpus) == (2, 2, 4)

        def test_default(mgpu_layout):
            assert mgpu_layout.id == "tp1-pp1"
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_default[[]tp1-pp1[]] PASSED*"])


@pytest.mark.parametrize(
    "mark, message",
    [
        ("layout(tp=0)", "*test_bad*tp=0 is not a positive int*"),
        ("layout(tp=2.5)", "*test_bad*tp=2.5 is not a positive int*"),
        ("layout(tp='2')", "*test_bad*tp='2' is not a positive int*"),
        ("layout(tq=2)", "*test_bad*unknown layout argument(s) tq*"),
        ("layout(2)", "*test_bad*layout() takes keywords only*"),
        ("layout(gpu_mem_gb=-1)", "*test_bad*gpu_mem_gb=-1 is not a positive number*"),
        ("model('no-such-model')", "*test_bad*model 'no-such-model' not found*"),
        ("layout(tp=3)", "*test_bad*tp=3 does not divide the 32 attention heads of llama-2-7b*"),
        ("layout(pp=33)", "*test_bad*pp=33 exceeds the 32 layers of llama-2-7b*"),
        ("perf_tolerance('5%')", "*test_bad*perf_tolerance() takes metric=tolerance keywords*"),
    ],
)
def test_bad_marker_is_an_error_naming_the_test(pytester: pytest.Pytester, mark: str, message: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{mark}
        def test_bad(mgpu_layout):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*ERROR at setup of test_bad*", message])
    result.assert_outcomes(errors=1, passed=1)  # the module's other test still runs
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_duplicate_layout_rejected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.layout(tp=2)
        @pytest.mark.layout(tp=2, pp=1)
        def test_dup(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*test_dup: layout tp2-pp1 is declared more than once*"])


def test_layout_needing_more_devices_is_skipped_with_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.layout(tp=4)
        @pytest.mark.layout(tp=2)
        def test_big(mgpu_layout):
            pass
        """
    )
    result = pytester.runpytest("--mgpu-engine", "sim", "--mgpu-sim-gpus", "2", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs 4 sim GPUs, 2 visible*"])


def test_items_are_grouped_by_engine_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.layout(tp=1)
        @pytest.mark.layout(tp=2)
        def test_a(mgpu_layout):
            pass

        @pytest.mark.layout(tp=1)
        @pytest.mark.layout(tp=2)
        def test_b(mgpu_layout):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q", "--mgpu-engine", "sim")
    lines = [line for line in result.stdout.lines if "::" in line]
    assert lines == [
        "test_items_are_grouped_by_engine_key.py::test_plain",
        "test_items_are_grouped_by_engine_key.py::test_a[tp1-pp1]",
        "test_items_are_grouped_by_engine_key.py::test_b[tp1-pp1]",
        "test_items_are_grouped_by_engine_key.py::test_a[tp2-pp1]",
        "test_items_are_grouped_by_engine_key.py::test_b[tp2-pp1]",
    ]


def test_header_says_sim_fallback_without_gpu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(mgpu_layout):\n    pass\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["mgpu: engine=sim (no GPU found (*); using the sim engine), sim GPU v100-16gb x4*"])


def test_named_engine_does_not_fall_back(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(mgpu_layout):\n    pass\n")
    result = pytester.runpytest("--mgpu-engine", "vllm")
    result.stdout.fnmatch_lines(["mgpu: engine=vllm, no GPU: * CPU worker(s)*"])


#: A conftest that records what the plugin does in a project: subprocesses, NVML, SIGTERM.
SPY_CONFTEST = """
import signal, subprocess, sys

CALLS = []
_popen_init = subprocess.Popen.__init__

def _spy(self, args, *a, **kw):
    CALLS.append(args)
    _popen_init(self, args, *a, **kw)

subprocess.Popen.__init__ = _spy

def pytest_unconfigure(config):  # after the terminal summary: the whole run is seen
    print(f"\\nSPY subprocesses={CALLS!r} pynvml={'pynvml' in sys.modules} numpy={'numpy' in sys.modules} "
          f"sigterm={signal.getsignal(signal.SIGTERM) is signal.SIG_DFL} "
          f"collection={'pytest_mgpu.run.collection' in sys.modules}")
"""


def _spy_line(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.stdout.lines if line.startswith("SPY ")]
    return line


def test_plugin_does_nothing_in_a_project_without_mgpu_tests(pytester: pytest.Pytester) -> None:
    """No header line, no subprocess (git), no NVML, no numpy, no SIGTERM handler, no engine code (issue 8)."""
    pytester.makeconftest(SPY_CONFTEST)
    pytester.makepyfile("\n".join(f"def test_{i}():\n    pass\n" for i in range(5)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=5)
    assert not [line for line in result.stdout.lines if line.startswith("mgpu")]
    # Exactly what the same run does without the plugin (other plugins may run subprocesses).
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-p", "no:mgpu")
    assert _spy_line(result) == _spy_line(without)
    assert "pynvml=False numpy=False sigterm=True collection=False" in _spy_line(result)


def test_plugin_does_nothing_when_mgpu_tests_are_deselected(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SPY_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_perf(mgpu_bench):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-m", "not gpu")
    result.assert_outcomes(passed=1, deselected=1)
    assert not [line for line in result.stdout.lines if line.startswith("mgpu")]
    assert "git" not in _spy_line(result)
    assert "pynvml=False numpy=False sigterm=True" in _spy_line(result)


def test_header_comes_after_collection_in_a_session_with_mgpu_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(mgpu_layout):\n    pass\n\ndef test_y():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mgpu-engine", "sim")
    result.stdout.fnmatch_lines(["collected 2 items", "mgpu: engine=sim, sim GPU v100-16gb x4*"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mgpu-engine-opt", "speed"], "*--mgpu-engine-opt expects KEY=VALUE, got 'speed'*"),
        (["--mgpu-repeats", "0"], "*--mgpu-repeats must be >= 1, got 0*"),
        (["--mgpu-engine", "vllm", "--mgpu-sim-gpu", "a100-80gb"], "*--mgpu-sim-gpu only applies to the sim engine*"),
        (["--mgpu-engine-python", "/nonexistent/python"], "*--mgpu-engine-python '/nonexistent/python' is not an executable*"),
    ],
)
def test_bad_options_name_the_conflict(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    result.stderr.fnmatch_lines([message])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_markers_are_documented_signature_first(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.gpu: *",
            "@pytest.mark.layout(tp=1, pp=1, gpu_mem_gb=None, nodes=1): *",
            "@pytest.mark.model(name): *",
            "@pytest.mark.perf_tolerance(**metric_tolerance): *",
        ]
    )
