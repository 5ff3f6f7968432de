"""``--mgpu-engine sim,vllm``: one item per engine and layout, per-engine fingerprints, optional engines.

A real second engine is exercised in ``tests/e2e/test_vllm_cpu_side_by_side.py`` (vLLM on CPU);
here vLLM is not installed for this interpreter, which is the case an optional engine covers.
"""

from __future__ import annotations

import json
import sys

import pytest

from pytest_mgpu.run.collection import engine_missing

pytest_plugins = ["pytester"]

SIM = ["-p", "no:cacheprovider", "--mgpu-repeats", "1"]

PERF_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""

needs_no_vllm = pytest.mark.skipif(engine_missing("vllm", sys.executable) is None,
                                   reason="vLLM is installed for this interpreter")


@needs_no_vllm
def test_one_item_per_engine_and_an_optional_engine_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,vllm?", "-v", "-rs", "--mgpu-update-baselines",
                                "--mgpu-json", str(out))
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines_random([
        "*mgpu: engines side by side: sim (sim GPU v100-16gb x4, time scale 50x; baselines=*/baselines/sim-v100-16gb-x4)"
        ", vllm? (*; baselines=*/baselines/cpu*",
        "test_perf.py::test_serve[[]sim-tp1-pp1[]] PASSED*",
        "test_perf.py::test_serve[[]sim-tp2-pp1[]] PASSED*",
        "test_perf.py::test_serve[[]vllm-tp1-pp1[]] SKIPPED*",
        "SKIPPED * optional engine vllm? missing: *",
    ])
    # The sim's results are recorded under the sim's fingerprint, whatever else ran beside it.
    stored = json.loads((pytester.path / "baselines" / "sim-v100-16gb-x4" / "test_perf.py.json").read_text())
    assert sorted(stored["entries"]) == sorted(k for k in stored["entries"] if k.startswith("test_serve[sim-"))
    assert len(stored["entries"]) == 2
    doc = json.loads(out.read_text())
    assert {r["env"]["fingerprint"] for r in doc["results"]} == {"sim-v100-16gb-x4"}


@needs_no_vllm
def test_a_missing_required_engine_stops_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,vllm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mgpu-engine sim,vllm: vllm cannot run: *--mgpu-engine 'sim,vllm?'*"])


def test_engine_names_are_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,sim")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*names sim twice*"])
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown engine 'nope'*"])


@needs_no_vllm
def test_scoped_engine_options(pytester: pytest.Pytester) -> None:
    """``sim:noise=...`` goes to the sim only; an unscoped sim knob would be a vLLM error, and says how to scope it."""
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,vllm?", "--mgpu-engine-opt", "sim:speed=0.5",
                                "-k", "tp1")
    result.assert_outcomes(passed=1, skipped=1)
    result = pytester.runpytest(*SIM, "--mgpu-engine", "sim,vllm?", "--mgpu-engine-opt", "bogus_knob=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bogus_knob*as ENGINE:KEY=VALUE*"])


def _gpus_visible() -> bool:
    from pytest_mgpu.gpus import query_inventory

    return query_inventory().count > 0


@pytest.mark.skipif(_gpus_visible(), reason="NVML finds GPUs here: the default engine is vLLM")
def test_without_a_gpu_every_item_runs_on_the_sim(pytester: pytest.Pytester) -> None:
    """No --mgpu-engine and no GPU: every item is the sim's, the first one too (it was built for vLLM and
    skipped, "vLLM is not installed", before the engine choice was settled ahead of the first spec)."""
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--mgpu-repeats", "1", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*mgpu: engine=sim (no GPU found*", "*test_serve[[]tp1-pp1[]] PASSED*"])


def test_engine_python_as_a_separate_argument_must_not_move_the_rootdir(pytester: pytest.Pytester) -> None:
    """``--mgpu-engine-python /venv/bin/python`` made pytest's rootdir ``/venv/bin``: baselines would go there.

    Found running tests/e2e/test_vllm_cpu_side_by_side.py, which wrote its baselines into the
    project of the vLLM venv. The ``=`` form is never taken for a test path.
    """
    pytester.makepyfile(test_perf=PERF_TEST)
    bad = pytester.runpytest(*SIM, "--mgpu-engine", "sim", "--mgpu-engine-python", sys.executable, "--co")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines([f"*pytest chose the rootdir * from --mgpu-engine-python's path {sys.executable}*"
                              f"write --mgpu-engine-python={sys.executable} (with '=')*"])
    good = pytester.runpytest(*SIM, "--mgpu-engine", "sim", f"--mgpu-engine-python={sys.executable}", "--co")
    assert good.ret == pytest.ExitCode.OK
    good.stdout.fnmatch_lines([f"rootdir: {pytester.path}"])


def test_engine_python_beside_a_test_path_must_not_move_the_rootdir(pytester: pytest.Pytester) -> None:
    """The README's own command with the space form: ``pytest perf_tests/ --mgpu-engine-python /venv/bin/python``
    in a project without a pytest configuration made the rootdir the common ancestor of both (``/``),
    and baselines went under it, all NEW. The check returned early because the working directory lies
    under that ancestor (found in a new user's walk-through)."""
    pytester.makepyfile(test_perf=PERF_TEST)
    bad = pytester.runpytest(*SIM, "--mgpu-engine", "sim", "test_perf.py", "--mgpu-engine-python", sys.executable, "--co")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines([f"*pytest chose the rootdir * from --mgpu-engine-python's path {sys.executable}*"])
    pytester.makeini("[pytest]\n")  # a configuration file fixes the rootdir: the space form is harmless then
    fine = pytester.runpytest(*SIM, "--mgpu-engine", "sim", "test_perf.py", "--mgpu-engine-python", sys.executable, "--co")
    assert fine.ret == pytest.ExitCode.OK, fine.stderr.str()


@needs_no_vllm
def test_accept_records_each_engine_under_its_own_fingerprint(pytester: pytest.Pytester) -> None:
    """``pytest-mgpu accept`` of a side-by-side run: each result goes under its result's fingerprint."""
    from pytest_mgpu.cli import main as cli

    pytester.makepyfile(test_perf=PERF_TEST)
    out = pytester.path / "r.json"
    pytester.runpytest(*SIM, "--mgpu-engine", "sim,vllm?", f"--mgpu-json={out}").assert_outcomes(passed=2, skipped=2)
    doc = json.loads(out.read_text())
    # Stand in for the vLLM result that this machine cannot produce: same data, the GPU's fingerprint.
    doc["results"][1]["env"]["fingerprint"] = "nvidia-h100-80gb-hbm3-x2"
    out.write_text(json.dumps(doc))
    assert cli(["accept", str(out), "--baseline-dir", str(pytester.path / "bl")]) == 0
    for fp, r in (("sim-v100-16gb-x4", doc["results"][0]), ("nvidia-h100-80gb-hbm3-x2", doc["results"][1])):
        stored = json.loads((pytester.path / "bl" / fp / "test_perf.py.json").read_text())
        assert list(stored["entries"]) == [r["entry_id"]]
