"""What the hooks need before a session is known to have mgpu work: the stash keys and the cheap
tests of whether a test is an mgpu one.

Importing this module costs next to nothing: the plugin imports it at load, in every pytest run
of every project that has pytest-mgpu installed, mgpu tests or not. :mod:`.session` re-exports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pragma: no cover - only the types
    from ..engines import EngineSpec
    from ..judge.results import BenchResult
    from .session import MgpuSession

#: The session, in ``config.stash``.
SESSION_KEY: pytest.StashKey[MgpuSession] = pytest.StashKey()
#: An mgpu item's engine spec, set at collection.
SPEC_KEY: pytest.StashKey[EngineSpec] = pytest.StashKey()
#: The results an item's ``mgpu_bench`` measured, for its gate.
ITEM_RESULTS_KEY: pytest.StashKey[list[BenchResult]] = pytest.StashKey()

#: Fixtures that make a test an mgpu test.
MGPU_FIXTURES = ("mgpu_layout", "mgpu_engine", "mgpu_bench")


def is_mgpu_function(metafunc: pytest.Metafunc) -> bool:
    """Whether a test function uses the plugin's fixtures or ``layout`` marks (cheap: no import)."""
    return any(f in metafunc.fixturenames for f in MGPU_FIXTURES) or (
        metafunc.definition.get_closest_marker("layout") is not None
    )


def is_mgpu_item(item: pytest.Item) -> bool:
    """Whether ``item`` uses one of the plugin's fixtures (and so was parametrised with a layout)."""
    fixturenames = getattr(item, "fixturenames", ())
    return getattr(item, "callspec", None) is not None and any(f in fixturenames for f in MGPU_FIXTURES)


def session_if_any(config: pytest.Config) -> MgpuSession | None:
    """The session of ``config`` if it was built (options given, or mgpu tests collected), else None."""
    return config.stash.get(SESSION_KEY, None)
