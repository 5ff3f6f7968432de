"""A stand-in for NVIDIA's ``pynvml``, for Ray nodes on a machine without GPUs (tests only).

It reads the JSON file named by ``MGPU_FAKE_NVML``: ``{"driver": "...", "gpus": [{"name": ...,
"memory_total_mb": ..., "uuid": ...}, ...], "used_dir": DIR}``; GPU ``i`` has the MiB written in
``DIR/gpu<i>`` in use (0 without that file). Like NVML it ignores ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


def _conf():
    path = os.environ.get("MGPU_FAKE_NVML")
    if not path:
        raise NVMLError("NVML Shared Library Not Found (fake: MGPU_FAKE_NVML is not set)")
    with open(path) as fh:
        return json.load(fh)


def nvmlInit():
    _conf()


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return _conf().get("driver", "999.99")


def nvmlSystemGetCudaDriverVersion():
    return 13000


def nvmlDeviceGetCount():
    return len(_conf()["gpus"])


def nvmlDeviceGetHandleByIndex(i):
    return i


def nvmlDeviceGetName(h):
    return _conf()["gpus"][h]["name"]


def nvmlDeviceGetUUID(h):
    return _conf()["gpus"][h].get("uuid", f"GPU-fake-{h}")


def nvmlDeviceGetCudaComputeCapability(h):
    return tuple(_conf()["gpus"][h].get("compute_capability", (9, 0)))


def nvmlDeviceGetMemoryInfo(h):
    conf = _conf()
    total = conf["gpus"][h]["memory_total_mb"] * 2**20
    used = 0
    try:
        with open(os.path.join(conf["used_dir"], f"gpu{h}")) as fh:
            used = int(fh.read().strip() or 0) * 2**20
    except (OSError, KeyError, ValueError):
        pass
    return SimpleNamespace(total=total, used=used, free=total - used)
