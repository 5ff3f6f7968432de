"""The client's TTFT uses ``vllm bench serve``'s instants (issue 17), against a server of known latency.

vLLM 0.26.0, ``vllm/benchmarks/lib/endpoint_request_func.py``, ``async_request_openai_completions``:
the clock starts just before ``session.post`` (line 197), and TTFT stops at the first SSE message
whose ``choices`` is non-empty, *even when its text is empty* (lines 227-236); SSE comments
(line 216) and a usage chunk with ``"choices": []`` (line 244) are not tokens. docs/client.md has
the details. The fake server below sends the response headers at t0, a ``: ping`` comment, a
``choices: []`` chunk, an empty-text chunk at t1 and the first text at t2, each a known delay
apart, and stamps each write (just before it) on this process's ``perf_counter`` clock, which the client uses too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_mgpu.measure.client import run_workload, vllm_trust_env
from pytest_mgpu.measure.workload import Workload

GAP_S = 0.15  # between the server's writes: far above scheduling noise, so an instant cannot be mistaken


def _threaded_server() -> type:
    """``ThreadedServer`` from benchmarks/ttft_instants.py, which measures the same instants against vLLM's client."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ttft_instants.py"
    spec = importlib.util.spec_from_file_location("ttft_instants", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ThreadedServer


class FakeServer(_threaded_server()):  # type: ignore[misc]
    """An OpenAI completions server on a thread of its own, writing at known instants."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: dict[str, float] = {}
        self.auth: list[str | None] = []  # each request's Authorization header

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        await request.read()
        self.auth.append(request.headers.get("Authorization"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.stamps["t0_headers"] = time.perf_counter()

        async def send(name: str, data: bytes) -> None:
            await asyncio.sleep(GAP_S)
            # Stamped before the write: the client, on another thread, can read the bytes before this
            # thread runs again, so a stamp after the write could come later than the client's own.
            self.stamps[name] = time.perf_counter()
            await resp.write(data)

        chunk = {"id": "cmpl-1", "object": "text_completion", "model": "fake"}
        await send("ping", b": ping\n\n")
        await send("no_choices", b"data: " + json.dumps({**chunk, "choices": [], "usage": None}).encode() + b"\n\n")
        await send("t1_empty_text", b"data: " + json.dumps(
            {**chunk, "choices": [{"index": 0, "text": "", "finish_reason": None}], "usage": None}).encode() + b"\n\n")
        await send("t2_first_text", b"data: " + json.dumps(
            {**chunk, "choices": [{"index": 0, "text": " hello", "finish_reason": "length"}], "usage": None}).encode()
            + b"\n\n")
        await send("usage", b"data: " + json.dumps(
            {**chunk, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A running :class:`FakeServer`."""
    with FakeServer() as srv:
        yield srv


ONE = Workload(input_len=4, output_len=2, num_requests=1, warmup_requests=0, max_concurrency=1,
               request_rate=float("inf"))
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "ws_proxy", "wss_proxy")


def test_ttft_is_the_first_chunk_with_choices_even_empty(fake_server: FakeServer) -> None:
    """TTFT ends at the empty-text chunk (t1): not at the headers, the comment, ``choices: []``, or the first text."""
    out = run_workload(f"http://127.0.0.1:{fake_server.port}", "fake", ONE, timeout_s=30)
    (rec,) = out.records
    assert rec.error is None, rec.error
    s = fake_server.stamps
    first = rec.chunk_times[0]
    # The client stamps the first token after the server wrote t1 and before it wrote t2.
    assert s["t1_empty_text"] <= first < s["t2_first_text"], (s, rec.start, rec.chunk_times)
    # ... and within a few ms of t1 (GAP_S away from every other write).
    assert first - s["t1_empty_text"] < GAP_S / 3, (first - s["t1_empty_text"])
    assert rec.start < s["t0_headers"]  # the clock started before the POST was answered
    assert rec.ttft == pytest.approx(first - rec.start)
    assert len(rec.chunk_times) == 2 and rec.output_tokens == 2 and rec.prompt_len == 4
    # The usage chunk (choices: []) ends no token interval: the last chunk is the text chunk.
    assert rec.chunk_times[1] < s["usage"]


def test_session_reads_the_environment_like_vllms(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's session has ``trust_env=True``: aiohttp then reads ~/.netrc and the proxy variables on every
    request, inside vLLM's TTFT clock (~0.5 ms a request here; benchmarks/ttft_instants.py). Ours does the
    same, so its TTFT is vLLM's; the netrc entry showing up as an Authorization header proves it."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login mgpu password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert vllm_trust_env()
    out = run_workload(f"http://127.0.0.1:{fake_server.port}", "fake", ONE, timeout_s=30)
    assert out.records[0].error is None, out.records[0].error
    assert fake_server.auth == ["Basic bWdwdTpzZWNyZXQ="]  # mgpu:secret


def test_a_proxy_is_never_used(fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy variable set the session does not read the environment (vLLM's would send through the proxy)."""
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there: through it, the request fails
    assert not vllm_trust_env()
    out = run_workload(f"http://127.0.0.1:{fake_server.port}", "fake", ONE, timeout_s=30)
    assert out.records[0].error is None, out.records[0].error
    assert fake_server.auth == [None]
