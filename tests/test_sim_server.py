"""The sim server end to end: started by SimAdapter, spoken to with aiohttp."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_mgpu.engines.base import EngineSpec, RunningEngine
from pytest_mgpu.engines.sim import SimAdapter
from pytest_mgpu.errors import EngineError
from pytest_mgpu.gpus import GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.models import resolve_model

aiohttp = pytest.importorskip("aiohttp")

TINY = resolve_model("tiny-llama")
TOKEN_RE = re.compile(
    rb'^data: \{"id":"(cmpl-[0-9a-f]+)","object":"text_completion","created":\d+,"model":"tiny-llama",'
    rb'"choices":\[\{"index":0,"text":" t\d+","logprobs":null,"finish_reason":(null|"length"),'
    rb'"stop_reason":null,"prompt_token_ids":null,"token_ids":null\}\]\}$'
)


def start(tmp: Path, layout: Layout | None = None, **options: str) -> RunningEngine:
    spec = EngineSpec("sim", TINY, layout or Layout(), options=tuple(sorted(options.items())), python=sys.executable)
    return SimAdapter().start(spec, GpuInventory(), [], tmp, start_timeout_s=20)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    eng = start(tmp_path_factory.mktemp("sim"), Layout(tp=2), overhead_ms="1")
    yield eng
    SimAdapter().stop(eng)


async def _request(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        kw: dict[str, Any] = {"data": payload} if isinstance(payload, (bytes, str)) else {"json": payload}
        async with s.request(method, url, **kw) as resp:
            return resp.status, await resp.read()


def request(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    return asyncio.run(_request(method, url, payload, timeout))


def completion(base: str, max_tokens: int = 8, stream: bool = True, **extra: Any) -> tuple[int, bytes]:
    body = {"model": "tiny-llama", "prompt": list(range(100, 116)), "max_tokens": max_tokens, "stream": stream,
            "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0.0, **extra}
    return request("POST", base + "/v1/completions", body)


def events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return [e for e in raw.split(b"\n\n") if e]


def test_stream_format_matches_vllm(sim: RunningEngine) -> None:
    status, raw = completion(sim.base_url, max_tokens=5)
    assert status == 200
    evs = events(raw)
    assert evs[-1] == b"data: [DONE]"
    tokens, usage = evs[:-2], evs[-2]
    assert len(tokens) == 5
    ids = set()
    for i, ev in enumerate(tokens):
        m = TOKEN_RE.match(ev)
        assert m, ev
        ids.add(m.group(1))
        assert m.group(2) == (b'"length"' if i == 4 else b"null")
    u = json.loads(usage[len(b"data: "):])
    assert u["choices"] == [] and u["id"] in {i.decode() for i in ids}
    assert u["usage"] == {"prompt_tokens": 16, "total_tokens": 21, "completion_tokens": 5}


def test_stream_without_usage_and_string_prompt(sim: RunningEngine) -> None:
    status, raw = request("POST", sim.base_url + "/v1/completions",
                          {"prompt": "one two three", "max_tokens": 3, "stream": True})
    evs = events(raw)
    assert status == 200 and len(evs) == 4 and evs[-1] == b"data: [DONE]"
    assert all(TOKEN_RE.match(e) for e in evs[:-1])


def test_non_stream(sim: RunningEngine) -> None:
    status, raw = completion(sim.base_url, max_tokens=4, stream=False)
    body = json.loads(raw)
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length" and len(body["choices"][0]["text"].split()) == 4
    assert body["usage"] == {"prompt_tokens": 16, "total_tokens": 20, "completion_tokens": 4,
                             "prompt_tokens_details": None}


def test_info_endpoints(sim: RunningEngine) -> None:
    assert request("GET", sim.base_url + "/health") == (200, b"")
    status, raw = request("GET", sim.base_url + "/v1/models")
    models = json.loads(raw)
    assert status == 200 and models["object"] == "list" and models["data"][0]["id"] == "tiny-llama"
    status, raw = request("GET", sim.base_url + "/version")
    assert status == 200 and "version" in json.loads(raw)
    assert request("GET", sim.base_url + "/nope")[0] == 404


@pytest.mark.parametrize(
    "payload, status, needle",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 4}, 400, "'prompt' is required"),
        ({"prompt": [1, 2], "max_tokens": 4, "min_tokens": 9}, 400, "min_tokens"),
        ({"prompt": [1] * 2040, "max_tokens": 100}, 400, "maximum context length is 2048"),
        ({"model": "gpt-9", "prompt": [1], "max_tokens": 4}, 404, "does not exist"),
    ],
)
def test_bad_requests(sim: RunningEngine, payload: Any, status: int, needle: str) -> None:
    got, raw = request("POST", sim.base_url + "/v1/completions", payload)
    err = json.loads(raw)["error"]
    assert got == status and err["code"] == status and needle in err["message"]


def test_ground_truth_and_concurrency(sim: RunningEngine) -> None:
    assert request("POST", sim.base_url + "/sim/reset")[0] == 200

    async def many() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(n: int) -> int:
                body = {"prompt": [5] * 32, "max_tokens": n, "stream": True}
                async with s.post(sim.base_url + "/v1/completions", json=body) as resp:
                    return sum(1 for line in (await resp.read()).split(b"\n\n") if b'"text"' in line)
            return await asyncio.gather(*(one(n) for n in (1, 4, 12, 20)))

    assert asyncio.run(many()) == [1, 4, 12, 20]
    recs = json.loads(request("GET", sim.base_url + "/sim/requests")[1])["requests"]
    assert sorted(r["output_tokens"] for r in recs) == [1, 4, 12, 20]
    for r in recs:
        assert r["arrival_s"] < r["first_token_s"] <= r["finish_s"]
        assert r["ttft_ms"] > 0 and r["e2el_ms"] >= r["ttft_ms"]
        # The model's step is >= overhead_ms=1: TPOT can never be faster than that.
        assert (r["tpot_ms"] is None) == (r["output_tokens"] == 1)
        assert r["tpot_ms"] is None or r["tpot_ms"] >= 1.0
    request("POST", sim.base_url + "/sim/reset")
    assert json.loads(request("GET", sim.base_url + "/sim/requests")[1])["requests"] == []


def test_command_carries_layout_and_options() -> None:
    spec = EngineSpec("sim", TINY, Layout(tp=2, pp=2, gpu_mem_gb=8.5), options=(("gpu", "h100-80gb"), ("speed", "0.8")))
    argv = SimAdapter().command(spec, 1234, GpuInventory(), [])
    assert argv[:3] == ["python", "-m", "pytest_mgpu.sim"]
    joined = " ".join(argv)
    for part in ("--tp 2", "--pp 2", "--gpu h100-80gb", "--gpu-mem-gb 8.5", "--port 1234", "--opt speed=0.8",
                 "--host 127.0.0.1", f"--model {TINY.path}"):
        assert part in joined
    assert "--gpu v100-16gb" in " ".join(SimAdapter().command(EngineSpec("sim", TINY, Layout()), 1, GpuInventory(), []))


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_leaves_nothing_and_short_tokens(tmp_path: Path) -> None:
    eng = start(tmp_path, zero="1", short_tokens="3")
    try:
        status, raw = completion(eng.base_url, max_tokens=10)
        evs = events(raw)
        assert status == 200 and len(evs) == 5  # 3 tokens, usage, [DONE]
        assert json.loads(evs[-2][6:])["usage"]["completion_tokens"] == 3
    finally:
        SimAdapter().stop(eng)
    assert eng.process is not None and eng.process.returncode is not None
    assert _gone(eng.pid)


def test_fail_start_reports_log_tail(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"(?s)exited with code 1.*injected startup failure"):
        start(tmp_path, fail_start="1")


def test_unknown_option_exits_2_listing_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"(?s)exited with code 2.*valid options: gpu, speed"):
        start(tmp_path, colour="blue")


def test_model_too_large_fails_start(tmp_path: Path) -> None:
    spec = EngineSpec("sim", resolve_model("llama-2-7b"), Layout(gpu_mem_gb=12), python=sys.executable)
    with pytest.raises(EngineError, match=r"(?s)exited with code 1.*does not fit"):
        SimAdapter().start(spec, GpuInventory(), [], tmp_path, start_timeout_s=20)


def test_crash_after(tmp_path: Path) -> None:
    eng = start(tmp_path, crash_after="1", overhead_ms="1")
    try:
        assert completion(eng.base_url, max_tokens=3)[0] == 200
        with pytest.raises(aiohttp.ClientError):
            completion(eng.base_url, max_tokens=3)
        assert eng.process is not None and eng.process.wait(timeout=5) == 3
        assert "FAULT crash_after=1" in eng.log_path.read_text()
    finally:
        SimAdapter().stop(eng)


def test_hang_after(tmp_path: Path) -> None:
    eng = start(tmp_path, hang_after="1", zero="1")
    try:
        assert completion(eng.base_url, max_tokens=3)[0] == 200
        with pytest.raises(asyncio.TimeoutError):
            request("POST", eng.base_url + "/v1/completions", {"prompt": [1], "max_tokens": 2}, timeout=0.5)
        with pytest.raises(asyncio.TimeoutError):
            request("GET", eng.base_url + "/health", timeout=0.5)
        assert eng.alive
        assert "FAULT hang_after=1" in eng.log_path.read_text()
    finally:
        SimAdapter().stop(eng)
    assert _gone(eng.pid)
