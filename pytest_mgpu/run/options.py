"""Every ``--mgpu-*`` option and ``mgpu_*`` ini key, registered in one place.

The functions take an ``addoption`` callable with plain argparse keywords and a ``prefix``, so the
same code feeds pytest's ``mgpu`` option group (``--mgpu-tolerance``) and the ``pytest-mgpu`` CLI's
``argparse`` parser (``--tolerance``). :mod:`.settings` turns the parsed values into
:class:`~pytest_mgpu.run.settings.Settings` and a :class:`~pytest_mgpu.judge.verdicts.GateConfig`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ..engines import ADAPTERS

# The gate's defaults as the options show them. They are the numbers of :mod:`.verdicts` (a test
# checks that they agree), written here because this module is imported in every pytest run of a
# project that has the plugin installed, and the gate's module is not (issue 18: plugin overhead).
DEFAULT_GATED: tuple[str, ...] = ("output_throughput_per_gpu", "ttft_p50", "tpot_p50")
DEFAULT_TOLERANCE = 0.05
DEFAULT_TAIL_TOLERANCE = 0.10
DEFAULT_NOISE_K = 2.5
DEFAULT_NOISE_FLOOR = 0.005
DEFAULT_DRIFT = 0.0
STRICT_HELP = (
    "Also fail on WARN (beyond tolerance but within noise, not reproduced on a re-measurement, or a "
    "warn-only metric), MISMATCH (the baseline is for another model, workload, layout, engine or engine "
    "options) and NEW (no baseline). INVALID and FAIL always fail"
)

DEFAULT_ENGINE = "vllm"
DEFAULT_MODEL = "llama-2-7b"
DEFAULT_SIM_GPU = "v100-16gb"
#: The sim's modelled clock runs this many times faster than the wall clock (docs/sim.md, "Time scale").
DEFAULT_SIM_TIME_SCALE = 50.0
SIM_PROFILES_HINT = "v100-16gb, a100-80gb, h100-80gb, h200-141gb"

AddOption = Callable[..., Any]


@dataclass(frozen=True)
class EngineChoice:
    """One engine named by ``--mgpu-engine``: ``vllm`` (required) or ``vllm?`` (optional).

    A required engine that is not installed is a usage error before any test runs; an optional
    one's tests are skipped with the install hint (the user asked for that skip).
    """

    name: str
    optional: bool = False

    def __str__(self) -> str:
        return self.name + ("?" if self.optional else "")


def parse_engine_choice(text: str) -> EngineChoice:
    """``vllm`` or ``vllm?`` -> :class:`EngineChoice`; an unknown name lists the known ones."""
    raw = text.strip()
    optional = raw.endswith("?")
    name = raw.removesuffix("?").strip()
    if name not in ADAPTERS:
        raise argparse.ArgumentTypeError(
            f"unknown engine {text!r}; choose one of: {', '.join(sorted(ADAPTERS))} "
            f"(add ? to make it optional, e.g. vllm?)"
        )
    return EngineChoice(name, optional)


def parse_engine_choices(text: str) -> tuple[EngineChoice, ...]:
    """``vllm`` or ``vllm,trtllm?`` -> one :class:`EngineChoice` per engine (engines side by side).

    Each engine makes its own item of every test (``test_x[vllm-tp2-pp1]``); a name twice is an error.
    """
    choices = tuple(parse_engine_choice(part) for part in text.split(","))
    names = [c.name for c in choices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise argparse.ArgumentTypeError(f"--mgpu-engine {text!r} names {', '.join(dupes)} twice")
    return choices


def parse_noise_k(text: str) -> float:
    """A positive float for ``--mgpu-noise-k``."""
    try:
        k = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Could not parse noise multiplier: {text!r}; expected a number such as 3"
        ) from None
    if not k >= 0:
        raise argparse.ArgumentTypeError(f"Noise multiplier {text!r} must be >= 0")
    return k


def parse_noise_floor(text: str) -> float:
    """A percentage or fraction for ``--mgpu-noise-floor`` (``0.5%`` or ``0.005``)."""
    from ..judge.verdicts import Tolerance  # lazy, as the two below: only when the option is given

    return Tolerance.parse(text).fraction


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; shards are numbered 1..N. Bad input raises ``argparse.ArgumentTypeError``."""
    i, sep, n = str(text).strip().partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise argparse.ArgumentTypeError(f"Could not parse shard {text!r}: expected I/N such as 1/4")
    a, b = int(i), int(n)
    if b < 1 or not 1 <= a <= b:
        raise argparse.ArgumentTypeError(
            f"Shard {text!r} is out of range: shards are numbered 1..N, e.g. 1/{max(b, 2)}"
        )
    return a, b


def parse_metric_tolerance(text: str) -> Any:
    """``METRIC=PCT`` for ``--mgpu-tolerance`` (:func:`pytest_mgpu.judge.verdicts.parse_metric_tolerance`)."""
    from ..judge.verdicts import parse_metric_tolerance as parse

    return parse(text)


def parse_metric_list(text: str) -> list[str]:
    """``METRIC[,METRIC]`` for ``--mgpu-gate`` (:func:`pytest_mgpu.judge.verdicts.parse_metric_list`)."""
    from ..judge.verdicts import parse_metric_list as parse

    return parse(text)


def _h(text: str) -> str:
    """Escape ``%`` for argparse, which %-formats help strings."""
    return text.replace("%", "%%")


def _dest(prefix: str, name: str) -> str:
    """The dest of option ``name`` under ``prefix``: ``mgpu_confirm`` for ``--mgpu-``, ``confirm`` for ``--``."""
    return prefix.lstrip("-").replace("-", "_") + name


def add_options(addoption: AddOption, prefix: str = "--mgpu-") -> None:
    """Register the engine, measurement and output options with ``addoption``."""
    add = addoption
    engines = ", ".join(sorted(ADAPTERS))
    add(f"{prefix}engine", metavar="NAME[?][,NAME[?]]", default=None, type=parse_engine_choices,
        help=f"Engine to measure: {engines} (default: {DEFAULT_ENGINE}; sim when NVML finds no GPU and "
             "no engine is named). An engine that is not installed stops the run before any test; "
             "NAME? makes it optional: its tests are skipped instead. Several, e.g. vllm,trtllm: one item "
             "per engine, compared side by side")
    add(f"{prefix}engine-opt", metavar="[ENGINE:]KEY=VALUE", action="append", default=[],
        help="Engine option, repeatable: server flags for vllm/trtllm, model knobs for sim (speed=, noise=); "
             "ENGINE: gives it to that engine only (with several engines)")
    add(f"{prefix}engine-env", metavar="KEY=VALUE", action="append", default=[],
        help="Environment variable for the engine process, repeatable (e.g. NCCL_P2P_DISABLE=1)")
    add(f"{prefix}engine-python", metavar="PYTHON", default=None,
        help="Interpreter that launches the engine: a path (a venv with vLLM: .venv-vllm/bin/python) or a "
             "command on PATH (python3), as --mgpu-ab takes it; write it with = (default: this one)")
    add(f"{prefix}model", metavar="NAME|DIR", default=None,
        help="Model for tests without a model mark: built-in name or directory with config.json "
             f"(default: {DEFAULT_MODEL})")
    add(f"{prefix}sim-gpu", metavar="PROFILE", default=DEFAULT_SIM_GPU,
        help=f"GPU profile the sim engine models: {SIM_PROFILES_HINT} (default: {DEFAULT_SIM_GPU})")
    add(f"{prefix}sim-gpus", metavar="N", type=int, default=4,
        help="GPUs the sim engine pretends to have, for layout skips (default: 4)")
    add(f"{prefix}prompt", metavar="MODE", default=None, choices=["text", "token-ids"],
        help="How prompts are sent: text (through the engine's tokenizer, as real traffic) or token-ids "
             "(default: text where the engine can tokenize, else token-ids); run(prompt=...) overrides it")
    add(f"{prefix}sim-time-scale", metavar="N", type=float, default=DEFAULT_SIM_TIME_SCALE,
        help="The sim's modelled clock runs N times faster than the wall clock (inf: as fast as the host "
             "allows); the sim's numbers do not depend on it, only the wall time does "
             f"(default: {DEFAULT_SIM_TIME_SCALE:g})")
    add(f"{prefix}start-timeout", metavar="SECONDS", type=float, default=900.0,
        help="Seconds an engine may take to become ready (default: 900)")
    add(f"{prefix}request-timeout", metavar="SECONDS", type=float, default=1800.0,
        help="Seconds one measured run may take before open requests count as failed (default: 1800)")
    add(f"{prefix}progress", choices=("auto", "live", "lines", "off"), default="auto",
        help="Progress while engines start and workloads run: live (one line updated in place), lines "
             "(one line per phase), off (default: auto, live on a terminal, lines otherwise and under -q, "
             "where a repeat gets its line only when it took 10 s or more, or with -v)")
    add(f"{prefix}ray-address", metavar="HOST:PORT", default=None,
        help="Run every engine on this Ray cluster through Ray (vLLM's Ray executor; layout(nodes=N) spans "
             "N nodes); GPU inventory and memory checks come from the cluster (default: RAY_ADDRESS; "
             "docs/multinode.md)")
    add(f"{prefix}shard", metavar="I/N", default=None, type=parse_shard,
        help="Run shard I of N (1 <= I <= N): a stable slice of the items, engines kept whole, balanced by an "
             "estimate of their cost; combine the shards' --mgpu-json with `pytest-mgpu merge`")
    add(f"{prefix}log-dir", metavar="DIR", default=None,
        help="Where engine logs go (default: <rootdir>/.mgpu/logs)")
    add(f"{prefix}cache-dir", metavar="DIR", default=None,
        help="Where engines keep compile caches between starts, one folder per engine version "
             "(default: <rootdir>/.mgpu/cache; vLLM: VLLM_CACHE_ROOT=DIR/vllm-VERSION unless set)")
    add(f"{prefix}json", metavar="PATH", default=None,
        help="Write every result with all its fields to this JSON file (schema: docs/results-schema.md)")
    add(f"{prefix}json-records", action="store_true", default=False,
        help="Include per-request records in --mgpu-json (large)")
    add(f"{prefix}repeats", metavar="N", type=int, default=None,
        help="Measure each workload N times and compare the median (default: 3; ini mgpu_repeats)")
    add(f"{prefix}baseline-dir", metavar="DIR", default=None,
        help="Baseline store (default: <rootdir>/baselines; ini mgpu_baseline_dir)")
    add(f"{prefix}update-baselines", action="store_true", default=False,
        help="Record this run's results in the baselines: adds a recording to each entry, keeping the last "
             "ini mgpu_baseline_history (default 5); pytest-mgpu accept does the same from a finished run")
    add(f"{prefix}allow-new", action="store_true", default=False,
        help="Under CI (CI=true), let a session pass in which every gated result is NEW (no baseline for "
             "this hardware): by default such a run fails, because the gate checked nothing")
    add(f"{prefix}no-confirm", dest=_dest(prefix, "confirm"), action="store_false", default=True,
        help="Do not re-measure before a FAIL or an IMPROVED is final (default: confirm)")
    add(f"{prefix}report-md", metavar="PATH", default=None,
        help="Write a Markdown gate report fit for a PR comment")
    add(f"{prefix}plot", metavar="DIR", default=None,
        help="Write the seed's charts as PNG files to DIR: tok/s per GPU and TPOT p50 by layout and engine, "
             "and every sweep (needs matplotlib, the plot extra)")
    add(f"{prefix}benchmark-json", metavar="PATH", default=None,
        help="Export results in pytest-benchmark's JSON format")


def add_ab_options(addoption: AddOption, prefix: str = "--mgpu-") -> None:
    """Register the same-job A/B options (``--mgpu-ab OLD_PYTHON`` and its old-side settings)."""
    add = addoption
    add(f"{prefix}ab", metavar="OLD_PYTHON", default=None,
        help="A/B: measure every item with the old engine from OLD_PYTHON and the new one "
             "(--mgpu-engine-python or this interpreter), interleaved, restarting the engine before each "
             "measurement, and decide on the paired rounds (docs/gate.md, Same-job A/B)")
    add(f"{prefix}ab-env", metavar="KEY=VALUE", action="append", default=[],
        help="A/B: environment variable of the old side only, over --mgpu-engine-env, repeatable "
             "(e.g. PYTHONPATH=/tmp/site25 to pick an older install for the same python)")
    add(f"{prefix}ab-opt", metavar="KEY=VALUE", action="append", default=[],
        help="A/B: engine option of the old side only, over --mgpu-engine-opt, repeatable")
    add(f"{prefix}ab-rounds", metavar="N", type=int, default=None,
        help="A/B: at most N rounds (one old and one new measurement each) per workload (default: 10)")
    add(f"{prefix}ab-min-rounds", metavar="N", type=int, default=None,
        help="A/B: rounds before the first decision (default: 3)")


def add_gate_options(addoption: AddOption, prefix: str = "--mgpu-", *, recorded: bool = False) -> None:
    """Register the gate options with ``addoption`` (pytest group or argparse parser).

    Dests follow the option names: ``mgpu_tolerance``, ``mgpu_gate``, ``mgpu_noise_k``,
    ``mgpu_noise_floor``, ``mgpu_drift``, ``mgpu_strict`` (without ``mgpu_`` for the CLI).
    ``recorded`` (the CLI): the numeric options default to None, meaning "as recorded with the
    results", so that only the options given override the settings the suite judged with.
    """
    gated = ", ".join(DEFAULT_GATED)
    src = "as recorded with the results, else " if recorded else ""
    addoption(
        f"{prefix}tolerance",
        action="append",
        type=parse_metric_tolerance,
        default=None,
        metavar="METRIC=PCT",
        help=_h(
            f"Tolerance of a metric, e.g. tpot_p50=8% (repeatable). Defaults: {src}{DEFAULT_TOLERANCE:.0%}, "
            f"{DEFAULT_TAIL_TOLERANCE:.0%} for p90/p99. Naming a metric gates it"
        ),
    )
    addoption(
        f"{prefix}gate",
        action="append",
        type=parse_metric_list,
        default=None,
        metavar="METRIC[,METRIC]",
        help=f"Also gate these metrics (repeatable); always gated: {gated}"
        + (" and those gated when the results were recorded" if recorded else ""),
    )
    addoption(
        f"{prefix}noise-k",
        type=parse_noise_k,
        default=None if recorded else DEFAULT_NOISE_K,
        metavar="K",
        help=f"A regression must exceed K times the noise of the difference to fail (default {src}{DEFAULT_NOISE_K:g})",
    )
    addoption(
        f"{prefix}noise-floor",
        type=parse_noise_floor,
        default=None if recorded else DEFAULT_NOISE_FLOOR,
        metavar="PCT",
        help=_h(f"Lower bound on the per-run noise estimate (default {src}{DEFAULT_NOISE_FLOOR:.1%})"),
    )
    addoption(
        f"{prefix}drift",
        type=parse_noise_floor,
        default=None if recorded else DEFAULT_DRIFT,
        metavar="PCT",
        help=_h(f"Expected day-to-day drift between the baseline and this run, added to the noise (default {src}0%)"),
    )
    addoption(
        f"{prefix}strict",
        action="store_true",
        default=False,
        help=STRICT_HELP,
    )


def add_drift_option(addoption: AddOption) -> None:
    """``--mgpu-anchor-drift``: what a slow drift since a baseline entry's anchor recording does (docs/gate.md)."""
    addoption(
        "--mgpu-anchor-drift",
        choices=("fail", "warn"),
        default="fail",
        help="A run beyond the tolerance and the noise against its baseline entry's anchor recording (the first, "
             "or the one pinned with pytest-mgpu accept --anchor) FAILs (default) or only WARNs",
    )


def add_ini(addini: Callable[..., None]) -> None:
    """Register the ``mgpu_*`` ini keys (defaults of their options)."""
    addini("mgpu_repeats", "Default --mgpu-repeats", default="3")
    addini("mgpu_baseline_dir", "Default --mgpu-baseline-dir", default="baselines")
    addini("mgpu_baseline_history", "Recordings each baseline entry keeps (--mgpu-update-baselines, "
           "pytest-mgpu accept); from two on, their spread enters the noise band", default="5")
    addini("mgpu_tolerance", "Per-metric gate tolerances, e.g. 'tpot_p50=8% output_throughput_per_gpu=3%'",
           type="args", default=[])


#: Each ``--mgpu-*`` option's dest and each ``mgpu_*`` ini key, with its default (set by :func:`register`).
OPTION_DEFAULTS: dict[str, Any] = {}
INI_DEFAULTS: dict[str, Any] = {}


def register(parser: pytest.Parser) -> None:
    """Register everything with pytest: the options in the ``mgpu`` group, then the ini keys."""
    group = parser.getgroup("mgpu", "multi-GPU inference performance testing")

    def addoption(*names: str, **kwargs: Any) -> None:
        group.addoption(*names, **kwargs)
        OPTION_DEFAULTS[kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")] = kwargs.get("default")

    def addini(name: str, *args: Any, **kwargs: Any) -> None:
        parser.addini(name, *args, **kwargs)
        INI_DEFAULTS[name] = kwargs.get("default")

    add_options(addoption)
    add_ab_options(addoption)
    add_gate_options(addoption)
    add_drift_option(addoption)
    add_ini(addini)


def given(config: pytest.Config) -> bool:
    """Whether any ``--mgpu-*`` option or ``mgpu_*`` ini key differs from its default.

    Then the plugin checks the options at configure (a bad value is a usage error before
    collection); otherwise it waits for the first mgpu test, and a project without any pays nothing.
    """
    if any(config.getoption(dest, default) != default for dest, default in OPTION_DEFAULTS.items()):
        return True
    return any(config.getini(name) != default for name, default in INI_DEFAULTS.items())
