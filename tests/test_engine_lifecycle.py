"""Engines that must not outlive their welcome (issue 8): health checks before reuse, restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "1"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


@pytest.fixture
def pid_log(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = pytester.path / "pids.txt"
    monkeypatch.setenv("PID_LOG", str(path))
    return path


#: Two tests on one engine key: the first leaves the engine hung (or dead), the second must get a new one.
TWO_TESTS = """
import os, signal, time, pytest

pytestmark = pytest.mark.model("tiny-llama")

def log(engine):
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{{engine.pid}}\\n")

def test_first(mgpu_bench, mgpu_engine):
    log(mgpu_engine)
    {first}

def test_second(mgpu_bench, mgpu_engine):
    log(mgpu_engine)
    r = mgpu_bench.run(input_len=8, output_len=4, num_requests=4, request_rate=float("inf"), warmup_requests=0)
    assert r.valid, r.invalid
"""


def test_hung_engine_is_restarted_before_the_next_test(pytester: pytest.Pytester, pid_log: Path) -> None:
    """After a workload in which every request timed out, the next test gets a fresh engine, not the hung one."""
    pytester.makepyfile(
        test_hang=TWO_TESTS.format(
            first='mgpu_bench.run(input_len=8, output_len=4, num_requests=8, request_rate=float("inf"), warmup_requests=0)'
        )
    )
    result = pytester.runpytest(
        *SIM, "--mgpu-engine-opt", "hang_after=5", "--mgpu-engine-opt", "zero=1", "--mgpu-request-timeout", "2", "-W",
        "always",
    )
    result.assert_outcomes(failed=1, passed=1)  # the first is INVALID (timeouts); the second measures
    result.stdout.fnmatch_lines(
        [
            "*EngineRestartWarning: engine stopped answering: sim * tp1-pp1 model=tiny-llama*: "
            "no answer to GET /health within 5s; stopped it and started a new one",
            "*--- last 30 lines of */sim-tp1-pp1-*.log ---",
            "*FAULT hang_after=5: no longer answering anything*",
        ]
    )
    first, second = _pids(pid_log)
    assert first != second
    assert not _alive(first) and not _alive(second)


def test_engine_killed_during_a_test_is_reported_and_the_next_test_gets_a_new_one(
    pytester: pytest.Pytester, pid_log: Path
) -> None:
    pytester.makepyfile(test_kill=TWO_TESTS.format(first="os.killpg(mgpu_engine.pid, signal.SIGKILL); time.sleep(0.5)"))
    result = pytester.runpytest(*SIM, "--mgpu-engine-opt", "zero=1", "-W", "always")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*EngineRestartWarning: engine stopped answering: sim *: it exited with code -9 during test_kill.py::test_first*"]
    )
    first, second = _pids(pid_log)
    assert first != second and not _alive(second)


def test_engine_that_died_between_tests_is_restarted_with_a_warning(tmp_path: Path) -> None:
    """The manager's health check: a dead current engine is stopped, warned about and started again."""
    import signal

    from pytest_mgpu.engines import EngineSpec
    from pytest_mgpu.errors import EngineRestartWarning
    from pytest_mgpu.gpus import GpuInventory
    from pytest_mgpu.layout import Layout
    from pytest_mgpu.models import resolve_model
    from pytest_mgpu.run.engine_manager import EngineManager
    from pytest_mgpu.run.settings import Settings

    settings = Settings(
        engine="sim", engine_named=True, engine_options={}, engine_env={}, engine_python=os.sys.executable,
        model="tiny-llama", sim_gpu="h100-80gb", sim_gpus=4, start_timeout_s=60, request_timeout_s=60,
        log_dir=tmp_path, json_path=None, json_records=False, repeats=1, baseline_dir=tmp_path / "b",
        update_baselines=False, confirm=True, report_md=None, benchmark_json=None,
    )
    spec = EngineSpec(engine="sim", model=resolve_model("tiny-llama"), layout=Layout(),
                      options=(("zero", "1"),), python=os.sys.executable)
    manager = EngineManager(settings, GpuInventory())
    try:
        first = manager.acquire(spec)
        assert manager.acquire(spec) is first  # healthy: reused
        os.killpg(first.pid, signal.SIGKILL)
        first.process.wait(10)
        with pytest.warns(EngineRestartWarning, match=r"engine stopped answering: sim .*: it exited with code -9"):
            second = manager.acquire(spec)
        assert second.pid != first.pid and second.alive
    finally:
        manager.close()
    assert not _alive(second.pid)
