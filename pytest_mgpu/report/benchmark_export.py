"""Results in pytest-benchmark's saved-JSON format (``--mgpu-benchmark-json``, ``pytest-mgpu export-benchmark``)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import __version__
from ..judge.results import BenchResult


def _bench_stats(data: Sequence[float]) -> dict[str, Any]:
    arr = np.sort(np.asarray(data, dtype=float))
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    # pytest-benchmark's quartiles: medians of the lower and upper halves.
    if n > 1:
        half = n // 2
        q1 = float(np.median(arr[:half])) if n % 2 == 0 else float(np.median(arr[: half + 1]))
        q3 = float(np.median(arr[half:]))
    else:
        q1 = q3 = float(arr[0])
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    ld = float(arr[arr >= lo][0]) if n else 0.0
    hd = float(arr[arr <= hi][-1]) if n else 0.0
    return {
        "min": float(arr[0]), "max": float(arr[-1]), "mean": mean, "stddev": std, "rounds": n,
        "median": float(np.median(arr)), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": int(((arr < lo) | (arr > hi)).sum()),
        "stddev_outliers": int(((arr < mean - std) | (arr > mean + std)).sum()),
        "outliers": f"{int(((arr < mean - std) | (arr > mean + std)).sum())};{int(((arr < lo) | (arr > hi)).sum())}",
        "ld15iqr": ld, "hd15iqr": hd, "ops": (1.0 / mean) if mean else 0.0, "total": float(arr.sum()),
        "iterations": 1,
    }


def to_benchmark_json(results: Sequence[BenchResult], include_data: bool = True) -> dict[str, Any]:
    """Results in pytest-benchmark 5.x's saved-JSON format, for ``pytest-benchmark compare``.

    The timed statistic is the end-to-end request latency in seconds: per request when the raw
    records were kept, else one value per repeat (its ``e2el_mean``). All median metrics, the
    engine and the validity go into ``extra_info``.
    """
    benches = []
    env: dict[str, Any] = {}
    for r in results:
        if not r.repeats:
            continue
        env = env or dict(r.env)
        data = [rec.latency for rep in r.repeats for rec in rep.records if rec.success]
        if not data:
            data = [rep.summary["e2el_mean"] / 1000.0 for rep in r.repeats if "e2el_mean" in rep.summary]
        if not data:
            continue
        stats = _bench_stats(data)
        if include_data:
            stats["data"] = list(data)
        params = {"tp": r.layout.tp, "pp": r.layout.pp}
        benches.append(
            {
                "group": r.label or r.workload.name,
                "name": r.entry_id,
                "fullname": f"{r.nodeid}::{r.label or r.workload.name}",
                "params": params,
                "param": r.layout.id,
                "extra_info": {
                    "engine": r.engine, "engine_version": r.engine_version, "model": r.model,
                    "num_gpus": r.num_gpus, "repeats": len(r.repeats), "invalid": r.invalid,
                    "timed": "e2el per request (s)" if len(data) > len(r.repeats) else "e2el_mean per repeat (s)",
                    **r.median,
                },
                "options": {"timer": "client-side e2el", "rounds": len(data), "min_rounds": len(r.repeats)},
                "stats": stats,
            }
        )
    return {
        "machine_info": {
            "node": env.get("hostname", platform.node()),
            "processor": platform.processor(),
            "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
            "python_version": platform.python_version(),
            "release": platform.release(),
            "system": platform.system(),
            "cpu": {},
            "mgpu_fingerprint": env.get("fingerprint"),
            "driver": env.get("driver"),
            "cuda": env.get("cuda"),
            "pytest_mgpu": __version__,
        },
        "commit_info": {
            "id": env.get("commit") or "unknown",
            "time": None,
            "author_time": None,
            "dirty": bool(env.get("dirty", False)),
            "project": "pytest-mgpu",
            "branch": "(unknown)",
        },
        "benchmarks": benches,
        "datetime": env.get("date") or datetime.now(timezone.utc).isoformat(),
        "version": _benchmark_version(),
    }


def _benchmark_version() -> str:
    """The installed pytest-benchmark's version, else the format version this export follows."""
    try:
        from pytest_benchmark import __version__ as v  # optional dependency: only its version is read

        return str(v)
    except ImportError:
        return "5.2.3"  # the format version this export follows
