"""What a Ray task reads on one node: host identity, the raylet's GPUs and their memory, through NVML.

This module imports nothing from the plugin: the client ships :func:`probe_node` to the nodes by
value (cloudpickle), so a node needs neither pytest-mgpu nor anything beyond the standard library
and, for GPUs, ``pynvml`` (vLLM depends on it). The task runs with
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``, so it sees the raylet's ``CUDA_VISIBLE_DEVICES``:
with two raylets on one host, each node reports only its own GPUs.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def _visible(cvd: str | None) -> list[int] | None:
    if cvd is None:
        return None
    parts = [p.strip() for p in cvd.split(",") if p.strip()]
    if all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None  # UUIDs or MIG ids: report every GPU


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def probe_node() -> dict[str, Any]:
    """This node's host identity and, per GPU its raylet may use, name, memory and compute capability.

    Never raises: an NVML failure is reported in ``error`` with an empty GPU list.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = ""
    out: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "host": f"{socket.gethostname()}/{boot}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [],
        "driver": None,
        "error": None,
    }
    try:
        import pynvml  # lazy: a CPU node has no NVML
    except ImportError as exc:
        out["error"] = f"pynvml not importable: {exc}"
        return out
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        out["error"] = f"NVML unavailable: {exc}"
        return out
    try:
        out["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        allowed = _visible(out["cuda_visible_devices"])
        for i in range(pynvml.nvmlDeviceGetCount()):
            if allowed is not None and i not in allowed:
                continue
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                cc = list(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            out["gpus"].append({
                "index": i,
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                "memory_total_mb": int(mem.total // 2**20),
                "memory_used_mb": int(mem.used // 2**20),
                "compute_capability": cc,
            })
    except Exception as exc:
        out["error"] = f"NVML query failed: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out
