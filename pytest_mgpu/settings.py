"""The validated settings of one session, parsed from the options that :mod:`.options` registers."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .options import DEFAULT_ENGINE, DEFAULT_MODEL, DEFAULT_SIM_GPU
from .verdicts import GateConfig, Tolerance, parse_metric_tolerance


def parse_kv(value: str, what: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value); a bad value names the option and the fix."""
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise pytest.UsageError(f"{what} expects KEY=VALUE, got {value!r}; e.g. {what} speed=0.8")
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
    prompt: str | None = None  # --mgpu-prompt; None: text where the engine can tokenize
    extra: dict[str, Any] = field(default_factory=dict)


def build_settings(config: pytest.Config, gpu_count: int, nvml_error: str | None) -> Settings:
    """Read and validate options; choose the engine (``sim`` fallback without GPUs)."""
    opt = config.getoption
    root = Path(config.rootpath)
    named = opt("mgpu_engine")
    engine = named or DEFAULT_ENGINE
    fallback = None
    if named is None and gpu_count == 0:
        engine = "sim"
        fallback = f"no GPU found ({nvml_error or 'NVML reports 0 devices'}); using the sim engine"
    repeats_raw = opt("mgpu_repeats")
    if repeats_raw is None:
        repeats_raw = config.getini("mgpu_repeats")
    try:
        repeats = int(repeats_raw)
    except ValueError:
        raise pytest.UsageError(f"mgpu_repeats must be an int >= 1, got {repeats_raw!r}") from None
    if repeats < 1:
        raise pytest.UsageError(f"--mgpu-repeats must be >= 1, got {repeats}")
    if opt("mgpu_sim_gpus") < 1:
        raise pytest.UsageError(f"--mgpu-sim-gpus must be >= 1, got {opt('mgpu_sim_gpus')}")
    for name in ("mgpu_start_timeout", "mgpu_request_timeout"):
        v = opt(name)
        if not (v > 0 and math.isfinite(v)):
            raise pytest.UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")
    engine_opts = dict(parse_kv(v, "--mgpu-engine-opt") for v in opt("mgpu_engine_opt"))
    if engine != "sim" and opt("mgpu_sim_gpu") != DEFAULT_SIM_GPU:
        raise pytest.UsageError(
            f"--mgpu-sim-gpu only applies to the sim engine, but the engine is {engine}; "
            f"drop it or add --mgpu-engine sim"
        )
    python = opt("mgpu_engine_python") or sys.executable
    if opt("mgpu_engine_python") and not os.access(python, os.X_OK):
        raise pytest.UsageError(f"--mgpu-engine-python {python!r} is not an executable interpreter")

    def _path(v: str | None) -> Path | None:
        return None if v is None else (Path(v) if Path(v).is_absolute() else root / v)

    baseline_dir = _path(opt("mgpu_baseline_dir") or config.getini("mgpu_baseline_dir"))
    assert baseline_dir is not None
    return Settings(
        engine=engine,
        engine_named=named is not None,
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
        fallback_reason=fallback,
        prompt=opt("mgpu_prompt"),
    )


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
