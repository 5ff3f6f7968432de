"""The asyncio streaming client: sends a :class:`Workload` to an OpenAI-compatible server.

It times each request exactly as ``vllm bench serve`` does
(``vllm/benchmarks/lib/endpoint_request_func.py``, ``async_request_openai_completions``):

- the timer ``start`` is taken just before the POST, *after* the ``max_concurrency`` semaphore
  was acquired (vLLM's ``limited_request_func`` wraps the request function in the semaphore);
- every SSE message whose ``choices`` is non-empty is one chunk, even when its text is empty; the
  first is timed once it is parsed (vLLM's TTFT instant), later ones when their bytes were read;
- the output length is ``usage.completion_tokens`` of the stream (the last non-null one);
- an HTTP error status or an exception marks the request failed, with the cause as its error.

To sustain well over 100k streamed tokens/s on one core, the per-chunk work is a few byte
operations: :func:`parse_sse_event` classifies vLLM-style events without ``json.loads`` and
falls back to a full parse only when an event carries a non-null ``usage`` or looks unusual.

Against the sim engine (``sim_clock=True``) the client announces each run's arrival schedule
(``POST /sim/run``, see :mod:`pytest_mgpu.sim.clock`), tags every request with its index,
dispatches on the schedule divided by the sim's time scale, and still streams and counts every
chunk; the records then hold the modelled times stamped on the chunks, so the numbers do not
depend on when this host got round to sending or reading them. The wall-clock view is kept
beside them (``RequestRecord.wall_*``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import SSEParseError
from .metrics import RequestRecord
from .workload import Workload

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

__all__ = [
    "ChunkEvent",
    "RunOutcome",
    "SSEParseError",
    "SSEStream",
    "parse_sse_event",
    "parse_stamps",
    "request_body",
    "run_requests",
    "run_workload",
    "vllm_trust_env",
]

_perf = time.perf_counter
_T = TypeVar("_T")
#: How often a run reports its progress (seconds).
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class ChunkEvent:
    """What one SSE event means to the timer.

    ``token``: the event's ``choices`` is non-empty, so it is one chunk (vLLM's rule; its text
    may be empty). ``completion_tokens``/``prompt_tokens``: from a non-null ``usage`` object,
    else None. ``done``: the ``[DONE]`` sentinel. ``error``: a mid-stream ``{"error": ...}``.
    """

    token: bool = False
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    done: bool = False
    error: str | None = None


#: Shared, immutable results for the common cases (no allocation per token chunk).
TOKEN = ChunkEvent(token=True)
EMPTY = ChunkEvent()
DONE = ChunkEvent(done=True)

_WS = b" \t\r\n"


def _after_key(p: bytes, key: bytes) -> tuple[int, int]:
    """(occurrences of ``key``, index just past ``key`` + ws + ``:`` + ws), or (n, -1)."""
    n = p.count(key)
    if n != 1:
        return n, -1
    j = p.find(key) + len(key)
    # The common (vLLM, pydantic) form has no whitespace: one compare and done.
    if p[j : j + 1] == b":":
        j += 1
    else:
        while p[j : j + 1] in (b" ", b"\t", b"\r", b"\n") and j < len(p):
            j += 1
        if p[j : j + 1] != b":":
            return n, -1
        j += 1
    while p[j : j + 1] in (b" ", b"\t", b"\r", b"\n") and j < len(p):
        j += 1
    return n, j


def _classify_json(payload: bytes) -> ChunkEvent:
    """Classify one JSON ``data`` payload; fast for the shapes vLLM and OpenAI send."""
    n_ch, j = _after_key(payload, b'"choices"')
    if n_ch == 1 and j >= 0:
        c = payload[j : j + 1]
        if c == b"[":
            k = j + 1
            while payload[k : k + 1] in (b" ", b"\t", b"\r", b"\n") and k < len(payload):
                k += 1
            token = payload[k : k + 1] != b"]"
        elif payload.startswith(b"null", j):
            token = False
        else:
            return _classify_slow(payload)
        if b'"usage"' not in payload:
            return TOKEN if token else EMPTY
        n_us, u = _after_key(payload, b'"usage"')
        if n_us == 1 and u >= 0 and payload.startswith(b"null", u):
            return TOKEN if token else EMPTY
    # No/duplicated "choices" key (e.g. an error object, odd key names) or a real usage object.
    return _classify_slow(payload)


def _classify_slow(payload: bytes) -> ChunkEvent:
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise SSEParseError(f"SSE data is not JSON ({exc}): {payload[:200]!r}") from None
    if not isinstance(data, dict):
        raise SSEParseError(f"SSE data is not a JSON object: {payload[:200]!r}")
    token = bool(data.get("choices"))
    usage = data.get("usage")
    ct = pt = None
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            ct = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            pt = usage["prompt_tokens"]
    err = data.get("error")
    error = None if err is None else f"error event in stream: {json.dumps(err)[:500]}"
    if ct is None and pt is None and error is None:
        return TOKEN if token else EMPTY
    return ChunkEvent(token=token, completion_tokens=ct, prompt_tokens=pt, error=error)


def parse_sse_event(data: bytes) -> ChunkEvent | None:
    """Parse one server-sent event: the bytes between two blank lines, without them.

    Returns None for an event without a ``data`` field (keep-alive comments ``: ping``,
    ``event:``/``id:``/``retry:``-only events, empty events). Several ``data:`` lines are joined
    with ``\\n`` as the SSE spec says; ``\\r\\n`` line endings are accepted. ``[DONE]`` gives
    :data:`DONE`. Raises :class:`SSEParseError` when the data is neither JSON nor ``[DONE]``.
    Pure: usable on recorded streams from any engine.
    """
    # Fast path: one line "data: {...}" (what vLLM, SGLang and trtllm-serve send).
    if data.startswith(b"data: {") and b"\n" not in data:
        return _classify_json(data[6:])
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts: list[bytes] = []
    for line in lines:
        if line.startswith(b"data:"):
            v = line[5:]
            parts.append(v[1:] if v.startswith(b" ") else v)
        # ":" comments, "event:", "id:", "retry:" and blank lines carry no data.
    if not parts:
        return None
    payload = b"\n".join(parts).strip(_WS)
    if payload == b"[DONE]":
        return DONE
    if not payload:
        return None
    return _classify_json(payload)


class SSEStream:
    """Incremental splitter of an SSE byte stream into events, stamped per read.

    :meth:`feed` takes the bytes of one read and its arrival time, and returns the events that
    are complete. An event is complete at its blank line; like vLLM's ``StreamedResponseHandler``,
    an unterminated ``data: {...}`` tail that already parses as JSON is taken as complete too, so
    its time is that of the read that brought its last byte.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Complete events in ``data`` (plus what was pending), without their blank lines."""
        if self._pending:
            data = self._pending + data
        if b"\r" in data:
            hold = b""
            if data.endswith(b"\r"):  # maybe the first half of a "\r\n" split across reads
                data, hold = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + hold
        events = data.split(b"\n\n")
        tail = events.pop()
        if tail.startswith(b"data:") and tail.rstrip(_WS).endswith(b"}") and b"\n\n" not in tail:
            try:
                json.loads(tail.strip(_WS)[5:])
            except ValueError:
                pass
            else:
                events.append(tail)
                tail = b""
        self._pending = tail
        return events

    def close(self) -> list[bytes]:
        """What remains at end of stream, as a last event (servers may omit the blank line)."""
        tail, self._pending = self._pending, b""
        return [tail] if tail.strip(_WS) else []


@dataclass
class RunOutcome:
    """The records of one run. Times are ``time.perf_counter()`` seconds.

    ``dispatch_start`` is the origin of the arrival schedule, taken just before the first
    measured request is scheduled: vLLM's ``benchmark_start_time``, so ``summarize(records, n,
    outcome.dispatch_start)`` gives vLLM's duration. ``dispatch_end`` is when the last measured
    request was handed to the event loop; ``finished`` is when the last one completed.
    """

    records: list[RequestRecord]
    warmup: list[RequestRecord]
    dispatch_start: float
    dispatch_end: float
    finished: float = 0.0
    timed_out: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def request_body(
    model: str, prompt: str | Sequence[int], output_len: int, extra_body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body of one streamed ``/v1/completions`` request (as ``vllm bench serve``).

    ``prompt`` is text (the server tokenizes it) or a sequence of token ids.
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "max_tokens": output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if extra_body:
        body.update(extra_body)
    return body


#: How the sim stamps a token event of an announced run: its modelled time comes first.
_STAMP = b'data: {"mgpu_t":'
#: On the first token event, the request's modelled arrival follows.
_ARRIVAL = b'"mgpu_a":'


def parse_stamps(event: bytes) -> tuple[float, float | None]:
    """(modelled time, modelled arrival or None) of a sim token event of an announced run.

    The sim writes ``data: {"mgpu_t":T,`` (and on a request's first token ``"mgpu_a":A,``)
    before vLLM's keys; raises :class:`SSEParseError` when the stamp is missing or malformed.
    Leading line breaks are skipped: a read that ends between an event's two newlines leaves the
    second one at the start of the next event (:class:`SSEStream` emits a complete JSON tail early).
    """
    if not event.startswith(_STAMP):
        event = event.lstrip(b"\r\n")
    if not event.startswith(_STAMP):
        raise SSEParseError(f"sim token event without a modelled time stamp: {event[:120]!r}")
    try:
        j = event.index(b",", len(_STAMP))
        t = float(event[len(_STAMP) : j])
        arrival = None
        if event.startswith(_ARRIVAL, j + 1):
            k = event.index(b",", j + 1 + len(_ARRIVAL))
            arrival = float(event[j + 1 + len(_ARRIVAL) : k])
    except ValueError:
        raise SSEParseError(f"malformed sim time stamp: {event[:120]!r}") from None
    return t, arrival


@dataclass
class _Stamps:
    """The modelled times read from one stamped stream."""

    times: list[float] = field(default_factory=list)
    arrival: float | None = None


async def _consume(content: aiohttp.StreamReader, rec: RequestRecord, stamps: _Stamps | None = None) -> None:
    """Read one SSE response body into ``rec`` (chunk times, output/prompt tokens, errors).

    With ``stamps``, every token event must carry the sim's modelled time, collected there
    (``rec.chunk_times`` still gets the wall-clock time of each chunk's read).
    """
    stream = SSEStream()
    feed = stream.feed
    append = rec.chunk_times.append
    parse = parse_sse_event
    completion: int | None = None
    prompt: int | None = None
    error: str | None = None
    eof = False
    while not eof:
        data = await content.readany()
        t = _perf()
        if data:
            events = feed(data)
        else:
            eof = True
            events = stream.close()
        for ev in events:
            e = parse(ev)
            if e is TOKEN:
                if not rec.chunk_times:
                    t = _perf()  # vLLM's TTFT instant: after the first token event was parsed (docs/client.md)
                append(t)
                if stamps is not None:
                    ts, arrival = parse_stamps(ev)
                    stamps.times.append(ts)
                    if arrival is not None:
                        stamps.arrival = arrival
            elif e is None or e is EMPTY or e is DONE:
                continue
            else:
                if e.token:
                    if not rec.chunk_times:
                        t = _perf()
                    append(t)
                    if stamps is not None:
                        ts, arrival = parse_stamps(ev)
                        stamps.times.append(ts)
                        if arrival is not None:
                            stamps.arrival = arrival
                if e.completion_tokens is not None:
                    completion = e.completion_tokens
                if e.prompt_tokens is not None:
                    prompt = e.prompt_tokens
                if e.error is not None and error is None:
                    error = e.error
    rec.end = _perf()
    # Without usage, fall back to one token per chunk (vLLM re-tokenizes the text instead).
    rec.output_tokens = completion if completion is not None else len(rec.chunk_times)
    if prompt is not None:
        rec.prompt_len = prompt
    if error is not None:
        rec.error = error
    elif not rec.chunk_times:
        rec.error = "stream ended without any chunk whose choices is non-empty"


def to_model_clock(rec: RequestRecord, stamps: _Stamps, announced: float) -> None:
    """Make ``rec`` a modelled-clock record: the sim's stamps become its times, the wall view moves aside.

    ``announced`` is the request's offset in the announced schedule: its start when the stream
    carried no arrival stamp (a failed request). A stream whose token events and stamps differ
    in number cannot be timed and fails.
    """
    if rec.clock == "model":
        return
    rec.wall_start, rec.wall_chunk_times, rec.wall_end = rec.start, rec.chunk_times, rec.end
    rec.clock = "model"
    rec.start = stamps.arrival if stamps.arrival is not None else announced
    rec.chunk_times = list(stamps.times)
    rec.end = rec.chunk_times[-1] if rec.chunk_times else rec.start
    if rec.error is None and len(rec.chunk_times) != len(rec.wall_chunk_times):
        rec.error = (f"{len(rec.wall_chunk_times)} token chunks but {len(rec.chunk_times)} modelled time stamps")
    elif rec.error is None and stamps.arrival is None:
        rec.error = "the sim's stream carried no modelled arrival stamp"


async def _one_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    rec: RequestRecord,
    sem: asyncio.Semaphore | None,
    finished: list[bool],
    i: int,
    announced: float | None = None,
    stamps: _Stamps | None = None,
    *,
    deadline: float = math.inf,
    timeout_s: float = math.inf,
) -> None:
    """Send one request and read its stream into ``rec``; it ends by ``deadline`` whatever the server does.

    The deadline covers the connect, the response headers and every chunk read: a request still
    open then is cut and recorded as ``"timeout after Ns"`` (the run's ``timeout_s``).
    """
    if sem is not None:
        await sem.acquire()  # before the timer starts, as vLLM's limited_request_func
    try:
        rec.start = _perf()
        remaining = deadline - rec.start
        try:
            if remaining <= 0:
                raise TimeoutError
            await _bounded(_exchange(session, url, body, rec, stamps), remaining)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            rec.end = _perf()
            rec.error = f"timeout after {timeout_s:g}s" + (" (request never sent)" if remaining <= 0 else "")
        except Exception as exc:
            rec.end = _perf()
            rec.error = f"{type(exc).__name__}: {exc}"[:1000]
        if stamps is not None and announced is not None:
            to_model_clock(rec, stamps, announced)
        finished[i] = True
    finally:
        if sem is not None:
            sem.release()


async def _exchange(
    session: aiohttp.ClientSession, url: str, body: bytes, rec: RequestRecord, stamps: _Stamps | None
) -> None:
    """POST ``body`` and read the answer into ``rec`` (no deadline of its own: :func:`_one_request` sets it)."""
    async with session.post(url, data=body, headers=_HEADERS) as resp:
        if resp.status != 200:
            text = (await resp.read()).decode("utf-8", "replace")
            rec.end = _perf()
            rec.error = f"HTTP {resp.status} {resp.reason or ''}: {text[:500]}".strip()
        else:
            await _consume(resp.content, rec, stamps)


async def _bounded(aw: Awaitable[_T], seconds: float) -> _T:
    """``aw`` within ``seconds``, else :class:`TimeoutError` (``aw`` is cancelled and waited for).

    asyncio.wait_for, not asyncio.timeout: the plugin supports Python 3.10 (pyproject.toml). Our
    own deadline is the only one: aiohttp's timeouts are off (see :func:`run_requests`), because
    aiohttp cancels the task it times out, and that cancellation could escape as
    ``asyncio.CancelledError`` instead of a recorded timeout.
    """
    return await asyncio.wait_for(aw, max(seconds, 0.0))


_HEADERS = {"Content-Type": "application/json"}


async def _run_batch(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    records: list[RequestRecord],
    offsets: Sequence[float],
    sem: asyncio.Semaphore | None,
    deadline: float,
    timeout_s: float,
    time_scale: float | None = None,
    progress: Callable[[int, int, int, float], None] | None = None,
) -> tuple[float, float, float, bool]:
    """Dispatch ``bodies`` on the ``offsets`` schedule; (t0, last dispatch, end, timed_out).

    With ``time_scale`` (an announced sim run) the offsets are modelled seconds: request ``i``
    leaves at wall ``t0 + offsets[i] / time_scale`` and its record is converted to the modelled
    clock when it ends. ``progress(done, total, tokens, seconds)`` is called about every
    :data:`PROGRESS_INTERVAL_S` and at the end (seconds: modelled with ``time_scale``, else wall).
    """
    finished = [False] * len(bodies)
    stamps = [_Stamps() for _ in bodies] if time_scale is not None else None
    tasks: list[asyncio.Task[None]] = []
    t0 = _perf()
    t_last = t0
    wall = list(offsets) if time_scale is None else [o / time_scale for o in offsets]

    async def dispatch() -> None:
        nonlocal t_last
        for i, off in enumerate(wall):
            delay = t0 + off - _perf()
            if delay > 0:
                await asyncio.sleep(delay)
            announced = None if time_scale is None else offsets[i]
            st = stamps[i] if stamps is not None else None
            tasks.append(asyncio.create_task(
                _one_request(session, url, bodies[i], records[i], sem, finished, i, announced, st,
                             deadline=deadline, timeout_s=timeout_s)))
        t_last = _perf()
        await asyncio.gather(*tasks)

    def tell() -> None:
        if progress is None:
            return
        if stamps is not None:
            tokens = sum(len(s.times) for s in stamps)
            seconds = max((s.times[-1] for s in stamps if s.times), default=0.0)
        else:
            tokens = sum(len(r.chunk_times) for r in records)
            seconds = _perf() - t0
        progress(sum(finished), len(records), tokens, seconds)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            tell()

    tick = asyncio.create_task(ticker()) if progress is not None else None
    timed_out = False
    remaining = deadline - _perf()
    try:
        if remaining <= 0:
            raise TimeoutError
        # Each request ends by the deadline itself; this ends the schedule (requests never sent).
        await _bounded(dispatch(), remaining)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        timed_out = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = _perf()
        for i, rec in enumerate(records):
            if finished[i]:
                continue
            if rec.start == 0.0:
                rec.error = f"timeout after {timeout_s:g}s (request never sent)"
                rec.start = now
            else:
                rec.error = f"timeout after {timeout_s:g}s"
            rec.end = now
            if time_scale is not None:
                to_model_clock(rec, _Stamps(), offsets[i])
    finally:
        if tick is not None:
            tick.cancel()
    tell()
    return t0, t_last, _perf(), timed_out


def vllm_trust_env() -> bool:
    """Whether the client's session reads the environment, as ``vllm bench serve``'s does (``trust_env=True``).

    With it, aiohttp looks up ``~/.netrc`` and the proxy variables in a worker thread on every
    request, after vLLM's TTFT clock has started: about 0.5 ms per request on the 2-core dev
    machine (``benchmarks/ttft_instants.py``; docs/client.md). The client does the same work at the
    same place so that its TTFT is vLLM's. Not when a proxy variable is set: the benchmark's
    requests must not go through a proxy (vLLM's would), and the two TTFTs then differ by that work.
    """
    import urllib.request

    return not any(k in ("http", "https", "ws", "wss") for k in urllib.request.getproxies())


async def announce_run(
    session: aiohttp.ClientSession, base_url: str, offsets: Sequence[float], max_concurrency: int | None
) -> dict[str, Any] | None:
    """Announce a schedule to the sim (``POST /sim/run``); its answer, or None when it keeps wall time.

    The answer holds ``run`` (the id to tag requests with), ``origin`` and ``time_scale``.
    """
    body = {"offsets": list(offsets), "max_concurrency": max_concurrency}
    async with session.post(base_url + "/sim/run", json=body) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"the sim refused the run's schedule: HTTP {resp.status}: {text[:300]}")
    data: dict[str, Any] = json.loads(text)
    return data if data.get("clock") == "model" else None


#: Seconds :func:`close_run` waits for the sim's answer: it runs after the run, maybe past its deadline.
CLOSE_GRACE_S = 2.0


async def close_run(session: aiohttp.ClientSession, base_url: str, run_id: int) -> None:
    """Tell the sim the run is over, so it never waits for a request that will not come.

    Best effort, within :data:`CLOSE_GRACE_S`: a sim that crashed or hangs gets no more time.
    """

    async def close() -> None:
        async with session.post(base_url + "/sim/run/close", json={"run": run_id}) as resp:
            await resp.read()

    try:
        await _bounded(close(), CLOSE_GRACE_S)
    except (Exception, asyncio.TimeoutError):  # the server may be gone (a crash fault) or hung: nothing to close
        pass


def _never_sent(records: list[RequestRecord], timeout_s: float) -> None:
    """The deadline passed before these requests could be sent (the sim never took their schedule)."""
    now = _perf()
    for rec in records:
        rec.start = rec.end = now
        rec.error = f"timeout after {timeout_s:g}s (request never sent)"


async def run_requests(
    base_url: str,
    model: str,
    workload: Workload,
    *,
    timeout_s: float = 600.0,
    extra_body: dict[str, Any] | None = None,
    prompts: tuple[Sequence[str | Sequence[int]], Sequence[str | Sequence[int]]] | None = None,
    sim_clock: bool = False,
    progress: Callable[[int, int, int, float], None] | None = None,
    trust_env: bool | None = None,
) -> RunOutcome:
    """Send ``workload`` to ``{base_url}/v1/completions`` and record every request.

    Warm-up requests (``workload.warmup_requests``, distinct prompts) are sent concurrently and
    awaited first; then the measured requests on ``workload.arrival_offsets()``, at most
    ``workload.max_concurrency`` in flight. ``timeout_s`` bounds the whole run: a request still
    open then is recorded with the error ``"timeout after Ns"``; this never hangs.
    ``prompts`` (measured, warm-up) replaces the workload's token-id prompts, e.g. with text
    (:func:`pytest_mgpu.measure.prompts.build_prompts`); a text prompt counts ``input_len`` tokens until
    the server's ``usage.prompt_tokens`` says otherwise.

    ``sim_clock=True`` (the sim engine only): announce each phase's schedule and time the
    requests by the modelled stamps on their chunks (``meta["clock"] == "model"``; records and
    ``dispatch_start`` are then modelled seconds from the run's origin). A sim in zero-delay
    mode declines, and the wall clock is used. ``progress(done, total, tokens, seconds)``
    follows the measured phase (live progress). ``trust_env`` (None: :func:`vllm_trust_env`) is
    the session's, as in ``vllm bench serve``: it decides what work falls inside the TTFT clock.
    """
    import aiohttp  # lazy: heavy, and the SSE parsing above is used without it

    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0")
    url = base_url.rstrip("/") + "/v1/completions"
    deadline = _perf() + timeout_s
    trust = vllm_trust_env() if trust_env is None else trust_env
    out_len = workload.output_len
    n = workload.num_requests
    w = workload.warmup_requests
    # Prompt streams: offset 0 for measured requests, 1 for warm-up, so they never coincide.
    if prompts is not None:
        measured_prompts, warm_prompts = list(prompts[0]), list(prompts[1])
        if (len(measured_prompts), len(warm_prompts)) != (n, w):
            raise ValueError(f"prompts has {len(measured_prompts)}+{len(warm_prompts)} entries, the workload {n}+{w}")
    else:
        measured_prompts = list(workload.prompts(n, offset=0))
        warm_prompts = list(workload.prompts(w, offset=1)) if w else []
    offsets = workload.arrival_offsets()

    def encode(ps: list[str | Sequence[int]], run: dict[str, Any] | None = None) -> list[bytes]:
        out = []
        for i, p in enumerate(ps):
            body = request_body(model, p, out_len, extra_body)
            if run is not None:
                body["mgpu_sim"] = {"run": run["run"], "index": i}
            out.append(json.dumps(body).encode())
        return out

    def new_records(ps: list[str | Sequence[int]]) -> list[RequestRecord]:
        return [
            RequestRecord(prompt_len=workload.input_len if isinstance(p, str) else len(p),
                          expected_output_len=out_len, start=0.0)
            for p in ps
        ]

    warm_recs, recs = new_records(warm_prompts), new_records(measured_prompts)
    base = base_url.rstrip("/")
    scale: float | None = None
    sem = asyncio.Semaphore(workload.max_concurrency) if workload.max_concurrency else None
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False)
    # Our own deadline is the only one (_bounded): no aiohttp timeout, which would cancel our tasks.
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(), read_bufsize=1 << 18, auto_decompress=False,
        trust_env=trust,
    ) as session:

        async def announce(offs: Sequence[float]) -> dict[str, Any] | None:
            return await _bounded(announce_run(session, base, offs, workload.max_concurrency), deadline - _perf())

        warm_timed_out = timed_out = False
        run: dict[str, Any] | None = None
        cpu0 = time.process_time()
        t0 = t_last = t_end = _perf()
        try:
            if w:
                warm_run = await announce([0.0] * w) if sim_clock else None
                try:
                    *_, warm_timed_out = await _run_batch(
                        session, url, encode(warm_prompts, warm_run), warm_recs, [0.0] * w, sem, deadline,
                        timeout_s, time_scale=float(warm_run["time_scale"]) if warm_run else None,
                    )
                finally:
                    if warm_run is not None:
                        await close_run(session, base, warm_run["run"])
            run = await announce(offsets) if sim_clock else None
        except (TimeoutError, asyncio.TimeoutError):  # the sim never answered the schedule: nothing was sent
            timed_out = True
            _never_sent([r for r in warm_recs + recs if r.start == 0.0], timeout_s)
        if not timed_out:
            if run is not None:
                scale = float(run["time_scale"])
            cpu0 = time.process_time()
            try:
                t0, t_last, t_end, timed_out = await _run_batch(
                    session, url, encode(measured_prompts, run), recs, offsets, sem, deadline, timeout_s,
                    time_scale=scale, progress=progress,
                )
            finally:
                if run is not None:
                    await close_run(session, base, run["run"])
    meta: dict[str, Any] = {
        "url": url,
        "request_rate": "inf" if math.isinf(workload.request_rate) else workload.request_rate,
        "max_concurrency": workload.max_concurrency,
        # This process's CPU time over the measured phase: a client-bottleneck diagnostic.
        "client_cpu_s": time.process_time() - cpu0,
        "clock": "wall" if run is None else "model",
    }
    if run is not None:
        # Modelled seconds from the run's origin; the wall-clock view goes to meta.
        meta.update(time_scale=scale, wall_dispatch_start=t0, wall_dispatch_end=t_last, wall_finished=t_end)
        t0 = 0.0
        t_last = max((r.start for r in recs), default=0.0)
        t_end = max((r.end for r in recs), default=0.0)
    return RunOutcome(
        records=recs,
        warmup=warm_recs,
        dispatch_start=t0,
        dispatch_end=t_last,
        finished=t_end,
        timed_out=timed_out or warm_timed_out,
        meta=meta,
    )


def run_workload(
    base_url: str,
    model: str,
    workload: Workload,
    *,
    timeout_s: float = 600.0,
    extra_body: dict[str, Any] | None = None,
    prompts: tuple[Sequence[str | Sequence[int]], Sequence[str | Sequence[int]]] | None = None,
    sim_clock: bool = False,
    progress: Callable[[int, int, int, float], None] | None = None,
    trust_env: bool | None = None,
) -> RunOutcome:
    """Synchronous :func:`run_requests` (runs its own event loop with ``asyncio.run``)."""
    return asyncio.run(run_requests(base_url, model, workload, timeout_s=timeout_s, extra_body=extra_body,
                                    prompts=prompts, sim_clock=sim_clock, progress=progress, trust_env=trust_env))
