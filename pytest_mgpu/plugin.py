"""pytest hooks of pytest-mgpu (hooks only: the work lives in the other modules)."""

from __future__ import annotations

from typing import Generator

import pytest

from . import markers as _markers
from .settings import add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--mgpu-*`` options and ``mgpu_*`` ini keys."""
    from .options import add_gate_options

    group = add_options(parser)
    add_gate_options(group.addoption)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers and fixtures, read the GPUs, choose the engine, create the session state."""
    for line in _markers.MARKERS:
        config.addinivalue_line("markers", line)
    from . import fixtures
    from .collect import make_state

    if not config.pluginmanager.has_plugin("mgpu-fixtures"):
        config.pluginmanager.register(fixtures, "mgpu-fixtures")
    make_state(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One header line: engine (and why, if it fell back), devices, model, baselines."""
    from .collect import header_lines

    return header_lines(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Make one item per ``layout`` mark; reject bad markers and layouts the model cannot run."""
    from .collect import generate_layouts

    generate_layouts(metafunc)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach engine specs, skip layouts that need more devices than visible, group by engine key."""
    from .collect import prepare_items

    prepare_items(config, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: gate its results against the baselines (re-measuring before a FAIL)."""
    result = yield
    from .gate import gate_item

    gate_item(item)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop engines; write baselines (on update), JSON, Markdown and pytest-benchmark exports."""
    from .collect import finish_session

    finish_session(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the per-item table, the per-layout table and the gate summary."""
    from .report import terminal_summary

    terminal_summary(terminalreporter, config)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last resort: never leave an engine running."""
    from .session import STATE_KEY, restore_sigterm_handler

    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        state.manager.close()
        restore_sigterm_handler(state.prev_sigterm)

