"""Known GPU cards: spec-sheet memory, HBM bandwidth and, where modelled, compute and NVLink.

The one table of cards. The sim's GPU profiles (:mod:`pytest_mgpu.sim.model`) are built from it,
and the decode roofline (:mod:`pytest_mgpu.report.regime`) reads its bandwidths. A card that is not in
the table gets its bandwidth from NVML instead: 2 (double data rate) x the maximum memory clock x
the memory bus width, e.g. an H100 SXM's 2619 MHz x 5120 bit = 3.35 TB/s.

Numbers are NVIDIA's data-sheet peaks (SXM variants unless named), in GB/s of 1e9 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CardSpec:
    """One card from its data sheet. ``key`` is the sim's profile name where it is one."""

    key: str
    title: str
    memory_gib: float  # as nvidia-smi reports it
    mem_bw_gbs: float  # peak HBM/GDDR bandwidth, GB/s
    pattern: str  # regex over the NVML name, lower-cased, non-alphanumerics as "-"
    fp16_tflops: float | None = None  # dense fp16 tensor peak, TFLOP/s (sim profiles)
    link_gbs: float | None = None  # NVLink per GPU per direction, GB/s (sim profiles)
    link_latency_us: float | None = None  # one ring step of an all-reduce (sim profiles)


#: Most specific pattern first: the first match wins.
CARDS: tuple[CardSpec, ...] = (
    # H200 SXM 141GB: 4.8 TB/s HBM3e, same compute and NVLink as H100.
    CardSpec("h200-nvl", "NVIDIA H200 NVL", 143771 / 1024, 4800.0, r"h200-nvl"),
    CardSpec("h200-141gb", "NVIDIA H200 SXM 141GB", 143771 / 1024, 4800.0, r"h200", 989.0, 450.0, 3.0),
    CardSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", 81559 / 1024, 2000.0, r"h100-pcie"),
    CardSpec("h100-nvl", "NVIDIA H100 NVL 94GB", 95830 / 1024, 3900.0, r"h100-nvl"),
    # H100 SXM5 80GB: 3.35 TB/s HBM3, 989 TFLOP/s dense fp16, NVLink4 900 GB/s total.
    CardSpec("h100-80gb", "NVIDIA H100 SXM5 80GB", 81559 / 1024, 3350.0, r"h100", 989.0, 450.0, 3.0),
    CardSpec("a100-80gb-pcie", "NVIDIA A100 PCIe 80GB", 81920 / 1024, 1935.0, r"a100.*80gb.*pcie|a100.*pcie.*80gb"),
    # A100 SXM4 80GB: 2039 GB/s HBM2e, 312 TFLOP/s dense fp16, NVLink3 600 GB/s total.
    CardSpec("a100-80gb", "NVIDIA A100 SXM4 80GB", 81920 / 1024, 2039.0, r"a100.*80gb", 312.0, 300.0, 4.0),
    CardSpec("a100-40gb", "NVIDIA A100 40GB", 40960 / 1024, 1555.0, r"a100"),
    CardSpec("v100-32gb", "NVIDIA V100 32GB", 32768 / 1024, 900.0, r"v100.*32gb"),
    # V100 SXM2 16GB: 900 GB/s HBM2, 125 TFLOP/s tensor, NVLink2 300 GB/s total (6 x 50).
    CardSpec("v100-16gb", "NVIDIA V100 SXM2 16GB", 16160 / 1024, 900.0, r"v100", 125.0, 150.0, 5.0),
    CardSpec("l40s", "NVIDIA L40S", 46068 / 1024, 864.0, r"l40s"),
    CardSpec("a10g", "NVIDIA A10G", 23028 / 1024, 600.0, r"a10g"),
    CardSpec("a10", "NVIDIA A10", 23028 / 1024, 600.0, r"(^|-)a10($|-)"),
    CardSpec("l4", "NVIDIA L4", 23034 / 1024, 300.0, r"(^|-)l4($|-)"),
    CardSpec("t4", "NVIDIA T4", 15360 / 1024, 320.0, r"(^|-)t4($|-)"),
)
BY_KEY: dict[str, CardSpec] = {c.key: c for c in CARDS}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def card_for_name(nvml_name: str) -> CardSpec | None:
    """The card an NVML device name denotes (``NVIDIA H100 80GB HBM3`` -> h100-80gb), or None."""
    n = _norm(nvml_name)
    for c in CARDS:
        if re.search(c.pattern, n):
            return c
    return None


def nvml_bandwidth_gbs(index: int, nvml: Any = None) -> float | None:
    """Peak memory bandwidth of GPU ``index`` from NVML: 2 x max memory clock x bus width; None if unknown."""
    try:
        if nvml is None:
            import pynvml  # lazy: absent NVML is normal

            nvml = pynvml
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        mhz = float(nvml.nvmlDeviceGetMaxClockInfo(h, 2))  # NVML_CLOCK_MEM
        bits = float(nvml.nvmlDeviceGetMemoryBusWidth(h))
        bw = 2 * mhz * 1e6 * bits / 8 / 1e9
        return round(bw, 1) if bw > 0 else None
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


__all__ = ["BY_KEY", "CARDS", "CardSpec", "card_for_name", "nvml_bandwidth_gbs"]
