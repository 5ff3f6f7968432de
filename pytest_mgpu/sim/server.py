"""The simulated engine: an OpenAI-compatible streaming HTTP server timed by :mod:`.model`.

Run it like any engine::

    python -m pytest_mgpu.sim --model pytest_mgpu/models/tiny-llama --tp 2 --port 8000

It speaks the subset of ``vllm serve`` that benchmarks use (``/health``, ``/v1/models``,
``/version``, ``/v1/completions`` with SSE streaming) plus ``GET /sim/requests`` (the server's
true per-request timings) and ``POST /sim/reset``. HTTP/1.1 is parsed by hand on raw asyncio so
that one core can stream hundreds of thousands of tokens per second in zero-delay mode.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import math
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import BadRequest, SimError, SimOptionError
from .clock import MAX_LAG_S, ClientRun, ModelClock, validate_schedule
from .model import GPU_PROFILES, PerfModel, SimOptions, load_shape
from .scheduler import Scheduler, SimRequest

#: Ground-truth records kept for ``GET /sim/requests``.
MAX_RECORDS = 100_000
#: Zero-delay mode writes this many token events per socket write.
ZERO_BATCH = 32
#: A stalled modelled clock gives up on a run whose due request has not come after this long.
STALL_TIMEOUT_S = 120.0
_MAX_HEADER = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
            413: "Payload Too Large", 500: "Internal Server Error"}
_TOKEN_TEXT = [b" t%d" % i for i in range(1000)]
# vLLM 0.32 serialises token chunks with exclude_unset=True: no "usage" key.
_NULL_TAIL = (
    b'","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
)
_LAST_TAIL = (
    b'","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
)
_DONE = b"data: [DONE]\n\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nserver: pytest-mgpu-sim\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def log(msg: str) -> None:
    """One line to stdout (the engine log), flushed."""
    print(f"[sim {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _frame(body: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(body), body)


def _response(status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nserver: pytest-mgpu-sim\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status, _REASONS.get(status, "OK").encode(), content_type, len(body))
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _error(status: int, message: str, kind: str = "BadRequestError") -> bytes:
    """An OpenAI-style error response, as vLLM sends it."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return _response(status, json.dumps(body).encode())


class Completion:
    """One ``/v1/completions`` request: builds its SSE bytes and writes them to its connection."""

    __slots__ = (
        "arrival",
        "conn",
        "created",
        "done",
        "first",
        "index",
        "max_tokens",
        "model_arrival",
        "model_first",
        "model_json",
        "prefix",
        "prompt_len",
        "req",
        "rid",
        "run",
        "sent",
        "stream",
        "usage",
    )

    def __init__(self, conn: HttpConnection, rid: str, model_json: bytes, stream: bool, usage: bool,
                 prompt_len: int, max_tokens: int, arrival: float) -> None:
        self.conn = conn
        self.rid = rid
        self.created = int(time.time())
        self.model_json = model_json
        self.prefix = b'data: {"id":"%s","object":"text_completion","created":%d,"model":%s,' \
                      b'"choices":[{"index":0,"text":"' % (rid.encode(), self.created, model_json)
        self.stream, self.usage = stream, usage
        self.prompt_len, self.max_tokens = prompt_len, max_tokens
        self.sent = 0
        self.req: SimRequest | None = None
        self.arrival = arrival
        self.first: float | None = None  # first token chunk handed to the transport (monotonic)
        self.model_first: float | None = None  # modelled end of the step that produced it
        self.model_arrival: float | None = None  # modelled arrival (announced, or mapped from the wall clock)
        self.run: ClientRun | None = None  # the announced schedule this request belongs to
        self.index = -1  # its index in that schedule
        self.done = False

    def token_events(self, upto: int, t: float | None = None) -> bytes:
        """SSE events for tokens ``sent+1 .. upto``, as one HTTP chunk.

        Requests of an announced run (``mgpu_sim`` in the body) get their modelled time stamped
        on every event, as seconds from the run's origin, as the first key: ``"mgpu_t":T``; the
        first token's event also carries the request's modelled arrival, ``"mgpu_a":A``.
        """
        prefix = first = self.prefix
        run = self.run
        if run is not None and t is not None:
            head, body = b'data: {"mgpu_t":%.9f,' % (t - run.origin), self.prefix[len(b"data: {"):]
            prefix = first = head + body
            if self.sent == 0 and self.model_arrival is not None:
                first = head + b'"mgpu_a":%.9f,' % (self.model_arrival - run.origin) + body
        last = self.max_tokens
        parts = []
        for k in range(self.sent, upto):
            parts.append((first if k == 0 else prefix) + _TOKEN_TEXT[k % 1000]
                         + (_LAST_TAIL if k + 1 == last else _NULL_TAIL))
        self.sent = upto
        return _frame(b"".join(parts))

    def tail(self) -> bytes:
        """The usage chunk (when asked for), ``[DONE]`` and the terminating HTTP chunk."""
        body = b""
        if self.usage:
            u = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
                self.prompt_len, self.prompt_len + self.sent, self.sent)
            body += b'data: {"id":"%s","object":"text_completion","created":%d,"model":%s,"choices":[],' \
                    b'"usage":%s}\n\n' % (self.rid.encode(), self.created, self.model_json, u)
        return _frame(body + _DONE) + b"0\r\n\r\n"

    def full_response(self) -> bytes:
        """The non-streaming JSON response."""
        text = "".join(_TOKEN_TEXT[k % 1000].decode() for k in range(self.sent))
        body = {
            "id": self.rid, "object": "text_completion", "created": self.created,
            "model": json.loads(self.model_json),
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                         "stop_reason": None, "prompt_logprobs": None}],
            "usage": {"prompt_tokens": self.prompt_len, "total_tokens": self.prompt_len + self.sent,
                      "completion_tokens": self.sent, "prompt_tokens_details": None},
        }
        return _response(200, json.dumps(body).encode())


class SimServer:
    """State shared by all connections: the scheduler, ground truth, faults."""

    def __init__(self, opts: SimOptions, perf: PerfModel | None, served_name: str, root: str,
                 max_model_len: int) -> None:
        self.opts = opts
        self.perf = perf
        self.sched = Scheduler(perf) if perf is not None and not opts.instant else None
        self.served_name = served_name
        self.model_json = json.dumps(served_name).encode()
        self.root = root
        self.max_model_len = max_model_len
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.completions_started = 0
        self.hung = False
        self.t0 = time.monotonic()
        self.wake = asyncio.Event()
        self.clock = ModelClock(opts.time_scale, self.t0)
        self.runs: dict[int, ClientRun] = {}  # announced schedules still open
        self.run_ids = itertools.count(1)
        # Untagged requests not yet admitted: (modelled arrival, sequence, completion).
        self.plain: list[tuple[float, int, Completion]] = []
        self.plain_seq = itertools.count()
        self.stall: tuple[int, int, float] | None = None  # (run, index, wall time it began)
        self.stalls = 0
        self.lag_steps = 0

    # --- ground truth --------------------------------------------------------------------------
    def record(self, c: Completion, first: float, finish: float, model_first: float | None = None,
               model_finish: float | None = None) -> None:
        """Store the true timings of a finished request.

        ``first``/``finish``: when the first/last token chunk was handed to the transport
        (``time.monotonic()``, the clock of ``arrival``), i.e. what really went on the wire.
        ``model_first``/``model_finish``: the modelled step ends that produced them, on the
        modelled clock (roofline mode only); ``model_arrival`` is the request's modelled arrival.
        """
        out = c.sent
        arrival, t0 = c.arrival, self.t0
        rec: dict[str, Any] = {
            "id": c.rid, "prompt_tokens": c.prompt_len, "output_tokens": out,
            "arrival_s": arrival - t0, "first_token_s": first - t0, "finish_s": finish - t0,
            "ttft_ms": (first - arrival) * 1e3,
            "tpot_ms": (finish - first) / (out - 1) * 1e3 if out > 1 else None,
            "e2el_ms": (finish - arrival) * 1e3,
            "preemptions": c.req.preemptions if c.req is not None else 0,
        }
        if model_first is not None and model_finish is not None and c.model_arrival is not None:
            m_arr = c.model_arrival
            rec.update(
                model_arrival_s=m_arr, model_first_token_s=model_first, model_finish_s=model_finish,
                model_ttft_ms=(model_first - m_arr) * 1e3,
                model_tpot_ms=(model_finish - model_first) / (out - 1) * 1e3 if out > 1 else None,
                model_e2el_ms=(model_finish - m_arr) * 1e3,
            )
            if c.run is not None:
                rec.update(run=c.run.run_id, index=c.index)
        self.records.append(rec)

    # --- announced schedules -------------------------------------------------------------------
    def open_run(self, offsets: list[float], concurrency: int | None) -> ClientRun:
        """Register a client's schedule; its origin is the modelled clock now (``POST /sim/run``).

        The origin is the end of the last modelled step, never a wall-clock reading, so a run
        that starts on an idle server always starts from the same modelled state.
        """
        run = ClientRun(next(self.run_ids), self.clock.now, offsets, concurrency)
        if not self.runs:
            # Pace the new run from now: its origin is due at this wall-clock instant.
            self.clock.anchor(run.origin, time.monotonic())
        self.runs[run.run_id] = run
        self.wake.set()
        return run

    def close_run(self, run_id: int) -> bool:
        """The client is done with a run (or gave up): never wait for its requests again."""
        run = self.runs.pop(run_id, None)
        if run is None:
            return False
        run.closed = True
        for comp in run.received.values():
            if not comp.done and comp.conn.transport is not None:
                comp.conn.transport.close()  # never admitted: the client gave up on it
        run.received.clear()
        self.wake.set()
        return True

    def admit_due(self, t: float) -> tuple[ClientRun, int] | None:
        """Move every request due by modelled ``t`` into the scheduler, earliest first.

        Returns the (run, index) of a tagged request that is due but has not arrived yet: the
        modelled clock must not pass ``t`` before it does. None when everything due is in.
        """
        sched = self.sched
        assert sched is not None
        while True:
            best: ClientRun | None = None
            best_start = math.inf
            for cand in self.runs.values():
                s = cand.next_start()
                if s is not None and s <= t and s < best_start:
                    best, best_start = cand, s
            if self.plain and self.plain[0][0] <= t and self.plain[0][0] < best_start:
                _, _, pc = heapq.heappop(self.plain)
                if not pc.done and pc.req is not None:
                    sched.add(pc.req)
                continue
            if best is None:
                return None
            run, start = best, best_start
            k = run.next
            comp = run.received.pop(k, None)
            if comp is None:
                return run, k
            run.next += 1
            comp.model_arrival = start
            if comp.done or comp.req is None:  # the client went away before its turn
                run.finished(start)
                continue
            comp.req.arrival = start
            sched.add(comp.req)

    def next_event(self) -> float | None:
        """Modelled time of the earliest known arrival not admitted yet (when the engine is idle)."""
        times = [s for run in self.runs.values() if (s := run.next_start()) is not None]
        if self.plain:
            times.append(self.plain[0][0])
        return min(times) if times else None

    def prune_runs(self) -> None:
        """Forget runs whose every request finished."""
        for run_id in [r for r, run in self.runs.items() if run.done]:
            del self.runs[run_id]

    async def wait_for(self, run: ClientRun, k: int) -> None:
        """Stall the modelled clock until request ``k`` of ``run`` arrives (or give the run up)."""
        now = time.monotonic()
        if self.stall is None or self.stall[:2] != (run.run_id, k):
            self.stall = (run.run_id, k, now)
            self.stalls += 1
        waited = now - self.stall[2]
        if waited >= STALL_TIMEOUT_S:
            log(f"run {run.run_id}: request {k} was due at modelled t={run.start_of(k)} but has not arrived "
                f"after {waited:.0f}s; giving up on the run's remaining requests")
            self.close_run(run.run_id)
            self.stall = None
            return
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), STALL_TIMEOUT_S - waited)
        except asyncio.TimeoutError:
            pass

    # --- faults ------------------------------------------------------------------------------
    def count_completion(self) -> None:
        """Count a started completion request and fire ``crash_after`` / ``hang_after`` / ``speed_until``."""
        self.completions_started += 1
        n = self.completions_started - 1  # requests served before this one
        if self.opts.crash_after >= 0 and n >= self.opts.crash_after:
            log(f"FAULT crash_after={self.opts.crash_after}: exiting abruptly on completion request {n + 1}")
            os._exit(3)
        if self.opts.hang_after >= 0 and n >= self.opts.hang_after and not self.hung:
            log(f"FAULT hang_after={self.opts.hang_after}: no longer answering anything (request {n + 1})")
            self.hung = True
        if self.opts.speed_until >= 0 and n == self.opts.speed_until and self.opts.speed != 1.0:
            log(f"FAULT speed_until={self.opts.speed_until}: speed {self.opts.speed:g} -> 1 from request {n + 1} on")
            self.opts.speed = 1.0  # the scheduler reads the same options

    def host_lag(self) -> None:
        """Fault ``host_lag_ms``/``host_lag_every``: block the event loop, as a busy host would."""
        every = self.opts.host_lag_every
        if every and self.opts.host_lag_ms > 0:
            self.lag_steps += 1
            if self.lag_steps % every == 0:
                if self.lag_steps == every:
                    log(f"FAULT host_lag_ms={self.opts.host_lag_ms:g} every {every} steps: blocking the server")
                time.sleep(self.opts.host_lag_ms / 1e3)

    # --- the engine loop -----------------------------------------------------------------------
    async def engine_loop(self) -> None:
        """Run modelled steps, paced by the wall clock, and hand emitted tokens to their connections.

        The modelled clock never restarts: a step starts when the previous one ended (when idle,
        at the next arrival) and first waits for every announced request due by then. Pacing
        only decides when the tokens are written: each step's tokens leave at the wall-clock
        instant its modelled end maps to, or at once when the host runs late.
        """
        sched = self.sched
        assert sched is not None
        clock = self.clock
        loop = asyncio.get_running_loop()
        while True:
            if self.hung:
                await asyncio.Future()  # never again
            self.prune_runs()
            if sched.has_work:
                t = clock.now
            else:
                nxt = self.next_event()
                if nxt is None:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                t = max(nxt, clock.now)
            missing = self.admit_due(t)
            if missing is not None:
                await self.wait_for(*missing)
                continue
            self.stall = None
            if not sched.has_work:
                continue
            step = sched.plan(t)
            if step is None:  # pragma: no cover - admitted requests always fit (max_model_len <= KV)
                log(f"scheduler has waiting work but planned no step at t={t}")
                await asyncio.sleep(0.01)
                continue
            end = t + step.duration
            target = clock.wall_of(end)
            delay = target - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            if self.hung:
                continue
            self.host_lag()
            if not self.runs and loop.time() - target > MAX_LAG_S:
                # Only untagged requests (plain clients): re-anchor the pacing rather than burst.
                clock.anchor(end, loop.time())
                clock.reanchors += 1
            clock.advance(end)
            for req in sched.finish(step, end):
                comp: Completion = req.user
                if req.finished and comp.run is not None:
                    comp.run.finished(end)
                comp.conn.deliver(comp, req, end)


class HttpConnection(asyncio.Protocol):
    """A minimal HTTP/1.1 server connection: keep-alive, Content-Length bodies, one request at a time."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a response is being produced; later requests wait in `buf`
        self.closing = False
        self.active: Completion | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: abort its request and free its KV blocks."""
        self.transport = None
        self.can_write.set()
        c = self.active
        if c is not None and not c.done:
            c.done = True
            sched = self.server.sched
            if c.req is not None and sched is not None and c.req.state in ("waiting", "running"):
                sched.abort(c.req)
                if c.run is not None:
                    c.run.finished(self.server.clock.now)
            self.server.wake.set()

    def pause_writing(self) -> None:
        """Flow control: the transport's buffer is full."""
        self.can_write.clear()

    def resume_writing(self) -> None:
        """Flow control: the transport's buffer drained."""
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        """Buffer the bytes and serve the requests they complete."""
        if self.server.hung:
            return
        self.buf += data
        if not self.busy:
            self.process()

    # --- requests ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes unless the connection is gone or the server hangs."""
        if self.transport is not None and not self.server.hung:
            self.transport.write(data)

    def finish_response(self, close: bool = False) -> None:
        """The current response is complete: close or serve the next pipelined request."""
        self.busy = False
        self.active = None
        if close or self.closing:
            if self.transport is not None:
                self.transport.close()
            return
        if self.buf:
            self.process()

    def process(self) -> None:
        """Parse and dispatch as many complete requests as are buffered."""
        while not self.busy and self.transport is not None and not self.server.hung:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEADER:
                    self.transport.write(_error(413, "request headers too large"))
                    self.transport.close()
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self.transport.write(_error(400, f"malformed request line {lines[0]!r}"))
                self.transport.close()
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.transport.write(_error(411, "chunked request bodies are not supported; send Content-Length"))
                self.transport.close()
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self.transport.write(_error(400, "bad Content-Length"))
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            conn_hdr = headers.get("connection", "").lower()
            self.closing = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
            self.busy = True
            self.dispatch(method, target.split("?", 1)[0], body)

    def respond(self, data: bytes) -> None:
        """Send a complete response and move on."""
        self.write(data)
        self.finish_response()

    def dispatch(self, method: str, path: str, body: bytes) -> None:
        """Route one request."""
        srv = self.server
        if path == "/v1/completions":
            if method != "POST":
                return self.respond(_error(405, "use POST for /v1/completions", "MethodNotAllowed"))
            return self.start_completion(body)
        if method == "GET":
            if path == "/health":
                return self.respond(_response(200, b""))
            if path == "/v1/models":
                data = {"object": "list", "data": [{
                    "id": srv.served_name, "object": "model", "created": int(time.time()), "owned_by": "pytest-mgpu",
                    "root": srv.root, "parent": None, "max_model_len": srv.max_model_len, "permission": []}]}
                return self.respond(_response(200, json.dumps(data).encode()))
            if path == "/version":
                return self.respond(_response(200, json.dumps({"version": __version__}).encode()))
            if path == "/sim/requests":
                data = {"clock": "monotonic seconds since server start", "requests": list(srv.records)}
                return self.respond(_response(200, json.dumps(data).encode()))
            if path == "/sim/info":
                perf = srv.perf
                info: dict[str, Any] = {"options": vars(srv.opts), "instant": srv.opts.instant}
                if srv.sched is not None:
                    info.update(running=len(srv.sched.running), waiting=len(srv.sched.waiting),
                                free_blocks=srv.sched.free_blocks, busy_periods=srv.sched.busy_periods,
                                drift_factor=srv.sched.factor, model_clock=srv.clock.now,
                                time_scale=srv.clock.scale, reanchors=srv.clock.reanchors, stalls=srv.stalls,
                                runs=[r.describe() for r in srv.runs.values()])
                if perf is not None:
                    info.update(kv_tokens=perf.kv_tokens, kv_blocks=perf.kv_blocks, max_model_len=perf.max_model_len,
                                describe=perf.describe())
                return self.respond(_response(200, json.dumps(info).encode()))
        if method == "POST" and path == "/sim/reset":
            srv.records.clear()
            return self.respond(_response(200, b'{"status":"ok"}'))
        if method == "POST" and path == "/sim/run":
            return self.respond(self.announce_run(body))
        if method == "POST" and path == "/sim/run/close":
            try:
                run_id = int(json.loads(body)["run"])
            except (ValueError, KeyError, TypeError):
                return self.respond(_error(400, 'the body must be {"run": ID}'))
            closed = srv.close_run(run_id)
            return self.respond(_response(200, json.dumps({"run": run_id, "closed": closed}).encode()))
        return self.respond(_error(404, f"{method} {path} not found", "NotFoundError"))

    def announce_run(self, body: bytes) -> bytes:
        """``POST /sim/run``: a client announces its arrival schedule (see :mod:`.clock`)."""
        srv = self.server
        # Zero-delay mode has no modelled time; clock=wall declines it: clients time by the wall clock.
        if srv.sched is None or srv.opts.clock == "wall":
            return _response(200, json.dumps({"run": None, "clock": "wall"}).encode())
        try:
            offsets, concurrency = validate_schedule(json.loads(body))
        except ValueError as exc:
            return _error(400, f"POST /sim/run: {exc}")
        run = srv.open_run(offsets, concurrency)
        data = {"run": run.run_id, "clock": "model", "origin": run.origin, "time_scale": srv.clock.scale}
        return _response(200, json.dumps(data).encode())

    # --- completions -------------------------------------------------------------------------
    def parse_completion(self, body: bytes) -> tuple[int, int, bool, bool, tuple[int, int] | None]:
        """Validate a completion request.

        Returns (prompt_len, max_tokens, stream, include_usage, tag); ``tag`` is the (run,
        index) of an announced schedule from the body's ``"mgpu_sim": {"run": R, "index": I}``.
        """
        srv = self.server
        try:
            req = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(req, dict):
            raise BadRequest("request body must be a JSON object")
        model = req.get("model")
        if model is not None and model != srv.served_name:
            raise BadRequest(f"The model `{model}` does not exist.", 404, "NotFoundError")
        prompt = req.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            plen = len(prompt.split())
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            plen = len(prompt)
        elif prompt is None:
            raise BadRequest("field 'prompt' is required")
        else:
            raise BadRequest("'prompt' must be a string, a list of token ids, or a list holding one of them")
        if plen < 1:
            raise BadRequest("the prompt is empty")
        max_tokens = req.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens!r}.")
        min_tokens = req.get("min_tokens", 0) or 0
        if not isinstance(min_tokens, int) or min_tokens < 0 or min_tokens > max_tokens:
            raise BadRequest(f"min_tokens must be between 0 and max_tokens={max_tokens}, got {min_tokens!r}.")
        if req.get("n", 1) != 1:
            raise BadRequest("the sim supports n=1 only")
        if plen + max_tokens > srv.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {srv.max_model_len} tokens. However, you requested "
                f"{plen + max_tokens} tokens ({plen} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.")
        stream = bool(req.get("stream", False))
        opts = req.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise BadRequest("stream_options must be an object")
        tag = req.get("mgpu_sim")
        parsed_tag: tuple[int, int] | None = None
        if tag is not None:
            try:
                parsed_tag = int(tag["run"]), int(tag["index"])
            except (KeyError, TypeError, ValueError):
                raise BadRequest('mgpu_sim must be {"run": RUN, "index": I} (see POST /sim/run)') from None
        return plen, max_tokens, stream, bool(opts.get("include_usage", False)), parsed_tag

    def start_completion(self, body: bytes) -> None:
        """Admit a completion request into the scheduler (or the zero-delay writer)."""
        srv = self.server
        arrival = time.monotonic()
        try:
            plen, max_tokens, stream, usage, tag = self.parse_completion(body)
        except BadRequest as exc:
            return self.respond(_error(exc.status, str(exc), exc.kind))
        srv.count_completion()
        if srv.hung:
            return
        if srv.opts.short_tokens > 0 and srv.opts.short_tokens < max_tokens:
            max_tokens = srv.opts.short_tokens
        comp = Completion(self, f"cmpl-{uuid.uuid4().hex}", srv.model_json, stream, usage, plen, max_tokens, arrival)
        self.active = comp
        if stream:
            self.write(_STREAM_HEAD)
        if srv.sched is None:
            asyncio.get_running_loop().create_task(self.zero_writer(comp))
            return
        comp.req = SimRequest(rid=srv.completions_started, arrival=0.0, prompt_len=plen,
                              max_tokens=max_tokens, user=comp)
        run = srv.runs.get(tag[0]) if tag is not None else None
        if run is not None and tag is not None and run.next <= tag[1] < run.size and tag[1] not in run.received:
            # Its modelled arrival is announced; the engine loop admits it when it is due.
            comp.run, comp.index = run, tag[1]
            run.received[tag[1]] = comp
        else:
            if tag is not None:
                log(f"request tagged run={tag[0]} index={tag[1]} matches no open run: timed as untagged")
            comp.model_arrival = comp.req.arrival = srv.clock.model_of(arrival)
            heapq.heappush(srv.plain, (comp.req.arrival, next(srv.plain_seq), comp))
        srv.wake.set()

    def deliver(self, comp: Completion, req: SimRequest, t: float) -> None:
        """The engine emitted token ``req.num_output`` of ``comp`` at modelled time ``t``.

        Ground truth takes ``time.monotonic()`` right after the bytes are handed to the
        transport (two clock reads per request, none per middle token).
        """
        if comp.done:
            return
        last = req.num_output >= comp.max_tokens
        if comp.stream:
            data = comp.token_events(req.num_output, t)
            # The last token chunk, usage and [DONE] leave in one write, as the client sees them
            # in one read anyway.
            self.write(data + comp.tail() if last else data)
        else:
            comp.sent = req.num_output
        if comp.first is None:
            comp.first = time.monotonic()
            comp.model_first = t
        if last:
            comp.done = True
            if not comp.stream:
                self.write(comp.full_response())
            finish = time.monotonic()
            self.server.record(comp, comp.first, finish, comp.model_first, t)
            self.finish_response()

    async def zero_writer(self, comp: Completion) -> None:
        """Zero-delay mode: write every token as fast as the socket takes them."""
        srv = self.server
        try:
            while comp.sent < comp.max_tokens:
                if self.transport is None or srv.hung:
                    return
                upto = min(comp.sent + ZERO_BATCH, comp.max_tokens)
                if comp.stream:
                    if upto < comp.max_tokens:
                        self.write(comp.token_events(upto))
                    else:
                        self.write(comp.token_events(upto) + comp.tail())
                        break
                    if comp.first is None:
                        comp.first = time.monotonic()
                    if not self.can_write.is_set():
                        await self.can_write.wait()
                    else:
                        await asyncio.sleep(0)  # let other streams interleave
                else:
                    comp.sent = upto
            if self.transport is None or srv.hung:
                return
            if not comp.stream:
                self.write(comp.full_response())
            finish = time.monotonic()
            comp.done = True
            srv.record(comp, comp.first if comp.first is not None else finish, finish)
            self.finish_response()
        except Exception as exc:  # pragma: no cover - keep the server alive
            log(f"zero writer failed: {exc!r}")


def _parse_opts(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SimOptionError(f"--opt {item!r} is not KEY=VALUE; valid keys: {', '.join(SimOptions.names())}")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m pytest_mgpu.sim``."""
    p = argparse.ArgumentParser(prog="python -m pytest_mgpu.sim",
                                description="Simulated OpenAI-compatible LLM server (roofline-timed)")
    p.add_argument("--model", required=True, help="Model directory holding config.json")
    p.add_argument("--tp", type=int, default=1, help="Tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="Pipeline parallel size")
    p.add_argument("--gpu-mem-gb", type=float, default=None, help="Cap on memory per GPU, GiB")
    p.add_argument("--gpu", default=None, help=f"GPU profile: {', '.join(GPU_PROFILES)} (default v100-16gb)")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind")
    p.add_argument("--port", type=int, default=8000, help="Port to bind")
    p.add_argument("--served-model-name", default=None, help="Model name in the API (default: the directory name)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help=f"Sim option, repeatable: {', '.join(SimOptions.names())}")
    return p


def setup(argv: list[str]) -> tuple[SimOptions, PerfModel | None, str, str, int]:
    """Parse argv and build the model; raise SimError on any problem."""
    args = build_parser().parse_args(argv)
    pairs = _parse_opts(args.opt)
    if args.gpu is not None:
        pairs.setdefault("gpu", args.gpu)
    opts = SimOptions.parse(pairs)
    spec = load_shape(args.model)
    if args.tp < 1 or args.pp < 1:
        raise SimError(f"--tp {args.tp} / --pp {args.pp} must be >= 1")
    name = args.served_model_name or spec.name
    if opts.instant:
        return opts, None, name, str(args.model), spec.max_position
    perf = PerfModel(spec, args.tp, args.pp, args.gpu_mem_gb, opts)
    return opts, perf, name, str(args.model), perf.max_model_len


async def serve(opts: SimOptions, perf: PerfModel | None, name: str, root: str, max_len: int,
                host: str, port: int, ready: Callable[[], None] | None = None) -> None:
    """Listen until cancelled."""
    srv = SimServer(opts, perf, name, root, max_len)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(srv), host, port, reuse_address=True, backlog=1024)
    engine = loop.create_task(srv.engine_loop()) if srv.sched is not None else None
    log(f"listening on http://{host}:{port} (served model name {name!r})")
    if ready is not None:
        ready()
    try:
        async with server:
            await server.serve_forever()
    finally:
        if engine is not None:
            engine.cancel()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, perf, name, root, max_len = setup(argv)
    except SimOptionError as exc:
        print(f"sim: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except SimError as exc:
        print(f"sim: error: {exc}", file=sys.stderr, flush=True)
        return 1
    args = build_parser().parse_args(argv)
    if opts.fail_start:
        log("FAULT fail_start=1: refusing to start (injected startup failure)")
        print("sim: error: injected startup failure (fail_start=1)", file=sys.stderr, flush=True)
        return 1
    mode = "instant (zero delay)" if opts.instant else f"roofline time_scale={opts.time_scale:g}"
    if perf is not None:
        log(f"starting: {perf.describe()} mode={mode}")
        if not opts.max_model_len and perf.max_model_len < perf.model.max_position:
            log(f"note: max_model_len capped from {perf.model.max_position} to the KV cache's {perf.max_model_len} "
                f"tokens (a real engine would refuse to start; pass --opt max_model_len=N to choose)")
    else:
        log(f"starting: model={name} layout=tp{args.tp}-pp{args.pp} gpu={opts.gpu} mode={mode} "
            f"kv_cache=unlimited max_model_len={max_len}")
    if opts.start_delay > 0:
        log(f"FAULT start_delay={opts.start_delay:g}: sleeping before listening")
        time.sleep(opts.start_delay)
    try:
        asyncio.run(serve(opts, perf, name, root, max_len, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"sim: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0

