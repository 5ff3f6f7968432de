"""Client-side serving metrics with the definitions of ``vllm bench serve``.

Every latency statistic is in milliseconds and named ``<metric>_<stat>``, e.g. ``ttft_p50``,
``tpot_p99``, ``itl_mean``, ``e2el_p90``. Throughputs are per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Latency metrics and the statistics reported for each of them.
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
LATENCY_STATS = ("mean", "p50", "p90", "p99", "std")

#: Metrics for which a larger value is better. Every other numeric metric is lower-is-better.
HIGHER_IS_BETTER = frozenset(
    {
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "output_throughput_per_gpu",
        "achieved_request_rate",
    }
)


def worse_sign(metric: str) -> float:
    """+1 when a larger value is worse (latencies), -1 when it is better (throughputs)."""
    return -1.0 if metric in HIGHER_IS_BETTER else 1.0

THROUGHPUT_METRICS = (
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "output_throughput_per_gpu",
    "achieved_request_rate",
)


def latency_keys() -> list[str]:
    """All latency summary keys, e.g. ``ttft_p50``."""
    return [f"{m}_{s}" for m in LATENCY_METRICS for s in LATENCY_STATS]


@dataclass
class RequestRecord:
    """What the client saw of one request.

    Times are ``time.perf_counter()`` seconds (``clock="wall"``), or, against the sim engine,
    its modelled seconds from the run's origin as stamped on each chunk (``clock="model"``); then
    ``wall_start``/``wall_chunk_times``/``wall_end`` keep what the wall clock saw of the same
    stream.
    """

    prompt_len: int
    expected_output_len: int
    start: float
    chunk_times: list[float] = field(default_factory=list)
    end: float = 0.0
    output_tokens: int = 0
    error: str | None = None
    clock: str = "wall"
    wall_start: float | None = None
    wall_chunk_times: list[float] | None = None
    wall_end: float | None = None

    @property
    def success(self) -> bool:
        """vLLM's rule: a request succeeded if no error occurred and at least one chunk arrived."""
        return self.error is None and len(self.chunk_times) > 0

    @property
    def ttft(self) -> float:
        """Time to first chunk, seconds."""
        return self.chunk_times[0] - self.start

    @property
    def latency(self) -> float:
        """End-to-end latency: last token chunk minus start, seconds."""
        return self.chunk_times[-1] - self.start

    @property
    def itl(self) -> list[float]:
        """Gaps between consecutive chunks, seconds."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot(self) -> float | None:
        """(latency - ttft) / (out - 1), seconds; None when out <= 1."""
        if self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


def _stats(prefix: str, values_s: Sequence[float]) -> dict[str, float]:
    import numpy as np  # lazy: the plugin's hooks import this module's names; numpy only for a summary

    arr = np.asarray(values_s, dtype=float) * 1000.0
    if arr.size == 0:
        arr = np.zeros(1)
    return {
        f"{prefix}_mean": float(np.mean(arr)),
        f"{prefix}_p50": float(np.median(arr)),
        f"{prefix}_p90": float(np.percentile(arr, 90)),
        f"{prefix}_p99": float(np.percentile(arr, 99)),
        f"{prefix}_std": float(np.std(arr)),
    }


def summarize(
    records: Iterable[RequestRecord], num_gpus: int, dispatch_start: float | None = None
) -> dict[str, float]:
    """Summarise measured requests as ``vllm bench serve`` does.

    ``dispatch_start`` is when the first measured request was sent; the duration runs from it to
    the last completion. ``num_gpus`` (tp x pp) normalises ``output_throughput_per_gpu``.
    """
    recs = list(records)
    ok = [r for r in recs if r.success]
    if dispatch_start is None:
        dispatch_start = min((r.start for r in recs), default=0.0)
    end = max((r.end for r in ok), default=dispatch_start)
    duration = max(end - dispatch_start, 1e-9)
    first_dispatch = min((r.start for r in recs), default=dispatch_start)
    last_dispatch = max((r.start for r in recs), default=dispatch_start)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    summary: dict[str, float] = {
        "completed": float(len(ok)),
        "failed": float(len(recs) - len(ok)),
        "total_input_tokens": float(in_tokens),
        "total_output_tokens": float(out_tokens),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "output_throughput_per_gpu": out_tokens / duration / max(num_gpus, 1),
        # Requests sent per second over the dispatch window (n-1 gaps between n dispatches).
        "achieved_request_rate": (
            (len(recs) - 1) / (last_dispatch - first_dispatch)
            if len(recs) > 1 and last_dispatch > first_dispatch
            else float("inf")
        ),
    }
    summary.update(_stats("ttft", [r.ttft for r in ok]))
    summary.update(_stats("tpot", [t for r in ok if (t := r.tpot) is not None]))
    summary.update(_stats("itl", [g for r in ok for g in r.itl]))
    summary.update(_stats("e2el", [r.latency for r in ok]))
    return summary


def invalid_reason(
    records: Sequence[RequestRecord], expected_requests: int, output_len: int
) -> str | None:
    """Why a run cannot be compared, or None when every request completed in full."""
    if len(records) != expected_requests:
        return f"{len(records)} of {expected_requests} requests were sent"
    failed = [r for r in records if not r.success]
    if failed:
        first = failed[0].error or "no chunk received"
        return f"{len(failed)} of {expected_requests} requests failed (first: {first})"
    short = [r for r in records if r.output_tokens != output_len]
    if short:
        got = sorted({r.output_tokens for r in short})
        return (
            f"{len(short)} of {expected_requests} requests returned {got} output tokens, "
            f"expected exactly {output_len}"
        )
    return None
