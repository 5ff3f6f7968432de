"""The validated settings of one session, parsed from the options that :mod:`.options` registers."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..engines import ADAPTERS, check_engine_options
from ..errors import EngineError, SimOptionError
from ..judge.verdicts import GateConfig, Tolerance, parse_metric_tolerance
from ..sim.model import GPU_PROFILES, SimOptions
from .options import DEFAULT_ENGINE, DEFAULT_MODEL, DEFAULT_SIM_GPU, EngineChoice


def parse_kv(value: str, what: str, example: str = "speed=0.8") -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value); a bad value names the option and the fix (``example``)."""
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise pytest.UsageError(f"{what} expects KEY=VALUE, got {value!r}; e.g. {what} {example}")
    return key.strip(), val.strip()


@dataclass
class Settings:
    """Validated plugin settings for one session."""

    engine: str
    engine_named: bool
    engine_options: dict[str, str]
    engine_env: dict[str, str]
    engine_python: str
    model: str
    sim_gpu: str
    sim_gpus: int
    start_timeout_s: float
    request_timeout_s: float
    log_dir: Path
    json_path: Path | None
    json_records: bool
    repeats: int
    baseline_dir: Path
    update_baselines: bool
    confirm: bool
    report_md: Path | None
    benchmark_json: Path | None
    fallback_reason: str | None = None
    #: ``--mgpu-engine NAME?``: a missing engine skips its tests instead of stopping the run.
    engine_optional: bool = False
    prompt: str | None = None  # --mgpu-prompt; None: text where the engine can tokenize
    baseline_history: int = 5
    sim_time_scale: float = 1.0
    plot_dir: Path | None = None  # --mgpu-plot
    #: Every engine ``--mgpu-engine`` named (``vllm,trtllm?``); empty when none was named.
    engines: tuple[EngineChoice, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None  # engines' compile caches, per engine version
    #: ``--mgpu-allow-new``: under CI, a session whose gated results are all NEW may pass.
    allow_new: bool = False


def build_settings(config: pytest.Config) -> Settings:
    """Read and validate the options, without NVML or subprocesses.

    The engine is the named one, else :data:`DEFAULT_ENGINE` until :func:`choose_engine` has
    seen the GPUs.
    """
    opt = config.getoption
    root = Path(config.rootpath)
    chosen: tuple[EngineChoice, ...] | None = opt("mgpu_engine")
    named: EngineChoice | None = chosen[0] if chosen else None
    engine = named.name if named is not None else DEFAULT_ENGINE
    repeats_raw = opt("mgpu_repeats")
    if repeats_raw is None:
        repeats_raw = config.getini("mgpu_repeats")
    try:
        repeats = int(repeats_raw)
    except ValueError:
        raise pytest.UsageError(f"mgpu_repeats must be an int >= 1, got {repeats_raw!r}") from None
    if repeats < 1:
        raise pytest.UsageError(f"--mgpu-repeats must be >= 1, got {repeats}")
    if not opt("mgpu_sim_time_scale") > 0:
        raise pytest.UsageError(
            f"--mgpu-sim-time-scale must be > 0 (1 = real time, inf = unpaced), got {opt('mgpu_sim_time_scale')}")
    if opt("mgpu_sim_gpus") < 1:
        raise pytest.UsageError(f"--mgpu-sim-gpus must be >= 1, got {opt('mgpu_sim_gpus')}")
    for name in ("mgpu_start_timeout", "mgpu_request_timeout"):
        v = opt(name)
        if not (v > 0 and math.isfinite(v)):
            raise pytest.UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")
    engine_opts = dict(parse_kv(v, "--mgpu-engine-opt") for v in opt("mgpu_engine_opt"))
    python = sys.executable
    if opt("mgpu_engine_python"):
        python = resolve_python(
            opt("mgpu_engine_python"), "--mgpu-engine-python",
            "--mgpu-engine-python=.venv-vllm/bin/python or --mgpu-engine-python=python3",
        )
        check_rootdir_not_from_python(config, opt("mgpu_engine_python"))

    def _path(v: str | None) -> Path | None:
        return None if v is None else (Path(v) if Path(v).is_absolute() else root / v)

    baseline_dir = _path(opt("mgpu_baseline_dir") or config.getini("mgpu_baseline_dir"))
    assert baseline_dir is not None
    history_raw = config.getini("mgpu_baseline_history")
    try:
        history = int(history_raw)
    except ValueError:
        history = 0
    if history < 1:
        raise pytest.UsageError(f"ini mgpu_baseline_history must be an int >= 1, got {history_raw!r}")
    settings = Settings(
        engine=engine,
        engine_named=named is not None,
        engine_optional=named is not None and named.optional,
        engine_options=engine_opts,
        engine_env=dict(parse_kv(v, "--mgpu-engine-env") for v in opt("mgpu_engine_env")),
        engine_python=python,
        model=opt("mgpu_model") or DEFAULT_MODEL,
        sim_gpu=opt("mgpu_sim_gpu"),
        sim_gpus=opt("mgpu_sim_gpus"),
        start_timeout_s=opt("mgpu_start_timeout"),
        request_timeout_s=opt("mgpu_request_timeout"),
        log_dir=_path(opt("mgpu_log_dir")) or root / ".mgpu" / "logs",
        json_path=_path(opt("mgpu_json")),
        json_records=opt("mgpu_json_records"),
        repeats=repeats,
        baseline_dir=baseline_dir,
        update_baselines=opt("mgpu_update_baselines"),
        confirm=opt("mgpu_confirm"),
        report_md=_path(opt("mgpu_report_md")),
        benchmark_json=_path(opt("mgpu_benchmark_json")),
        prompt=opt("mgpu_prompt"),
        cache_dir=_path(opt("mgpu_cache_dir")) or root / ".mgpu" / "cache",
        baseline_history=history,
        sim_time_scale=opt("mgpu_sim_time_scale"),
        plot_dir=_path(opt("mgpu_plot")),
        engines=tuple(chosen or ()),
    )
    check_paths(settings)
    named_dir = opt("mgpu_baseline_dir")
    if named_dir and not settings.update_baselines and not settings.baseline_dir.is_dir():
        raise pytest.UsageError(
            f"--mgpu-baseline-dir {named_dir}: no such directory ({settings.baseline_dir}); every result would be "
            f"NEW and the gate would check nothing. Fix the path, or record baselines there first with "
            f"--mgpu-update-baselines"
        )
    settings.allow_new = bool(opt("mgpu_allow_new", False))
    if opt("mgpu_sim_gpu") != DEFAULT_SIM_GPU:
        check_sim_profile(settings.sim_gpu)
    if named is not None:
        check_engine_settings(settings)
    return settings


def resolve_python(value: str, option: str, example: str) -> str:
    """The interpreter ``value`` names: a path, or a command looked up on PATH (``python3``).

    One resolver for ``--mgpu-engine-python`` and ``--mgpu-ab``. A directory (a venv's root) is a
    usage error that suggests its ``bin/python``; anything else that is not an executable file is
    a usage error with ``example``.
    """
    resolved = value if os.sep in value or (os.altsep and os.altsep in value) else shutil.which(value)
    if resolved is None and os.path.isdir(value):  # a bare directory name, e.g. "venv"
        resolved = value
    if resolved is not None and os.path.isdir(resolved):
        # A venv's root gets its bin/python; its bin/ folder (or a folder holding a python) gets that python.
        inside = os.path.join(resolved, "python")
        hint = inside if os.path.isfile(inside) else os.path.join(resolved, "bin", "python")
        raise pytest.UsageError(
            f"{option} {value!r} is a directory, not an interpreter; pass its python, e.g. {option}={hint}"
        )
    if resolved is None or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        where = "" if os.sep in value else " (not found on PATH either)"
        raise pytest.UsageError(
            f"{option} {value!r} is not an executable interpreter{where}; pass a path or a command on PATH, "
            f"e.g. {example}"
        )
    return resolved


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a directory we write into, or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a directory"
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"cannot be created: {base} is a file"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"cannot be created or written: {base} is not writable"
    return None


def _file_problem(path: Path) -> str | None:
    """Why a file cannot be written (atomically, beside itself) at ``path``, or None.

    Probes the directory with a temporary file, which also catches read-only file systems.
    """
    if path.is_dir():
        return "is a directory; give a file name"
    why = _dir_problem(path.parent)
    if why:
        return f"cannot be written: its directory {path.parent} {why}"
    base = _nearest_existing(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mgpu-probe-", dir=base)
    except OSError as exc:
        return f"cannot be written: creating a file in {base} fails ({exc.strerror})"
    os.close(fd)
    os.unlink(tmp)
    return None


def check_rootdir_not_from_python(config: pytest.Config, python: str) -> None:
    """A UsageError when pytest chose its rootdir from ``--mgpu-engine-python``'s path.

    pytest takes every argument that names an existing path for a test path when it picks the
    rootdir, an option's value included: ``--mgpu-engine-python /opt/vllm/bin/python`` (with a
    space) from a directory without a pytest configuration makes the rootdir ``/opt/vllm/bin``
    (or the project of that venv), and the baselines would be read and written under it. The
    ``=`` form (``--mgpu-engine-python=PATH``) is never taken for a path.
    """
    args = list(config.invocation_params.args)
    if python not in args or f"--mgpu-engine-python={python}" in args:
        return
    root = Path(config.rootpath).absolute()
    here = Path(config.invocation_params.dir).absolute()
    exe = Path(here, python).absolute()
    if root == here or not exe.is_relative_to(root):
        return
    # With no configuration file the rootdir is the common ancestor of the arguments: the python's path
    # moved it (to ``/`` beside ``perf_tests/``, say) even though the working directory lies under it.
    # With one, the path mattered only if the rootdir is not above the working directory.
    if config.inipath is not None and here.is_relative_to(root):
        return
    raise pytest.UsageError(
        f"pytest chose the rootdir {root} from --mgpu-engine-python's path {python} (it takes every "
        f"argument that names a file for a test path), so baselines would go under {root}/baselines; "
        f"write --mgpu-engine-python={python} (with '='), or pass --rootdir"
    )


def check_paths(settings: Settings) -> None:
    """The baseline and log directories and the output files can be written; UsageError otherwise.

    Checked at configure, before any engine starts, so that a bad path is not found at session
    end after an hour of measurements.
    """
    dirs = [("--mgpu-baseline-dir", settings.baseline_dir), ("--mgpu-log-dir", settings.log_dir)]
    if settings.plot_dir is not None:
        from ..report.plots import matplotlib_missing  # lazy: the report imports numpy; this, no matplotlib

        why_not = matplotlib_missing()
        if why_not:
            raise pytest.UsageError(why_not)
        dirs.append(("--mgpu-plot", settings.plot_dir))
    for name, path in dirs:
        why = _dir_problem(path)
        if why:
            raise pytest.UsageError(f"{name} {path} {why}; give a directory that can be created or written")
    files = (
        ("--mgpu-json", settings.json_path),
        ("--mgpu-report-md", settings.report_md),
        ("--mgpu-benchmark-json", settings.benchmark_json),
    )
    for name, file in files:
        if file is not None:
            why = _file_problem(file) or _baseline_problem(file, settings.baseline_dir)
            if why:
                raise pytest.UsageError(f"{name} {file} {why}")


def _baseline_problem(path: Path, baseline_dir: Path) -> str:
    """Why an output file must not be written at ``path``: it is in the baseline store, or is a baseline file."""
    try:
        inside = path.resolve().is_relative_to(Path(baseline_dir).resolve())
    except OSError:
        inside = False
    if inside:
        return (f"is inside the baseline directory {baseline_dir}: the run would overwrite or add to the "
                f"baselines; write it elsewhere (record baselines with --mgpu-update-baselines or pytest-mgpu accept)")
    try:  # a baseline file is small; a large file (a results file with records) is not one
        if not path.is_file() or path.stat().st_size > 32 * 2**20:
            return ""
        import json

        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if isinstance(doc, dict) and "entries" in doc and "schema_version" in doc:
        return ("is a baseline file (it holds 'entries'): the run would overwrite it; write the output elsewhere "
                "(record baselines with --mgpu-update-baselines or pytest-mgpu accept)")
    return ""


def check_sim_profile(name: str) -> None:
    """An unknown ``--mgpu-sim-gpu`` profile is a UsageError listing the known ones."""
    if name not in GPU_PROFILES:
        raise pytest.UsageError(
            f"--mgpu-sim-gpu {name!r} is not a sim GPU profile; choose one of: {', '.join(GPU_PROFILES)}"
        )


def check_sim_options(settings: Settings, hint: str = "") -> None:
    """``--mgpu-engine-opt`` keys and values the sim does not know are a UsageError (checked without starting it)."""
    try:
        SimOptions.parse({"gpu": settings.sim_gpu, **options_for(settings, "sim")})
    except SimOptionError as exc:
        raise pytest.UsageError(f"--mgpu-engine-opt: {exc}{hint}") from None


def choose_engine(settings: Settings, gpu_count: int, nvml_error: str | None) -> Settings:
    """Settle the engine once NVML has been asked: the sim when none is named and no GPU is found."""
    if not settings.engine_named:
        if gpu_count == 0:
            settings.engine = "sim"
            settings.fallback_reason = f"no GPU found ({nvml_error or 'NVML reports 0 devices'}); using the sim engine"
        check_engine_settings(settings)
    return settings


def engine_names(settings: Settings) -> list[str]:
    """The engines of this session: every one ``--mgpu-engine`` named, else the chosen one."""
    return [c.name for c in settings.engines] if len(settings.engines) > 1 else [settings.engine]


def multi_engine(settings: Settings) -> bool:
    """Several engines side by side: items are named ``test_x[ENGINE-tp2-pp1]``."""
    return len(settings.engines) > 1


def engine_optional(settings: Settings, engine: str) -> bool:
    """Whether ``engine`` was named optional (``vllm?``): its tests skip when it is missing."""
    if not settings.engines:
        return settings.engine_optional
    return any(c.name == engine and c.optional for c in settings.engines)


def options_for(settings: Settings, engine: str) -> dict[str, str]:
    """``--mgpu-engine-opt`` for ``engine``: the unscoped ones and those written ``ENGINE:KEY=VALUE`` for it."""
    out: dict[str, str] = {}
    for key, value in settings.engine_options.items():
        scope, sep, name = key.partition(":")
        if sep and scope in ADAPTERS:
            if scope == engine:
                out[name] = value
        else:
            out[key] = value
    return out


def check_engine_settings(settings: Settings) -> None:
    """Options that only make sense for some engines; UsageError naming the conflict and the fix."""
    names = engine_names(settings)
    if "sim" not in names and settings.sim_gpu != DEFAULT_SIM_GPU:
        raise pytest.UsageError(
            f"--mgpu-sim-gpu only applies to the sim engine, but the engine is {settings.engine}; "
            f"drop it or add --mgpu-engine sim"
        )
    hint = " (with several engines, give an option to one of them as ENGINE:KEY=VALUE)" if len(names) > 1 else ""
    for name in names:
        if name == "sim":
            check_sim_options(settings, hint)
        try:
            check_engine_options(name, options_for(settings, name))
        except EngineError as exc:
            raise pytest.UsageError(f"--mgpu-engine-opt: {exc}{hint}") from None


def gate_config_from_options(
    get: Callable[[str], Any], prefix: str = "mgpu_", ini_tolerance: Sequence[str] = ()
) -> GateConfig:
    """Build a :class:`GateConfig` from the options of :func:`options.add_gate_options`.

    ``get(name)`` returns an option's value (``config.getoption`` or ``lambda n: getattr(ns, n)``);
    ``ini_tolerance`` are ``METRIC=PCT`` lines from the ini file, which the command line overrides.
    """
    tol: dict[str, Tolerance] = {}
    for line in ini_tolerance:
        for part in str(line).replace(",", " ").split():
            try:
                name, t = parse_metric_tolerance(part)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"ini mgpu_tolerance: {exc}") from None
            tol[name] = t
    for name, t in get(prefix + "tolerance") or []:
        tol[name] = t
    gate = [m for group in (get(prefix + "gate") or []) for m in group]
    base = GateConfig(
        noise_k=float(get(prefix + "noise_k")),
        noise_floor=float(get(prefix + "noise_floor")),
        strict=bool(get(prefix + "strict")),
        drift=float(get(prefix + "drift") or 0.0),
    )
    return base.with_overrides(tol, gate)


def gate_config(config: pytest.Config) -> GateConfig:
    """The session's gate settings from ``--mgpu-*`` options and the ``mgpu_tolerance`` ini key.

    Built once per session at configure time, so a bad tolerance is a usage error, not a test failure.
    """
    try:
        return gate_config_from_options(config.getoption, ini_tolerance=config.getini("mgpu_tolerance"))
    except (argparse.ArgumentTypeError, ValueError) as exc:  # from the ini; options were parsed by argparse
        raise pytest.UsageError(str(exc)) from None
