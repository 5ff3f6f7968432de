"""Shared test setup: pytester for plugin tests, hypothesis profiles."""

from __future__ import annotations

import os

import numpy  # noqa: F401  # pytester's in-process runs restore sys.modules, and numpy cannot load twice
from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
