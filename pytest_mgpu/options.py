"""Gate options shared by the pytest plugin (``--mgpu-...``) and the ``pytest-mgpu`` CLI (``--...``).

The keyword arguments are plain argparse ones, so the same function feeds pytest's
``group.addoption`` and an ``argparse.ArgumentParser``; ``compare.gate_config_from_options``
turns the parsed values into a :class:`~pytest_mgpu.compare.GateConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .compare import (
    DEFAULT_DRIFT,
    DEFAULT_GATED,
    DEFAULT_NOISE_FLOOR,
    DEFAULT_NOISE_K,
    DEFAULT_TAIL_TOLERANCE,
    DEFAULT_TOLERANCE,
    Tolerance,
    parse_metric_list,
    parse_metric_tolerance,
)


def parse_noise_k(text: str) -> float:
    """A positive float for ``--mgpu-noise-k``."""
    try:
        k = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Could not parse noise multiplier: {text!r}; expected a number such as 3") from None
    if not k >= 0:
        raise argparse.ArgumentTypeError(f"Noise multiplier {text!r} must be >= 0")
    return k


def parse_noise_floor(text: str) -> float:
    """A percentage or fraction for ``--mgpu-noise-floor`` (``0.5%`` or ``0.005``)."""
    return Tolerance.parse(text).fraction


def _h(text: str) -> str:
    """Escape ``%`` for argparse, which %-formats help strings."""
    return text.replace("%", "%%")


def add_gate_options(addoption: Callable[..., Any], prefix: str = "--mgpu-") -> None:
    """Register the gate options with ``addoption`` (pytest group or argparse parser).

    Dests follow the option names: ``mgpu_tolerance``, ``mgpu_gate``, ``mgpu_noise_k``,
    ``mgpu_noise_floor``, ``mgpu_drift``, ``mgpu_strict`` (without ``mgpu_`` for the CLI).
    """
    gated = ", ".join(DEFAULT_GATED)
    addoption(
        f"{prefix}tolerance",
        action="append",
        type=parse_metric_tolerance,
        default=None,
        metavar="METRIC=PCT",
        help=_h(
            f"Tolerance of a metric, e.g. tpot_p50=8% (repeatable). Defaults: {DEFAULT_TOLERANCE:.0%}, "
            f"{DEFAULT_TAIL_TOLERANCE:.0%} for p90/p99. Naming a metric gates it"
        ),
    )
    addoption(
        f"{prefix}gate",
        action="append",
        type=parse_metric_list,
        default=None,
        metavar="METRIC[,METRIC]",
        help=f"Also gate these metrics (repeatable); always gated: {gated}",
    )
    addoption(
        f"{prefix}noise-k",
        type=parse_noise_k,
        default=DEFAULT_NOISE_K,
        metavar="K",
        help=f"A regression must exceed K times the noise of the repeats to fail (default {DEFAULT_NOISE_K:g})",
    )
    addoption(
        f"{prefix}noise-floor",
        type=parse_noise_floor,
        default=DEFAULT_NOISE_FLOOR,
        metavar="PCT",
        help=_h(f"Lower bound on the per-run noise estimate (default {DEFAULT_NOISE_FLOOR:.1%})"),
    )
    addoption(
        f"{prefix}drift",
        type=parse_noise_floor,
        default=DEFAULT_DRIFT,
        metavar="PCT",
        help=_h("Expected day-to-day drift between the baseline and this run, added to the noise (default 0%)"),
    )
    addoption(
        f"{prefix}strict",
        action="store_true",
        default=False,
        help="Fail on WARN too: regressions beyond tolerance but within noise, unconfirmed and warn-only ones",
    )
