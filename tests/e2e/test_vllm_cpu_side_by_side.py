"""End-to-end: the sim and real vLLM (on CPU) side by side, ``--mgpu-engine sim,vllm``.

Runs only when ``MGPU_VLLM_PYTHON`` names an interpreter with vLLM installed (see test_vllm_cpu.py).
One vLLM start (about a minute on 2 cores) and one sim start.
"""

from __future__ import annotations

import json
import os

import pytest

from pytest_mgpu.engines.base import python_dist_version

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
VERSION = python_dist_version(PY, ["vllm", "vllm-cpu"]) if PY else None
pytestmark = pytest.mark.skipif(VERSION is None, reason="real vLLM not available: set MGPU_VLLM_PYTHON")
pytest_plugins = ["pytester"]

PERF_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("tiny-llama")]

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=1)
"""


def test_sim_and_vllm_side_by_side(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mgpu-engine", "sim,vllm", f"--mgpu-engine-python={PY}", "--mgpu-repeats", "1",
        "--mgpu-engine-opt", "vllm:max-model-len=512", "--mgpu-update-baselines", "--mgpu-json", str(out), "-v",
        timeout=900,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random([
        "*test_serve[[]sim-tp1-pp1[]] PASSED*",
        "*test_serve[[]vllm-tp1-pp1[]] PASSED*",
        "*engines side by side: tiny-llama*",
        "layout*GPUs*sim tok/s/GPU*sim gain/GPU*vllm tok/s/GPU*vllm gain/GPU*",
    ])
    doc = json.loads(out.read_text())
    fps = {r["engine"]: r["env"]["fingerprint"] for r in doc["results"]}
    assert fps == {"sim": "sim-v100-16gb-x4", "vllm": "cpu"}
    for engine, fp in fps.items():
        stored = json.loads((pytester.path / "baselines" / fp / "test_perf.py.json").read_text())
        (entry,) = stored["entries"]
        assert entry.startswith(f"test_serve[{engine}-tp1-pp1]::")
