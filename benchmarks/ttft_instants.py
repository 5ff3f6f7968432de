"""Where each client starts and stops its TTFT clock: ours against ``vllm bench serve``'s request function.

A fake OpenAI completions server (a thread of this process, so it shares the ``perf_counter``
clock) answers every request after a known delay: headers at once, then an empty-text chunk
``--empty-ms`` later (0: none), the first text ``--first-ms`` after the request arrived, more
tokens, a usage chunk and ``[DONE]``. It stamps when each request's body was read and when each
chunk was written. Each client sends ``--requests`` requests one at a time, in alternating
rounds (ours as the plugin runs it; vLLM's; ours with ``trust_env=False``), and the script
prints, per client, the medians of:

- ``start -> request read``: the clock's start to the server having read the request;
- ``first token written -> stop``: the server writing the chunk the client counts as its first
  token, to the instant the client stops the TTFT clock;
- TTFT, and TTFT minus the server's known delay (what the client adds).

vLLM's function is ``async_request_openai_completions`` from
``vllm/benchmarks/lib/endpoint_request_func.py``, loaded from ``--vllm-src`` (a folder holding
``vllm/benchmarks/lib/endpoint_request_func.py``, e.g. an unpacked wheel; ``regex`` and ``tqdm``
are stubbed when missing) or from an installed vLLM.

    python benchmarks/ttft_instants.py --vllm-src /tmp/vllm-0.26.0 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import statistics
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_mgpu.measure.client import run_workload  # noqa: E402
from pytest_mgpu.measure.workload import Workload  # noqa: E402


class ThreadedServer:
    """An aiohttp server for ``POST /v1/completions`` on a thread of this process, so that its stamps and
    the client's share one ``perf_counter`` clock. Subclasses answer in :meth:`_handle`.

    Also the base of the fake server in ``tests/test_ttft_instant.py``.
    """

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: Any) -> Any:
        raise NotImplementedError

    def _run(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/completions", self._handle)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    def start(self) -> str:
        """Start serving; return the base URL."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake server did not start within 10 s")
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Server(ThreadedServer):
    """The fake server: known delays, every read and write stamped on this process's clock."""

    def __init__(self, first_ms: float, empty_ms: float, tokens: int) -> None:
        super().__init__()
        self.first_s, self.empty_s, self.tokens = first_ms / 1e3, empty_ms / 1e3, tokens
        self.read: list[float] = []
        self.first_write: list[float] = []  # the first chunk with non-empty choices (empty text or not)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        await request.read()
        t_read = time.perf_counter()
        self.read.append(t_read)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "cmpl-1", "object": "text_completion", "model": "fake"}

        def event(text: str | None, usage: dict[str, int] | None = None) -> bytes:
            choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": None}]
            return b"data: " + json.dumps({**base, "choices": choices, "usage": usage}).encode() + b"\n\n"

        first = None
        if self.empty_s > 0:
            await asyncio.sleep(max(0.0, t_read + self.empty_s - time.perf_counter()))
            await resp.write(event(""))
            first = time.perf_counter()
        await asyncio.sleep(max(0.0, t_read + self.first_s - time.perf_counter()))
        await resp.write(event(" a"))
        self.first_write.append(first if first is not None else time.perf_counter())
        for _ in range(self.tokens - 1):
            await asyncio.sleep(0.002)
            await resp.write(event(" b"))
        await resp.write(event(None, {"prompt_tokens": 4, "completion_tokens": self.tokens}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def load_vllm_request_func(src: Path | None) -> Any:
    """vLLM's ``endpoint_request_func`` module, from ``src`` or an installed vLLM."""
    for name in ("regex", "tqdm", "tqdm.asyncio"):
        try:
            importlib.import_module(name)
        except ImportError:  # stubs: the request function uses neither for a plain completion
            mod = types.ModuleType(name)
            if name == "regex":
                mod.__dict__.update(re.__dict__)
            else:
                mod.tqdm = type("tqdm", (), {})  # type: ignore[attr-defined]
            sys.modules[name] = mod
    if src is None:
        return importlib.import_module("vllm.benchmarks.lib.endpoint_request_func")
    path = src / "vllm" / "benchmarks" / "lib" / "endpoint_request_func.py"
    spec = importlib.util.spec_from_file_location("vllm_endpoint_request_func", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


async def vllm_round(mod: Any, url: str, n: int) -> list[tuple[float, float]]:
    """(start, start + ttft) of ``n`` sequential requests through vLLM's function, with vLLM's session settings."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1, limit_per_host=1, ttl_dns_cache=300, use_dns_cache=True,
                                     keepalive_timeout=60, enable_cleanup_closed=True, force_close=False, ssl=False)
    out = []
    async with aiohttp.ClientSession(connector=connector, trust_env=True,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        for _ in range(n):
            inp = mod.RequestFuncInput(prompt=[1, 2, 3, 4], api_url=url + "/v1/completions", prompt_len=4,
                                       output_len=4, model="fake", ignore_eos=True)
            o = await mod.async_request_openai_completions(inp, session)
            if not o.success:
                raise SystemExit(f"vLLM's request function failed: {o.error}")
            out.append((o.start_time, o.start_time + o.ttft))
    return out


def ours_round(url: str, n: int, trust_env: bool | None = None) -> list[tuple[float, float]]:
    """(start, first chunk time) of ``n`` sequential requests through our client."""
    wl = Workload(input_len=4, output_len=4, num_requests=n, warmup_requests=0, max_concurrency=1,
                  request_rate=float("inf"))
    res = run_workload(url, "fake", wl, timeout_s=600, trust_env=trust_env)
    bad = [r.error for r in res.records if r.error]
    if bad:
        raise SystemExit(f"our client failed: {bad[0]}")
    return [(r.start, r.chunk_times[0]) for r in res.records]


def main() -> None:
    """Measure both clients against the fake server and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-src", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=100, help="per client and round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--first-ms", type=float, default=20.0, help="the server's delay to the first text chunk")
    ap.add_argument("--empty-ms", type=float, default=10.0, help="an empty-text chunk this long after the request (0: none)")
    a = ap.parse_args()
    mod = load_vllm_request_func(a.vllm_src)
    srv = Server(a.first_ms, a.empty_ms, tokens=4)
    url = srv.start()
    delay = (a.empty_ms if a.empty_ms > 0 else a.first_ms) / 1e3  # the chunk vLLM counts as the first token
    # "ours, no env": trust_env=False, the session without vLLM's per-request environment look-ups.
    sides = ("ours", "vllm", "ours, no env")
    rows: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
    for rnd in range(a.rounds):
        for side in (sides if rnd % 2 == 0 else sides[::-1]):
            k = len(srv.read)
            if side == "vllm":
                pairs = asyncio.run(vllm_round(mod, url, a.requests))
            else:
                pairs = ours_round(url, a.requests, trust_env=False if side == "ours, no env" else None)
            reads, writes = srv.read[k:], srv.first_write[k:]
            rows[side] += [(rd - st, stop - w, stop - st) for (st, stop), rd, w in zip(pairs, reads, writes)]
    print(f"fake server: empty-text chunk at {a.empty_ms:g} ms, first text at {a.first_ms:g} ms after the request "
          f"was read; {a.rounds} rounds x {a.requests} requests per client, one at a time")
    print(f"{'client':<13} {'start -> request read':>22} {'first token written -> stop':>28} {'TTFT p50':>10} "
          f"{'TTFT - server delay':>20}")
    med = {}
    for side, vals in rows.items():
        s2r, w2s, ttft = (statistics.median(v[i] for v in vals) * 1e3 for i in range(3))
        med[side] = ttft
        print(f"{side:<13} {s2r:>19.3f} ms {w2s:>25.3f} ms {ttft:>7.3f} ms {ttft - delay * 1e3:>17.3f} ms")
    for side in ("ours", "ours, no env"):
        print(f"{side} - vllm, TTFT p50: {med[side] - med['vllm']:+.3f} ms ({(med[side] / med['vllm'] - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
