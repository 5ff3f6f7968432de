"""The README's test command (``nox``) is the short part of CI; ``.ci/run`` still runs every session.

``nox`` runs the default sessions; ``.ci/run`` runs them and then the sessions tagged ``ci``. Together
they must hold every session CI has always run, so that shortening the README's command never drops a
test from CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The sessions CI ran before the README's command was split (lint, unit and plugin tests, floors, the
#: real-vLLM-on-CPU end-to-end tests, the CPU upgrade A/B, the Ray cluster tests).
CI_SESSIONS = {"lint", "tests", "floors", "e2e_cpu", "ab_cpu", "ray"}


def listed(*args: str) -> list[str]:
    """The sessions ``nox -l`` selects with ``args``, in nox's listing."""
    pytest.importorskip("nox")
    out = subprocess.run([sys.executable, "-m", "nox", "-l", "--json", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return [s["session"] for s in json.loads(out.stdout)]


def ci_run_commands() -> list[str]:
    """The nox command lines of ``.ci/run``, comments dropped."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if re.match(r"\s*python3 -m nox\b", line)]


def test_ci_runs_the_defaults_then_the_ci_tag() -> None:
    assert "python3 -m nox" in ci_run_commands()
    assert "python3 -m nox -t ci" in ci_run_commands()


def test_defaults_and_ci_tag_cover_every_session_ci_ran() -> None:
    defaults, tagged = listed(), listed("-t", "ci")
    missing = CI_SESSIONS - set(defaults) - set(tagged)
    assert not missing, f"sessions .ci/run no longer runs: {sorted(missing)}"
    assert "e2e_smoke" in defaults, "the README's test command lost its real-vLLM-on-CPU run"
    assert not set(defaults) & set(tagged), "a session would run twice in .ci/run"


def test_prefetch_runs_first_so_the_install_overlaps_the_tests() -> None:
    pytest.importorskip("nox")
    text = (ROOT / "noxfile.py").read_text()
    sessions = re.search(r"^nox\.options\.sessions = \[(.*)\]", text, flags=re.M)
    assert sessions is not None
    assert re.findall(r'"(\w+)"', sessions.group(1))[0] == "prefetch"
