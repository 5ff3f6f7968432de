"""TensorRT-LLM adapter: ``trtllm-serve`` (PyTorch backend) as an OpenAI-compatible server.

Written against TensorRT-LLM 1.x sources and docs (see docs/trtllm.md); not run in this
project's CI or GPU checks. The pytest process never imports ``tensorrt_llm``.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError, EngineUnavailable, ModelError
from ..gpus import GpuInventory, wait_memory_back
from ..layout import Layout
from ..models import Model
from ..models.sizes import weight_bytes_per_gpu, weight_dtype_bytes
from ..models.tokenizer import (
    MODEL,
    SYNTHETIC,
    TokenizerRef,
    has_tokenizer,
    write_synthetic_tokenizer,
)
from .base import (
    EngineAdapter,
    EngineSpec,
    RunningEngine,
    kill_group,
    python_dist_version,
)

#: Distribution names tried, in order, for the engine's version.
DISTS = ("tensorrt_llm", "tensorrt-llm")

INSTALL_HINT = (
    "install it into the engine's interpreter with "
    "`pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com` "
    "(the wheel comes from NVIDIA's index, not PyPI), or point --mgpu-engine-python "
    "at a venv that already has it"
)

#: Oldest compute capability TensorRT-LLM 1.x supports. Volta (sm70) was removed in
#: TensorRT 10.5, which every 1.x release builds on; the supported-hardware page lists
#: Ampere (A100, sm80) as the oldest architecture.
MIN_COMPUTE_CAPABILITY = (8, 0)

#: Defaults passed explicitly, so results do not shift with TensorRT-LLM's own defaults.
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_MAX_NUM_TOKENS = 8192
DEFAULT_MAX_SEQ_LEN_CAP = 8192  # max_seq_len = min(model max_position_embeddings, this)

#: KV-cache fraction of free memory when the layout has no ``gpu_mem_gb`` cap (trtllm-serve's
#: own default, passed explicitly).
DEFAULT_KV_FRACTION = 0.9
#: Per-GPU memory kept out of the KV budget besides weights: CUDA context, activations and
#: workspaces, CUDA graphs, NCCL buffers. An estimate; override with ``--mgpu-engine-opt
#: mgpu.reserve_gb=X``.
DEFAULT_RESERVE_GIB = 2.0
KV_FRACTION_MIN = 0.01
KV_FRACTION_MAX = 0.95
#: ``KvCacheConfig.tokens_per_block`` default: the KV cache is allocated in blocks of this many tokens.
KV_TOKENS_PER_BLOCK = 32
#: Bytes per KV-cache element for ``kv_cache_config.dtype`` values other than ``auto`` (NVFP4: 4-bit
#: values plus one FP8 scale per 16).
KV_DTYPE_BYTES: dict[str, float] = {"fp8": 1, "fp8_ds_mla": 1, "int8": 1, "nvfp4": 0.5 + 1 / 16}
#: First release whose ``KvCacheConfig`` is documented with ``max_gpu_total_bytes`` (the 1.3.0rc27
#: LLM API reference); older ones get only ``max_tokens``, which every release read honours.
MAX_GPU_TOTAL_BYTES_SINCE = "1.3.0rc27"
#: TensorRT-LLM's warning when the KV cache cannot hold one max_seq_len sequence and it lowers
#: max_seq_len instead of failing (``KVCacheManager._validate_and_adjust_attention_windows``).
MAX_SEQ_LEN_ADJUSTED = re.compile(r"Adjusted max_seq_len to (\d+)")

GIB = 2**30

#: ``trtllm-serve`` flags that engine options may set (option name -> flag). Every other
#: option goes into the ``--extra_llm_api_options`` YAML.
CLI_OPTIONS: dict[str, str] = {
    "max_batch_size": "--max_batch_size",
    "max_num_tokens": "--max_num_tokens",
    "max_seq_len": "--max_seq_len",
    "max_beam_width": "--max_beam_width",
    "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
    "free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
    "num_postprocess_workers": "--num_postprocess_workers",
    "log_level": "--log_level",
    "backend": "--backend",
    "tokenizer": "--tokenizer",
}
#: Boolean ``trtllm-serve`` flags (present = true).
CLI_FLAGS: dict[str, str] = {
    "trust_remote_code": "--trust_remote_code",
    "enable_chunked_prefill": "--enable_chunked_prefill",
}
#: Options owned by the layout or the adapter; setting them is an error that names the fix.
RESERVED_OPTIONS: dict[str, str] = {
    "tp_size": "use @pytest.mark.layout(tp=N)",
    "tensor_parallel_size": "use @pytest.mark.layout(tp=N)",
    "pp_size": "use @pytest.mark.layout(pp=N)",
    "pipeline_parallel_size": "use @pytest.mark.layout(pp=N)",
    "host": "the plugin binds 127.0.0.1",
    "port": "the plugin picks a free port",
    "model": "use --mgpu-model",
}
#: Adapter-only options (prefix ``mgpu.``), never passed to TensorRT-LLM.
ADAPTER_OPTIONS = ("mgpu.reserve_gb",)
#: Options TensorRT-LLM accepts but that break the measurement when true (option -> why).
REJECTED_WHEN_TRUE: dict[str, str] = {
    "skip_tokenizer_init": (
        "trtllm-serve would start, then answer every /v1/completions request with 400, because each "
        "request reads the tokenizer's vocab size (serve/openai_server.py, openai_completion) and there "
        "is no tokenizer; config-only models get a synthetic tokenizer instead, so drop the option "
        "(or pass tokenizer=DIR)"
    ),
}

#: Environment prefixes forwarded to trtllm-serve besides base.py's list. Every start spawns its
#: ranks through mpi4py (TP=1 included): Open MPI/HPC-X (``OPAL_PREFIX`` relocates the install and
#: lets the singleton find ``orted``), PRRTE/PMIx (Open MPI 5), UCX, and TensorRT-LLM's own
#: ``TRTLLM*``/``TLLM*`` (``MpiPoolSession`` forwards those two prefixes on to the workers).
ENGINE_ENV_PREFIXES = ("OMPI_", "OPAL_", "PRTE_", "PMIX_", "UCX_", "HPCX_", "TRTLLM", "TLLM")

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


# --- options --------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """An option value as a YAML scalar: ``8`` -> 8, ``false`` -> False, ``fp8`` -> 'fp8'."""
    import yaml  # lazy: only a trtllm launch reads or writes YAML

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` in a nested dict, creating levels; a scalar in the way is an error."""
    keys = dotted.split(".")
    node = target
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise EngineError(f"engine option {dotted!r}: {k!r} is already set to the scalar {nxt!r}")
        node = nxt
    node[keys[-1]] = value


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, merging nested dicts instead of replacing them."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass
class SplitOptions:
    """Engine options sorted into CLI flags, YAML keys and adapter settings."""

    cli: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    yaml: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)


def split_options(options: Mapping[str, str]) -> SplitOptions:
    """Sort ``--mgpu-engine-opt KEY=VALUE`` pairs: known flags, ``mgpu.*``, nested YAML."""
    out = SplitOptions()
    for key, raw in options.items():
        if key in RESERVED_OPTIONS:
            raise EngineError(f"engine option {key!r} cannot be set for trtllm: {RESERVED_OPTIONS[key]}")
        value = parse_value(raw)
        if key in REJECTED_WHEN_TRUE and value is True:
            raise EngineError(f"engine option {key}=true cannot be used with trtllm: {REJECTED_WHEN_TRUE[key]}")
        if key.startswith("mgpu."):
            if key not in ADAPTER_OPTIONS:
                raise EngineError(f"unknown adapter option {key!r}; known: {', '.join(ADAPTER_OPTIONS)}")
            out.adapter[key] = value
        elif key in CLI_OPTIONS:
            out.cli[CLI_OPTIONS[key]] = value
        elif key in CLI_FLAGS:
            if value is True:
                out.flags.append(CLI_FLAGS[key])
            elif value is not False:
                raise EngineError(f"engine option {key}={raw!r} must be true or false")
        else:
            set_nested(out.yaml, key, value)
    return out


def check_options(options: Mapping[str, str]) -> None:
    """Reject options trtllm cannot take (EngineError), before any engine starts."""
    split_options(options)


# --- memory arithmetic ----------------------------------------------------------------------
@dataclass(frozen=True)
class KvBudget:
    """How ``--kv_cache_free_gpu_memory_fraction`` was derived (all sizes in GiB per GPU)."""

    fraction: float
    card_gib: float | None = None
    cap_gib: float | None = None
    weights_gib: float | None = None
    reserve_gib: float | None = None
    kv_gib: float | None = None
    free_after_load_gib: float | None = None
    clamped: bool = False

    def describe(self) -> str:
        """One line for logs and errors."""
        if self.cap_gib is None:
            return f"kv fraction {self.fraction:g} (no gpu_mem_gb cap: default)"
        return (
            f"kv fraction {self.fraction:.4f} = kv {self.kv_gib:.2f} GiB / free-after-load "
            f"{self.free_after_load_gib:.2f} GiB (card {self.card_gib:.2f}, cap {self.cap_gib:g}, "
            f"weights {self.weights_gib:.2f}, reserve {self.reserve_gib:g})"
            + (" [clamped]" if self.clamped else "")
        )


def kv_cache_fraction(
    layout: Layout,
    model_config: Mapping[str, Any],
    card_memory_mb: int | None,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
    dtype: Any = None,
) -> KvBudget:
    """The KV-cache fraction that keeps each GPU's total use near ``layout.gpu_mem_gb``.

    TensorRT-LLM sizes the KV cache as a fraction of the memory *free after* weights and
    runtime buffers are allocated (vLLM's fraction is of the whole card). With card memory
    ``T``, cap ``C``, weights ``W`` and reserve ``R`` (all GiB per GPU)::

        free_after_load = T - W - R
        kv              = C - W - R
        fraction        = kv / free_after_load, clamped to [0.01, 0.95]

    ``gpu_mem_gb`` is read as GiB, the unit of the card's ``memory_total_mb / 1024``.
    """
    if layout.gpu_mem_gb is None:
        return KvBudget(fraction=DEFAULT_KV_FRACTION)
    if not card_memory_mb:
        raise EngineError(
            f"layout {layout.id} caps GPU memory at {layout.gpu_mem_gb:g} GB but the card's memory "
            f"is unknown (no NVML inventory); drop gpu_mem_gb or run where NVML sees the GPUs"
        )
    card = card_memory_mb / 1024.0
    cap = float(layout.gpu_mem_gb)
    if cap > card:
        raise EngineError(
            f"layout {layout.id} caps GPU memory at {cap:g} GiB but the card has only {card:.2f} GiB; "
            f"lower gpu_mem_gb to at most {math.floor(card)}"
        )
    try:
        nbytes = weight_dtype_bytes(model_config, dtype)
    except ModelError as exc:
        raise EngineError(str(exc)) from None
    weights = weight_bytes_per_gpu(model_config, layout.tp, layout.pp, nbytes) / GIB
    kv = cap - weights - reserve_gib
    if kv <= 0:
        raise EngineError(
            f"layout {layout.id}: cap {cap:g} GiB leaves no KV cache after {weights:.2f} GiB of weights "
            f"per GPU and a {reserve_gib:g} GiB runtime reserve; raise gpu_mem_gb above "
            f"{weights + reserve_gib:.1f}, use more GPUs, or lower mgpu.reserve_gb"
        )
    free = card - weights - reserve_gib
    raw = kv / free
    frac = min(max(raw, KV_FRACTION_MIN), KV_FRACTION_MAX)
    return KvBudget(
        fraction=round(frac, 4), card_gib=card, cap_gib=cap, weights_gib=weights, reserve_gib=reserve_gib,
        kv_gib=kv, free_after_load_gib=free, clamped=frac != raw,
    )


@dataclass(frozen=True)
class KvCapacity:
    """What the KV budget of a capped layout holds, on its busiest GPU."""

    kv_bytes: int
    bytes_per_token: int

    @property
    def raw_tokens(self) -> int:
        """Tokens the KV bytes hold."""
        return self.kv_bytes // self.bytes_per_token

    @property
    def tokens(self) -> int:
        """Tokens in whole KV-cache blocks: the most one sequence can use."""
        return self.raw_tokens // KV_TOKENS_PER_BLOCK * KV_TOKENS_PER_BLOCK


def kv_bytes_per_token(
    config: Mapping[str, Any], layout: Layout, kv_dtype: Any = None, dtype: Any = None
) -> int:
    """KV-cache bytes per token on the GPU holding the most layers.

    K and V for ``ceil(layers / pp)`` layers of ``ceil(kv_heads / tp)`` heads, as TensorRT-LLM's
    ``KVCacheManager`` counts them; ``kv_dtype`` is ``kv_cache_config.dtype`` (``auto``: the
    model's dtype).
    """
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    layers = math.ceil(int(config["num_hidden_layers"]) / layout.pp)
    name = str(kv_dtype or "auto").lower()
    try:
        nbytes = KV_DTYPE_BYTES[name] if name in KV_DTYPE_BYTES else weight_dtype_bytes(config, dtype)
    except ModelError as exc:
        raise EngineError(str(exc)) from None
    return math.ceil(2 * layers * math.ceil(kv_heads / layout.tp) * head_dim * nbytes)


def kv_capacity(
    budget: KvBudget, config: Mapping[str, Any], layout: Layout, kv_dtype: Any = None, dtype: Any = None
) -> KvCapacity:
    """The tokens a capped layout's KV budget (``budget.kv_gib`` per GPU) holds."""
    assert budget.kv_gib is not None, "only a capped layout has a KV budget"
    return KvCapacity(
        kv_bytes=round(budget.kv_gib * GIB), bytes_per_token=kv_bytes_per_token(config, layout, kv_dtype, dtype)
    )


def check_max_seq_len(layout: Layout, budget: KvBudget, cap: KvCapacity, max_seq_len: int) -> None:
    """Fail (EngineError, with the numbers) when one max_seq_len sequence cannot fit the KV cache.

    TensorRT-LLM does not fail then: it lowers max_seq_len to what the cache holds
    (``fail_fast_on_attention_window_too_large`` defaults to false), and the measurement would
    silently run a different engine.
    """
    if cap.tokens >= max_seq_len:
        return
    assert budget.weights_gib is not None and budget.reserve_gib is not None
    need_tokens = math.ceil(max_seq_len / KV_TOKENS_PER_BLOCK) * KV_TOKENS_PER_BLOCK
    need_gib = budget.weights_gib + budget.reserve_gib + need_tokens * cap.bytes_per_token / GIB
    fit = f"max_seq_len={cap.tokens}"
    raise EngineError(
        f"layout {layout.id}: the {budget.cap_gib:g} GiB cap leaves {cap.kv_bytes / GIB:.2f} GiB of KV cache per GPU "
        f"(after {budget.weights_gib:.2f} GiB of weights and a {budget.reserve_gib:g} GiB reserve): "
        f"{cap.tokens} tokens at {cap.bytes_per_token / 1024:g} KiB per token, fewer than max_seq_len {max_seq_len}. "
        f"TensorRT-LLM would not fail: it would lower max_seq_len to what the KV cache holds "
        f"(fail_fast_on_attention_window_too_large is off by default). Set --mgpu-engine-opt {fit} "
        f"(or @pytest.mark.engine_opts({fit})), raise gpu_mem_gb to at least {math.ceil(need_gib * 10) / 10:g}, "
        f"or use more GPUs"
    )


def has_max_gpu_total_bytes(version: str | None) -> bool:
    """Whether this TensorRT-LLM release is known to have ``kv_cache_config.max_gpu_total_bytes``."""
    from packaging.version import InvalidVersion, Version

    if not version:
        return False
    try:
        return Version(version) >= Version(MAX_GPU_TOTAL_BYTES_SINCE)
    except InvalidVersion:
        return False


# --- model directory ------------------------------------------------------------------------
def has_weights(model_dir: Path) -> bool:
    """Whether the directory holds weight files (else it is config-only: dummy weights)."""
    return any(any(model_dir.glob(g)) for g in WEIGHT_GLOBS)


def synthetic_dir(work_dir: Path, model: Model) -> Path:
    """Where :func:`build_launch` writes the synthetic tokenizer of a config-only model."""
    return work_dir / f"tokenizer-{model.name}"


# --- launch ---------------------------------------------------------------------------------
@dataclass
class TrtllmLaunch:
    """The argv and the extra-options YAML for one ``trtllm-serve`` start."""

    argv: list[str]
    yaml_options: dict[str, Any]
    yaml_path: Path
    kv: KvBudget
    tokenizer_dir: Path | None = None
    max_seq_len: int = 0
    kv_capacity: KvCapacity | None = None


def serve_argv_prefix(python: str) -> list[str]:
    """How to run ``trtllm-serve`` with ``python``.

    The console script ``trtllm-serve`` maps to ``tensorrt_llm.commands.serve:main``, and that
    module ends in ``if __name__ == "__main__": main()``, so ``python -m`` runs the same click
    group with the chosen interpreter, independent of PATH and of where the script lives.
    """
    return [python, "-m", "tensorrt_llm.commands.serve"]


def card_memory_mb(inventory: GpuInventory, gpu_ids: Sequence[int]) -> int | None:
    """Smallest total memory among the allocated GPUs (MiB), or None without an inventory."""
    sizes = [g.memory_total_mb for g in inventory.gpus if not gpu_ids or g.index in gpu_ids]
    return min(sizes) if sizes else None


def build_launch(
    spec: EngineSpec,
    port: int,
    inventory: GpuInventory,
    gpu_ids: Sequence[int],
    work_dir: Path,
    version: str | None = None,
) -> TrtllmLaunch:
    """Build the ``trtllm-serve`` command line and its YAML (pure apart from naming files).

    ``version`` is TensorRT-LLM's, when known: it decides whether the per-GPU cap also goes in as
    ``max_gpu_total_bytes``. A capped layout whose KV cache cannot hold max_seq_len is an error.
    """
    model: Model = spec.model
    config = model.config
    opts = split_options(spec.options_dict)
    reserve = float(opts.adapter.get("mgpu.reserve_gb", DEFAULT_RESERVE_GIB))
    kv = kv_cache_fraction(
        spec.layout, config, card_memory_mb(inventory, gpu_ids), reserve_gib=reserve,
        dtype=opts.yaml.get("dtype"),
    )
    max_pos = int(config.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN_CAP)
    cli: dict[str, Any] = {
        "--backend": "pytorch",
        "--tp_size": spec.layout.tp,
        "--pp_size": spec.layout.pp,
        "--host": "127.0.0.1",
        "--port": port,
        "--max_batch_size": DEFAULT_MAX_BATCH_SIZE,
        "--max_num_tokens": DEFAULT_MAX_NUM_TOKENS,
        "--max_seq_len": min(max_pos, DEFAULT_MAX_SEQ_LEN_CAP),
        "--kv_cache_free_gpu_memory_fraction": kv.fraction,
    }
    cli.update(opts.cli)
    # One fraction on both sides: releases differ on whether the YAML's kv_cache_config replaces
    # the CLI-built one, is merged into it, or loses to an explicit CLI flag (docs/trtllm.md).
    user_kv = opts.yaml.get("kv_cache_config")
    yaml_fraction = user_kv.get("free_gpu_memory_fraction") if isinstance(user_kv, dict) else None
    if yaml_fraction is not None:
        flag = "--kv_cache_free_gpu_memory_fraction"
        if flag in opts.cli and opts.cli[flag] != yaml_fraction:
            raise EngineError(
                f"engine options set the KV-cache fraction twice ({opts.cli[flag]} and "
                f"kv_cache_config.free_gpu_memory_fraction={yaml_fraction}); set it once"
            )
        cli[flag] = yaml_fraction
    fraction = cli["--kv_cache_free_gpu_memory_fraction"]

    kv_config: dict[str, Any] = {"enable_block_reuse": False, "free_gpu_memory_fraction": fraction}
    capacity: KvCapacity | None = None
    if kv.kv_gib is not None:
        # The cap as a token (and, where the release has it, byte) limit per GPU: unlike the free
        # fraction it does not depend on the card's total or free memory. Both are upper bounds.
        kv_dtype = user_kv.get("dtype") if isinstance(user_kv, dict) else None
        capacity = kv_capacity(kv, config, spec.layout, kv_dtype=kv_dtype, dtype=opts.yaml.get("dtype"))
        check_max_seq_len(spec.layout, kv, capacity, int(cli["--max_seq_len"]))
        kv_config["max_tokens"] = capacity.tokens
        if has_max_gpu_total_bytes(version):
            kv_config["max_gpu_total_bytes"] = capacity.tokens * capacity.bytes_per_token

    tokenizer_dir: Path | None = None
    if "--tokenizer" not in cli and not has_tokenizer(model.path):
        tokenizer_dir = write_synthetic_tokenizer(synthetic_dir(work_dir, model), model.vocab_size)
        cli["--tokenizer"] = str(tokenizer_dir)

    # Older trtllm-serve releases merge this YAML over the CLI-built arguments with a *shallow*
    # union, so a kv_cache_config here replaces the CLI-built one: the fraction is repeated.
    base_yaml: dict[str, Any] = {"kv_cache_config": kv_config}
    if not has_weights(model.path):
        base_yaml["load_format"] = "dummy"
    yaml_options = deep_merge(base_yaml, opts.yaml)
    yaml_path = work_dir / f"trtllm-{spec.layout.id}-{port}.yaml"

    argv = serve_argv_prefix(spec.python) + [str(model.path)]
    for flag, value in cli.items():
        argv += [flag, str(value)]
    argv += opts.flags
    argv += ["--extra_llm_api_options", str(yaml_path)]
    return TrtllmLaunch(
        argv=argv, yaml_options=yaml_options, yaml_path=yaml_path, kv=kv, tokenizer_dir=tokenizer_dir,
        max_seq_len=int(cli["--max_seq_len"]), kv_capacity=capacity,
    )


def write_yaml(launch: TrtllmLaunch) -> None:
    """Write the extra-options YAML next to the engine log."""
    import yaml  # lazy: only a trtllm launch reads or writes YAML

    launch.yaml_path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# written by pytest-mgpu for trtllm-serve --extra_llm_api_options\n# {launch.kv.describe()}\n"
    if launch.kv_capacity is not None:
        c = launch.kv_capacity
        header += f"# KV cap: {c.kv_bytes} B / {c.bytes_per_token} B per token = {c.tokens} tokens in whole blocks\n"
    launch.yaml_path.write_text(header + yaml.safe_dump(launch.yaml_options, sort_keys=True))


# --- processes outside our process group ----------------------------------------------------
#: Environment variable that marks every process of one engine start, MPI workers included.
TAG_ENV = "PYTEST_MGPU_ENGINE_TAG"


def _proc_start_time(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[19])


def tagged_processes(tag: str) -> dict[int, int]:
    """Processes of this user whose environment carries ``TAG_ENV=tag``: pid -> start time."""
    needle = f"{TAG_ENV}={tag}".encode()
    found: dict[int, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            st = _proc_start_time(int(entry.name))
            if st is not None and st[0] != "Z":
                found[int(entry.name)] = st[1]
    return found


def descendants(root: int) -> dict[int, int]:
    """All live descendants of ``root`` (by parent pid, across sessions): pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        starts[pid] = int(fields[19])
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def kill_stragglers(procs: Mapping[int, int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, processes still alive with the same start time; returns those hit."""
    def alive() -> list[int]:
        out = []
        for pid, start in procs.items():
            st = _proc_start_time(pid)
            if st is not None and st[1] == start and st[0] != "Z":
                out.append(pid)
        return out

    hit = alive()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = alive()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)
    return hit


def lowered_max_seq_len(log_path: Path) -> int | None:
    """The smallest max_seq_len TensorRT-LLM says (in the engine log) it lowered itself to, or None."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = [int(m.group(1)) for m in MAX_SEQ_LEN_ADJUSTED.finditer(text)]
    return min(found) if found else None


# --- the adapter ----------------------------------------------------------------------------
class TrtllmAdapter(EngineAdapter):
    """``trtllm-serve`` with the PyTorch backend, one process tree per layout.

    Multi-GPU: without ``mpirun``, ``trtllm-serve`` spawns its ranks with mpi4py's
    ``MPIPoolExecutor`` (``MpiPoolSession``). Open MPI's singleton start launches its helper
    daemon with ``--set-sid``, so the daemon and the ranks it spawns leave our process group
    and ``killpg`` cannot reach them. :meth:`stop` snapshots the leader's descendants and every
    process carrying :data:`TAG_ENV` (inherited through fork/exec), kills the group, then kills
    whatever of that snapshot is still alive.
    """

    name = "trtllm"
    health_path = "/health"
    start_timeout_s = 900.0  # model load plus MPI worker bootstrap (tens of seconds per rank)
    straggler_grace_s = 10.0
    min_compute_capability = MIN_COMPUTE_CAPABILITY

    def __init__(self) -> None:
        self._work_dir: Path | None = None
        self._tag: str = uuid.uuid4().hex
        self._tags: dict[int, str] = {}
        self._version: str | None = None
        self.last_launch: TrtllmLaunch | None = None

    check_options = staticmethod(check_options)

    def version(self, python: str, env: Mapping[str, str] | None = None) -> str:
        """``tensorrt_llm``'s version for ``python`` (under ``env``); EngineUnavailable with an install hint."""
        v = python_dist_version(python, DISTS, env)
        if v is None:
            raise EngineUnavailable(f"TensorRT-LLM (tensorrt_llm) is not installed for {python}; {INSTALL_HINT}")
        self._version = v
        return v

    def check_supported(self, spec: EngineSpec, inventory: GpuInventory, version: str) -> None:
        """TensorRT-LLM needs NVIDIA GPUs of compute capability 8.0 or newer."""
        if inventory.count == 0:
            why = f" ({inventory.error})" if inventory.error else ""
            raise EngineUnavailable(f"TensorRT-LLM {version} needs NVIDIA GPUs and none are visible{why}")
        old = [
            g for g in inventory.gpus
            if g.compute_capability is not None and g.compute_capability < self.min_compute_capability
        ]
        if old:
            g = old[0]
            cc = ".".join(map(str, g.compute_capability or ()))
            need = ".".join(map(str, self.min_compute_capability))
            raise EngineError(
                f"TensorRT-LLM {version} does not support GPU {g.index} ({g.name}, compute capability {cc}): "
                f"it needs {need} or newer (Volta sm70 support was removed with TensorRT 10.5); "
                f"run on Ampere or newer cards, or hide these with CUDA_VISIBLE_DEVICES"
            )

    def environment(self, spec: EngineSpec, gpu_ids: Sequence[int], inventory: GpuInventory) -> dict[str, str]:
        """Base environment plus MPI's and TensorRT-LLM's variables, the process tag, and Open
        MPI's run-as-root consent when root. ``--mgpu-engine-env`` values win."""
        env = super().environment(spec, gpu_ids, inventory)
        for key, value in os.environ.items():
            if key.startswith(ENGINE_ENV_PREFIXES):
                env.setdefault(key, value)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Open MPI refuses to run as root without both (TensorRT-LLM's containers set them).
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env[TAG_ENV] = self._tag
        return env

    def tokenizer(self, spec: EngineSpec, work_dir: Path) -> TokenizerRef | None:
        """The ``tokenizer`` option's, the model's own, or the synthetic one :func:`build_launch` writes.

        TensorRT-LLM always serves with a tokenizer (``skip_tokenizer_init`` is rejected), so text
        prompts are its default too.
        """
        opts = split_options(spec.options_dict)
        if "--tokenizer" in opts.cli:
            return TokenizerRef(MODEL, Path(str(opts.cli["--tokenizer"])))
        if has_tokenizer(spec.model.path):
            return TokenizerRef(MODEL, spec.model.path)
        return TokenizerRef(SYNTHETIC, synthetic_dir(work_dir, spec.model))

    def preflight(self, spec: EngineSpec, gpu_ids: Sequence[int], env: Mapping[str, str], log_dir: Path) -> None:
        """Remember the log directory: the YAML and any synthetic tokenizer are written there."""
        self._work_dir = log_dir

    def command(self, spec: EngineSpec, port: int, inventory: GpuInventory, gpu_ids: Sequence[int]) -> list[str]:
        """Build the argv, and write the YAML it names."""
        work_dir = self._work_dir or Path.cwd() / ".mgpu"
        launch = build_launch(spec, port, inventory, gpu_ids, work_dir, version=self._version)
        write_yaml(launch)
        self.last_launch = launch
        return launch.argv

    def start(
        self,
        spec: EngineSpec,
        inventory: GpuInventory,
        gpu_ids: Sequence[int],
        log_dir: Path,
        start_timeout_s: float | None = None,
    ) -> RunningEngine:
        """Start with a fresh process tag, so that :meth:`stop` can find every rank."""
        self._tag = uuid.uuid4().hex
        running = super().start(spec, inventory, gpu_ids, log_dir, start_timeout_s)
        self._tags[running.pid] = self._tag
        return running

    def wait_ready(self, running: RunningEngine, timeout_s: float) -> None:
        """Wait for /health (503 while starting is fine), then fail if the log says max_seq_len was lowered."""
        super().wait_ready(running, timeout_s)
        lowered = lowered_max_seq_len(running.log_path)
        requested = self.last_launch.max_seq_len if self.last_launch is not None else 0
        if lowered is not None and lowered < requested:
            raise EngineError(
                f"TensorRT-LLM lowered max_seq_len from {requested} to {lowered} ({running.layout.id}): its KV cache "
                f"cannot hold one sequence of {requested} tokens, and it shortens the limit instead of failing. "
                f"Set max_seq_len={lowered} as an engine option, or give the KV cache more memory "
                f"(gpu_mem_gb, kv_cache_free_gpu_memory_fraction, more GPUs)",
                running.log_path,
            )

    def stop(self, running: RunningEngine, check_memory: bool = True) -> None:
        """Kill the process group, then any tagged process outside it, then wait for memory."""
        tag = self._tags.pop(running.pid, self._tag)
        # Snapshot while the leader is alive: by tag (also finds orphans of a crashed leader) and
        # by parent pid (in case a launcher does not pass the environment on).
        before = tagged_processes(tag)
        if running.alive:
            before.update(descendants(running.pid))
        if running.process is not None:
            kill_group(running.process, self.stop_timeout_s)
        before.update(tagged_processes(tag))
        kill_stragglers(before, self.straggler_grace_s)
        if check_memory and running.memory_before_mb:
            wait_memory_back(running.memory_before_mb, timeout_s=self.memory_timeout_s)
