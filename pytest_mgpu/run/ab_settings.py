"""The same-job A/B's options (``--mgpu-ab*``), parsed at configure: pure Python, no engine code.

:mod:`.ab` runs the A/B; this module only says what the old side is and which rule applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pytest

from ..judge.ab_verdicts import AbConfig
from .settings import parse_kv, resolve_python

if TYPE_CHECKING:  # pragma: no cover - only the type
    from ..engines import EngineSpec


@dataclass(frozen=True)
class AbSettings:
    """The old side of an A/B and the rule's parameters (from ``--mgpu-ab*``)."""

    old_python: str
    old_env: tuple[tuple[str, str], ...] = ()
    old_options: tuple[tuple[str, str], ...] = ()
    rule: AbConfig = field(default_factory=AbConfig)

    def old_spec(self, new: EngineSpec) -> EngineSpec:
        """The old side's engine spec: the new one with the old interpreter, env and options over it."""
        return replace(
            new,
            python=self.old_python,
            env=tuple(sorted(self.old_env_over(new.env_dict).items())),
            options=tuple(sorted({**new.options_dict, **dict(self.old_options)}.items())),
        )

    def old_env_over(self, new_env: Mapping[str, str]) -> dict[str, str]:
        """The old side's engine environment: ``--mgpu-ab-env`` over the new side's ``new_env``."""
        return {**new_env, **dict(self.old_env)}

    def describe_old(self) -> str:
        """``python3 PYTHONPATH=/tmp/site25 opt max-num-seqs=256``: what sets the old side apart."""
        parts = [self.old_python]
        parts += [f"{k}={v}" for k, v in self.old_env]
        parts += [f"opt {k}={v}" for k, v in self.old_options]
        return " ".join(parts)


def _kv(values: Sequence[str], option: str) -> tuple[tuple[str, str], ...]:
    out = dict(parse_kv(v, option, example="PYTHONPATH=/opt/old") for v in values)
    return tuple(sorted(out.items()))


def ab_settings(config: pytest.Config) -> AbSettings | None:
    """Parse and check ``--mgpu-ab*``; None when no A/B was asked for. Bad values are usage errors."""
    opt = config.getoption
    python = opt("mgpu_ab")
    env, opts = opt("mgpu_ab_env") or [], opt("mgpu_ab_opt") or []
    min_rounds, max_rounds = opt("mgpu_ab_min_rounds"), opt("mgpu_ab_rounds")
    if python is None:
        given = [n for n, v in (("--mgpu-ab-env", env), ("--mgpu-ab-opt", opts)) if v]
        rounds = (("--mgpu-ab-rounds", max_rounds), ("--mgpu-ab-min-rounds", min_rounds))
        given += [n for n, v in rounds if v is not None]
        if given:
            raise pytest.UsageError(f"{', '.join(given)} only apply to an A/B; add --mgpu-ab OLD_PYTHON")
        return None
    resolved = resolve_python(
        python, "--mgpu-ab",
        "--mgpu-ab=.venv-old/bin/python, or --mgpu-ab=python3 --mgpu-ab-env PYTHONPATH=/opt/old-site",
    )
    base = AbConfig()
    lo = base.min_rounds if min_rounds is None else min_rounds
    hi = max(base.max_rounds, lo) if max_rounds is None else max_rounds
    try:
        rule = replace(base, min_rounds=lo, max_rounds=hi)
    except ValueError as exc:
        raise pytest.UsageError(f"--mgpu-ab-min-rounds/--mgpu-ab-rounds: {exc}") from None
    return AbSettings(
        old_python=resolved, old_env=_kv(env, "--mgpu-ab-env"), old_options=_kv(opts, "--mgpu-ab-opt"), rule=rule,
    )
