"""pytest hooks of pytest-mgpu: hooks only, each a call into the session (:mod:`.session`) or a module function."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from . import collection, gate, options
from .session import configure, session_of, unconfigure

#: The fixtures (mgpu_layout, mgpu_engine, mgpu_bench) load with the plugin.
pytest_plugins = ["pytest_mgpu.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--mgpu-*`` options and ``mgpu_*`` ini keys."""
    options.register(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers, read the GPUs, choose the engine, start the session."""
    configure(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One header line: engine (and why, if it fell back), devices, model, baselines."""
    return session_of(config).header_lines()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Make one item per ``layout`` mark; reject bad markers and layouts the model cannot run."""
    collection.parametrize_layouts(session_of(metafunc.config), metafunc)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach engine specs, skip layouts that need more devices than visible, group by engine key."""
    collection.prepare_items(session_of(config), items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: gate its results against the baselines (re-measuring before a FAIL)."""
    result = yield
    gate.gate_item(session_of(item.config), item)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop engines; write baselines (on update), JSON, Markdown and pytest-benchmark exports."""
    session_of(session.config).finish(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the per-item table, the per-layout table and the gate summary."""
    session_of(config).write_summary(terminalreporter)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last resort: never leave an engine running."""
    unconfigure(config)
