"""Shared test setup: pytester for plugin tests, hypothesis profiles.

hypothesis comes with the ``test`` extra only. ``pytest --markers`` and ``pytest --help`` from
the repository root load this file too (``testpaths``), also after a plain ``pip install -e .``,
so it must not need hypothesis (``tests/test_repo_root.py`` checks that).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy  # noqa: F401  # pytester's in-process runs restore sys.modules, and numpy cannot load twice
import pytest

# The plugin imports these only once a session has mgpu work. pytester's in-process runs drop the
# modules a run imported, but the package keeps them as attributes, so a later run would mix two
# copies (two Verdict enums); imported here, every run shares one copy, as in a real session.
import pytest_mgpu.report.summary
import pytest_mgpu.run.ab
import pytest_mgpu.run.collection
import pytest_mgpu.run.gate
import pytest_mgpu.run.session  # noqa: F401

pytest_plugins = ["pytester"]

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the test extra is not installed: said once, at collection (see below)
    HYPOTHESIS = False
else:
    HYPOTHESIS = True
    settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=50, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection(session: pytest.Session) -> None:
    """Without the ``test`` extra, one clear usage error instead of an import error per test module."""
    if not HYPOTHESIS:
        raise pytest.UsageError(
            "the tests need the test extra (hypothesis is not installed): pip install -e '.[test]'"
        )


@pytest.fixture(autouse=True)
def _not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytester sessions run as on a developer's machine, also when this suite runs in CI.

    Under ``CI=true`` a session whose results are all NEW fails (the gate checked nothing); the
    plugin tests record first runs all the time. A test about CI sets ``CI`` itself.
    """
    monkeypatch.delenv("CI", raising=False)
# --- CI: no silent skips -----------------------------------------------------------------------
#: With ``MGPU_REQUIRE_NO_SKIP=1`` (nox's ``tests``, ``e2e_cpu``, ``ab_cpu`` and ``ray`` sessions, so
#: ``.ci/run``) a skipped test or module fails, unless a line of this file allows its skip.
ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")


def allowed_skips(path: Path = ALLOWED_SKIPS) -> list[tuple[str, str]]:
    """``(node id pattern, reason pattern)`` per line ``PATTERN | REASON`` of ``path`` (fnmatch; ``#`` comments)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            node, sep, reason = line.partition(" | ")
            if not sep:
                raise ValueError(f"{path}: {line!r} is not 'NODE-ID PATTERN | REASON PATTERN'")
            rows.append((node.strip(), reason.strip()))
    return rows


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _forbid_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn ``report``'s skip into a failure unless :data:`ALLOWED_SKIPS` allows it."""
    if not (os.environ.get("MGPU_REQUIRE_NO_SKIP") and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    if any(fnmatch(report.nodeid, node) and fnmatch(reason, why) for node, why in allowed_skips()):
        return
    report.outcome = "failed"
    report.longrepr = (f"{report.nodeid} skipped in a run with MGPU_REQUIRE_NO_SKIP=1 (CI), where every test "
                       f"must run: {reason}\nInstall what it needs in its nox session, or allow the skip in "
                       f"{ALLOWED_SKIPS} with the reason why.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A test's skip fails under ``MGPU_REQUIRE_NO_SKIP`` (see :func:`_forbid_skip`)."""
    outcome = yield
    _forbid_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module's skip (``pytest.importorskip`` at import) fails under ``MGPU_REQUIRE_NO_SKIP`` too."""
    outcome = yield
    _forbid_skip(outcome.get_result())
