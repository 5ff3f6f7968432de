"""GPU telemetry during a measurement: an NVML sampler and its per-repeat summary.

While a workload runs, :class:`GpuSampler` reads every engine GPU through NVML at
:data:`SAMPLE_HZ` (10 Hz) in a background thread: memory used, utilisation, power and SM clock
(plus the clock-event reasons NVML reports, such as a power cap or thermal slowdown). The summary
of the measured phase goes into each repeat of a result (``RepeatResult.telemetry``) and, in
compact form, into baselines.

Utilisation is shown, never judged: it is the share of time *some* kernel ran, and the seed saw
~100% on a card that could still deliver more. What is judged is the SM clock, the commonest
cause of a false regression: :func:`clock_warnings` flags a clock that moved more than
:data:`CLOCK_MOVE_WARN` during a run, or differs that much from the baseline's.

``pynvml`` is imported lazily (absent NVML is normal: the sampler then records nothing). Tests
pass a fake module with the same functions as ``nvml=``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Samples per second (NVML's utilisation counters themselves update every 1/6 s to 1 s).
SAMPLE_HZ = 10.0
#: A clock spread (during a run) or a clock change (against the baseline) beyond this warns.
CLOCK_MOVE_WARN = 0.05
#: Samples with at least this utilisation count as busy; clock statistics use busy samples only,
#: because an idle card lowers its clock by design (between requests, or before the first).
BUSY_UTIL_PCT = 50.0
#: ``NVML_CLOCK_SM``.
NVML_CLOCK_SM = 1
#: Clock-event (throttle) reason bits NVML reports, with short names.
THROTTLE_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}

#: The summary's per-GPU metrics: key -> (unit shown, how to read one sample).
METRICS = ("mem_used_mib", "util_pct", "power_w", "sm_clock_mhz")


@dataclass
class _Series:
    """One GPU's samples: (perf_counter time, value or None) per metric, and the throttle bits seen."""

    times: list[float] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=lambda: {m: [] for m in METRICS})
    reasons: list[int] = field(default_factory=list)
    name: str = ""


def _stats(values: Sequence[float]) -> dict[str, float]:
    """mean, min, p5, p50, p95, max of ``values`` (rounded: far below any reading's precision)."""
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        if n == 1:
            return v[0]
        k = (n - 1) * p
        lo = math.floor(k)
        hi = min(lo + 1, n - 1)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    out = {"mean": sum(v) / n, "min": v[0], "p5": q(0.05), "p50": q(0.5), "p95": q(0.95), "max": v[-1]}
    return {k: round(x, 2) for k, x in out.items()}


class GpuSampler:
    """Samples NVML for ``indices`` in a thread, between :meth:`start` and :meth:`stop` (or ``with``).

    Each metric a card does not support (``NVMLError_NotSupported``) is left out from then on.
    ``nvml`` is the ``pynvml`` module, or a fake with the same functions.
    """

    def __init__(self, indices: Sequence[int], interval_s: float = 1.0 / SAMPLE_HZ, nvml: Any = None) -> None:
        self.indices = list(indices)
        self.interval_s = interval_s
        self._nvml = nvml
        self._series: dict[int, _Series] = {i: _Series() for i in self.indices}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: dict[int, Any] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._inited = False
        self.error: str | None = None  # why nothing could be sampled, if so

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> GpuSampler:
        """Initialise NVML and start sampling; on any NVML failure, record :attr:`error` and sample nothing."""
        try:
            if self._nvml is None:
                import pynvml  # lazy: absent NVML is normal

                self._nvml = pynvml
            nv = self._nvml
            nv.nvmlInit()
        except Exception as exc:
            self.error = f"NVML unavailable: {exc}"
            return self
        self._inited = True
        try:
            for i in self.indices:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                self._handles[i] = h
                try:
                    name = nv.nvmlDeviceGetName(h)
                    self._series[i].name = name.decode() if isinstance(name, bytes) else str(name)
                except Exception:
                    pass
        except Exception as exc:
            self.error = f"NVML query failed: {exc}"
            self._shutdown()
            return self
        self.sample()  # one at once: even a very short run has a reading
        self._thread = threading.Thread(target=self._run, name="mgpu-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample, stop the thread and shut NVML down."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None
            self.sample()
        self._shutdown()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _shutdown(self) -> None:
        if self._inited:
            self._inited = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._handles = {}

    def _run(self) -> None:
        nxt = time.perf_counter()
        while True:
            nxt += self.interval_s
            if self._stop.wait(max(0.0, nxt - time.perf_counter())):
                return
            self.sample()

    # --- sampling ----------------------------------------------------------------------------
    def _read(self, i: int, metric: str, fn: Any) -> float | None:
        if (i, metric) in self._unsupported:
            return None
        try:
            return float(fn())
        except Exception as exc:  # NotSupported and friends: skip this metric on this GPU
            if "NotSupported" in type(exc).__name__ or "Not Supported" in str(exc):
                self._unsupported.add((i, metric))
            return None

    def sample(self) -> None:
        """Read every GPU once (called by the thread; public for tests)."""
        nv = self._nvml
        t = time.perf_counter()
        for i, h in list(self._handles.items()):
            s = self._series[i]
            s.times.append(t)
            mem = self._read(i, "mem", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).used / 2**20)
            s.values["mem_used_mib"].append(mem)
            s.values["util_pct"].append(self._read(i, "util", lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).gpu))
            s.values["power_w"].append(self._read(i, "power", lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0))
            s.values["sm_clock_mhz"].append(
                self._read(i, "clock", lambda h=h: nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM))
            )
            reasons = self._read(i, "reasons", lambda h=h: _clock_reasons(nv, h))
            s.reasons.append(int(reasons or 0))

    # --- summary -----------------------------------------------------------------------------
    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, Any] | None:
        """The samples taken in ``[t0, t1]`` (perf_counter seconds) summarised per GPU; None without samples.

        ``sm_clock_busy_mhz`` uses busy samples only (utilisation >= :data:`BUSY_UTIL_PCT`), so an idle
        card's lower clock does not read as a clock that moved.
        """
        gpus: dict[str, Any] = {}
        n_max = 0
        span = [math.inf, -math.inf]
        for i, s in self._series.items():
            keep = [k for k, t in enumerate(s.times) if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
            if not keep:
                continue
            n_max = max(n_max, len(keep))
            span = [min(span[0], s.times[keep[0]]), max(span[1], s.times[keep[-1]])]
            g: dict[str, Any] = {"name": s.name, "samples": len(keep)}
            for m in METRICS:
                vals = [v for k in keep if (v := s.values[m][k]) is not None]
                if vals:
                    g[m] = _stats(vals)
            util = s.values["util_pct"]
            clock = s.values["sm_clock_mhz"]
            busy = [
                c for k in keep if (c := clock[k]) is not None and (u := util[k]) is not None and u >= BUSY_UTIL_PCT
            ]
            if busy:
                g["sm_clock_busy_mhz"] = _stats(busy)
            bits = 0
            for k in keep:
                bits |= s.reasons[k]
            g["clock_events"] = [name for bit, name in THROTTLE_REASONS.items() if bits & bit]
            gpus[str(i)] = g
        if not gpus:
            return None
        return {
            "interval_s": self.interval_s,
            "samples": n_max,
            "duration_s": round(span[1] - span[0], 3) if n_max > 1 else 0.0,
            "gpus": gpus,
        }


def _clock_reasons(nv: Any, h: Any) -> int:
    """NVML's current clock-event reasons (newer name first, then the older throttle-reasons call)."""
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(fn(h))


def sampler_for(gpu_ids: Sequence[int]) -> GpuSampler | None:
    """A sampler for an engine's GPUs, or None when it has none (CPU, sim)."""
    return GpuSampler(gpu_ids) if gpu_ids else None


# --- reading summaries back ------------------------------------------------------------------
def busy_clock(summary: Mapping[str, Any] | None) -> float | None:
    """The lowest per-GPU median busy SM clock of a repeat's telemetry (the slowest card sets the pace)."""
    if not summary:
        return None
    vals = [g["sm_clock_busy_mhz"]["p50"] for g in summary.get("gpus", {}).values() if "sm_clock_busy_mhz" in g]
    return min(vals) if vals else None


def clock_spread(summary: Mapping[str, Any] | None) -> tuple[float, str, float, float] | None:
    """The largest busy SM-clock spread over GPUs: (fraction (p95-p5)/p95, gpu, p5, p95), or None."""
    if not summary:
        return None
    best: tuple[float, str, float, float] | None = None
    for gid, g in summary.get("gpus", {}).items():
        c = g.get("sm_clock_busy_mhz")
        if not c or c["p95"] <= 0:
            continue
        frac = (c["p95"] - c["p5"]) / c["p95"]
        if best is None or frac > best[0]:
            best = (frac, gid, c["p5"], c["p95"])
    return best


def aggregate(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, float] | None:
    """One row's numbers over the repeats of a result: medians of per-repeat GPU means.

    ``util_pct`` and ``power_w``: mean over GPUs of each GPU's mean; ``mem_used_mib``: the largest
    GPU's peak; ``sm_clock_mhz``: :func:`busy_clock`; ``clock_spread``: the largest spread.
    """
    rows: dict[str, list[float]] = {"util_pct": [], "power_w": [], "mem_used_mib": [], "sm_clock_mhz": [],
                                    "clock_spread": []}
    for s in summaries:
        if not s or not s.get("gpus"):
            continue
        gpus = list(s["gpus"].values())
        for key in ("util_pct", "power_w"):
            vals = [g[key]["mean"] for g in gpus if key in g]
            if vals:
                rows[key].append(sum(vals) / len(vals))
        mem = [g["mem_used_mib"]["max"] for g in gpus if "mem_used_mib" in g]
        if mem:
            rows["mem_used_mib"].append(max(mem))
        clock = busy_clock(s)
        if clock is not None:
            rows["sm_clock_mhz"].append(clock)
        spread = clock_spread(s)
        if spread is not None:
            rows["clock_spread"].append(spread[0])
    if not any(rows.values()):
        return None

    def median(v: list[float]) -> float:
        v = sorted(v)
        n = len(v)
        return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

    out = {k: round(median(v), 3) for k, v in rows.items() if v and k != "clock_spread"}
    if rows["clock_spread"]:
        out["clock_spread"] = round(max(rows["clock_spread"]), 4)
    return out


def clock_warnings(
    entry: str,
    repeats: Sequence[Mapping[str, Any] | None],
    baseline: Mapping[str, float] | None = None,
    threshold: float = CLOCK_MOVE_WARN,
) -> list[str]:
    """Warnings for an SM clock that moved during a repeat, or differs from the baseline's, by > ``threshold``.

    ``repeats`` are the per-repeat telemetry summaries of one result; ``baseline`` is a compact
    summary (:func:`aggregate`) stored with the baseline entry.
    """
    out = []
    for n, s in enumerate(repeats, 1):
        spread = clock_spread(s)
        if spread is not None and spread[0] > threshold:
            frac, gid, lo, hi = spread
            events = ", ".join((s or {}).get("gpus", {}).get(gid, {}).get("clock_events", [])) or "none reported"
            out.append(
                f"{entry}: SM clock of GPU {gid} moved {frac:.0%} during repeat {n}/{len(repeats)} "
                f"({hi:.0f} -> {lo:.0f} MHz while busy; NVML clock events: {events}); "
                f"a throttling card makes a false regression"
            )
    now = aggregate(repeats)
    base_clock = (baseline or {}).get("sm_clock_mhz")
    if now and base_clock and "sm_clock_mhz" in now:
        d = now["sm_clock_mhz"] / base_clock - 1
        if abs(d) > threshold:
            out.append(
                f"{entry}: SM clock {now['sm_clock_mhz']:.0f} MHz while busy vs {base_clock:.0f} MHz in the "
                f"baseline ({d:+.0%}); the comparison is between differently clocked cards"
            )
    return out


__all__ = [
    "CLOCK_MOVE_WARN",
    "SAMPLE_HZ",
    "GpuSampler",
    "aggregate",
    "busy_clock",
    "clock_spread",
    "clock_warnings",
    "sampler_for",
]
