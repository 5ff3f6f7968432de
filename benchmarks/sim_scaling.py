"""Print the sim's roofline predictions per layout, and optionally its streaming capacity.

    python benchmarks/sim_scaling.py                      # llama-2-7b on v100-16gb, 128/128, rate inf
    python benchmarks/sim_scaling.py --gpu h100-80gb --requests 2000
    python benchmarks/sim_scaling.py --capacity           # zero-delay server: tokens/s it can stream

The table is the offline scheduler (:func:`pytest_mgpu.sim.scheduler.throughput`): the same
model and scheduler the server runs, without HTTP. Numbers are predictions, not measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_mgpu.errors import SimError  # noqa: E402
from pytest_mgpu.models import resolve_model  # noqa: E402
from pytest_mgpu.sim.model import PerfModel, SimOptions, load_shape  # noqa: E402
from pytest_mgpu.sim.scheduler import throughput  # noqa: E402

LAYOUTS = [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4)]


def scaling_table(model: str, gpu: str, requests: int, input_len: int, output_len: int) -> str:
    """A markdown table of predicted throughput per layout."""
    spec = load_shape(resolve_model(model).path)
    opts = SimOptions(gpu=gpu)
    rows = ["| layout | GPUs | KV tokens | output tok/s | tok/s per GPU | per GPU vs TP=1 | mean TTFT ms | mean TPOT ms |",
            "|---|---|---|---|---|---|---|---|"]
    base = None
    for tp, pp in LAYOUTS:
        try:
            perf = PerfModel(spec, tp, pp, None, opts)
        except SimError as exc:
            rows.append(f"| tp{tp}-pp{pp} | {tp * pp} | does not fit: {str(exc)[:60]}... | | | | | |")
            continue
        r = throughput(perf, requests, input_len, output_len)
        per = r["output_throughput_per_gpu"]
        base = base or per
        rows.append(
            f"| tp{tp}-pp{pp} | {tp * pp} | {perf.kv_tokens} | {r['output_throughput']:.0f} | {per:.0f} | "
            f"{per / base:.2f}x | {r['mean_ttft_ms']:.0f} | {r['mean_tpot_ms']:.1f} |"
        )
    return "\n".join(rows)


async def _raw_stream(port: int, max_tokens: int) -> int:
    """One streaming request over a raw socket; returns SSE events seen (server-side capacity)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"prompt":[1,2,3,4],"max_tokens":%d,"stream":true,"stream_options":{"include_usage":true}}' % max_tokens
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    events = 0
    tail = b""
    while True:
        data = await reader.read(1 << 16)
        if not data:
            break
        events += (tail + data).count(b'"text":')
        tail = data[-6:]  # one byte shorter than the pattern: no double count
    writer.close()
    return events


async def _aiohttp_stream(session: object, url: str, max_tokens: int) -> int:
    """One streaming request read line by line with aiohttp, like vLLM's bench client."""
    payload = {"prompt": [1, 2, 3, 4], "max_tokens": max_tokens, "stream": True,
               "stream_options": {"include_usage": True}}
    n = 0
    async with session.post(url, json=payload) as resp:  # type: ignore[attr-defined]
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"text":' in line:
                n += 1
    return n


async def _capacity(port: int, streams: int, max_tokens: int, client: str) -> tuple[float, int]:
    import aiohttp

    t0 = time.perf_counter()
    if client == "raw":
        counts = await asyncio.gather(*(_raw_stream(port, max_tokens) for _ in range(streams)))
    else:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            url = f"http://127.0.0.1:{port}/v1/completions"
            counts = await asyncio.gather(*(_aiohttp_stream(s, url, max_tokens) for _ in range(streams)))
    dt = time.perf_counter() - t0
    return dt, sum(counts)


def capacity(streams: int, max_tokens: int) -> str:
    """Start a zero-delay sim and measure how many tokens/s it streams to raw and aiohttp clients."""
    from pytest_mgpu.engines.base import EngineSpec
    from pytest_mgpu.engines.sim import SimAdapter
    from pytest_mgpu.gpus import GpuInventory
    from pytest_mgpu.layout import Layout

    model = resolve_model("tiny-llama")
    spec = EngineSpec("sim", model, Layout(), options=(("zero", "1"),), python=sys.executable)
    eng = SimAdapter()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        running = eng.start(spec, GpuInventory(), [], Path(tmp))
        try:
            port = int(running.base_url.rsplit(":", 1)[1])
            for client in ("raw", "aiohttp", "raw", "aiohttp"):
                dt, n = asyncio.run(_capacity(port, streams, max_tokens, client))
                lines.append(f"{client:8s} client: {n} tokens in {dt:.2f}s = {n / dt:,.0f} tokens/s "
                             f"({streams} streams x {max_tokens} tokens)")
        finally:
            eng.stop(running)
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--gpu", default="v100-16gb")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--capacity", action="store_true", help="Also measure zero-delay streaming capacity")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--tokens", type=int, default=2000)
    a = p.parse_args()
    print(f"# {a.model} on {a.gpu}, {a.requests} requests, {a.input_len}/{a.output_len}, rate inf (predicted)")
    print(scaling_table(a.model, a.gpu, a.requests, a.input_len, a.output_len))
    if a.capacity:
        print("\n# zero-delay streaming capacity (server and client share this machine's cores)")
        print(capacity(a.streams, a.tokens))


if __name__ == "__main__":
    main()
