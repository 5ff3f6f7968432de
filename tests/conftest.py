"""Shared test setup: pytester for plugin tests, hypothesis profiles.

hypothesis comes with the ``test`` extra only. ``pytest --markers`` and ``pytest --help`` from
the repository root load this file too (``testpaths``), also after a plain ``pip install -e .``,
so it must not need hypothesis (``tests/test_repo_root.py`` checks that).
"""

from __future__ import annotations

import os

import numpy  # noqa: F401  # pytester's in-process runs restore sys.modules, and numpy cannot load twice

pytest_plugins = ["pytester"]

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the test extra is not installed: only the property tests need it
    pass
else:
    settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=50, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
