"""Command-line and ini options of the ``mgpu`` group, and the validated settings built from them."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .engines import ADAPTERS

DEFAULT_ENGINE = "vllm"
SIM_PROFILES_HINT = "v100-16gb, a100-80gb, h100-80gb, h200-141gb"


def parse_kv(value: str, what: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value); a bad value names the option and the fix."""
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise pytest.UsageError(f"{what} expects KEY=VALUE, got {value!r}; e.g. {what} speed=0.8")
    return key.strip(), val.strip()


def add_options(parser: pytest.Parser) -> pytest.OptionGroup:
    """Register every non-gate option in the ``mgpu`` group and return the group."""
    group = parser.getgroup("mgpu", "multi-GPU inference performance testing")
    add = group.addoption
    add("--mgpu-engine", metavar="NAME", default=None, choices=sorted(ADAPTERS),
        help=f"Engine to measure: {', '.join(sorted(ADAPTERS))} (default: {DEFAULT_ENGINE}; "
             "sim when NVML finds no GPU and no engine is named)")
    add("--mgpu-engine-opt", metavar="KEY=VALUE", action="append", default=[],
        help="Engine option, repeatable: server flags for vllm/trtllm, model knobs for sim (speed=, noise=)")
    add("--mgpu-engine-env", metavar="KEY=VALUE", action="append", default=[],
        help="Environment variable for the engine process, repeatable (e.g. NCCL_P2P_DISABLE=1)")
    add("--mgpu-engine-python", metavar="PATH", default=None,
        help="Interpreter that launches the engine, e.g. a venv with vLLM (default: this one)")
    add("--mgpu-model", metavar="NAME|DIR", default=None,
        help="Model for tests without a model mark: built-in name or directory with config.json "
             "(default: llama-2-7b)")
    add("--mgpu-sim-gpu", metavar="PROFILE", default="v100-16gb",
        help=f"GPU profile the sim engine models: {SIM_PROFILES_HINT} (default: v100-16gb)")
    add("--mgpu-sim-gpus", metavar="N", type=int, default=4,
        help="GPUs the sim engine pretends to have, for layout skips (default: 4)")
    add("--mgpu-start-timeout", metavar="SECONDS", type=float, default=900.0,
        help="Seconds an engine may take to become ready (default: 900)")
    add("--mgpu-request-timeout", metavar="SECONDS", type=float, default=1800.0,
        help="Seconds one measured run may take before open requests count as failed (default: 1800)")
    add("--mgpu-log-dir", metavar="DIR", default=None,
        help="Where engine logs go (default: <rootdir>/.mgpu/logs)")
    add("--mgpu-json", metavar="PATH", default=None,
        help="Write every result with all its fields to this JSON file (schema: docs/results-schema.md)")
    add("--mgpu-json-records", action="store_true", default=False,
        help="Include per-request records in --mgpu-json (large)")
    add("--mgpu-repeats", metavar="N", type=int, default=None,
        help="Measure each workload N times and compare the median (default: 3; ini mgpu_repeats)")
    add("--mgpu-baseline-dir", metavar="DIR", default=None,
        help="Baseline store (default: <rootdir>/baselines; ini mgpu_baseline_dir)")
    add("--mgpu-update-baselines", action="store_true", default=False,
        help="Record this run's results as the new baselines (atomic writes)")
    add("--mgpu-no-confirm", dest="mgpu_confirm", action="store_false", default=True,
        help="Do not re-measure before a FAIL is final (default: confirm)")
    add("--mgpu-report-md", metavar="PATH", default=None,
        help="Write a Markdown gate report fit for a PR comment")
    add("--mgpu-benchmark-json", metavar="PATH", default=None,
        help="Export results in pytest-benchmark's JSON format")
    parser.addini("mgpu_repeats", "Default --mgpu-repeats", default="3")
    parser.addini("mgpu_baseline_dir", "Default --mgpu-baseline-dir", default="baselines")
    parser.addini("mgpu_tolerance", "Per-metric gate tolerances, e.g. 'tpot_p50=8% output_throughput_per_gpu=3%'",
                  type="args", default=[])
    return group


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
    if engine != "sim" and opt("mgpu_sim_gpu") != "v100-16gb":
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
        model=opt("mgpu_model") or "llama-2-7b",
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
    )
