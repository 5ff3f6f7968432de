"""Shared test setup: pytester for plugin tests, hypothesis profiles.

hypothesis comes with the ``test`` extra only. ``pytest --markers`` and ``pytest --help`` from
the repository root load this file too (``testpaths``), also after a plain ``pip install -e .``,
so it must not need hypothesis (``tests/test_repo_root.py`` checks that).
"""

from __future__ import annotations

import os

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
