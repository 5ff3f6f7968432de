"""pytest hooks of pytest-mgpu: hooks only, each a call into the session (:mod:`.run.session`) or a module function.

Loading the plugin costs a project without mgpu tests next to nothing: this module imports only
the option registry, the marker texts and the stash keys (:mod:`.run.keys`). The session (and with it
the settings, the gate and the engines' registry) is built at configure only when an mgpu option
is given, else when collection meets the first mgpu test; NVML, ``git``, the signal handler, the
engines and numpy wait until collection ends with mgpu items (see :mod:`.run.session`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from .run import options
from .run.keys import ITEM_RESULTS_KEY, is_mgpu_function, is_mgpu_item, session_if_any
from .run.markers import register_markers

#: The fixtures (mgpu_layout, mgpu_engine, mgpu_bench) load with the plugin.
pytest_plugins = ["pytest_mgpu.run.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--mgpu-*`` options and ``mgpu_*`` ini keys."""
    options.register(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers; with an mgpu option given, check the options now (else at the first mgpu test)."""
    register_markers(config)
    if options.given(config):
        from .run.session import session_of

        sess = session_of(config)
        if sess.ab is not None:
            from .run.ab_report import register  # only with --mgpu-ab

            register(sess)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Make one item per ``layout`` mark; reject bad markers and layouts the model cannot run."""
    if not is_mgpu_function(metafunc):
        return  # other projects' tests: the collection module (and the engine code it uses) stays unimported
    from .run import collection
    from .run.session import session_of

    collection.parametrize_layouts(session_of(metafunc.config), metafunc)


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, Any, Any]:
    """A test whose mgpu marks are bad becomes one item that errors naming it; its module's other tests run."""
    try:
        return (yield)
    except Exception as exc:  # a MarkerError from pytest_generate_tests: pytest would drop the whole module
        from .errors import MarkerError

        if not isinstance(exc, MarkerError):
            raise
        from .run import collection

        return collection.invalid_declaration(collector, name, obj, str(exc))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach engine specs, skip layouts that need more devices than visible, group by engine key.

    Runs last, after deselection (``-k``, ``-m``), so that a session whose mgpu tests were all
    deselected does not start the plugin's machinery.
    """
    if not any(is_mgpu_item(item) for item in items):
        return  # nothing of ours: no NVML, no subprocess, no signal handler, no import of engine code
    from .run import collection
    from .run.session import session_of

    collection.prepare_items(session_of(config), items)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """The ``mgpu:`` line (engine and why, devices, model, baselines), only in a session with mgpu items."""
    sess = session_if_any(config)
    return sess.header_lines() if sess is not None else []


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """In A/B mode, before the test loop: learn the workloads of items that share an engine (they share its starts).

    Not in an xdist worker (it runs the items it is sent, one at a time) nor with ``--collect-only``.
    """
    sess = session_if_any(session.config)
    if sess is None or sess.ab is None or not sess.started or session.config.option.collectonly:
        return
    if hasattr(session.config, "workerinput"):
        return
    from .run.ab import probe_workloads

    probe_workloads(sess, session)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: gate its results against the baselines (re-measuring before a FAIL), or decide its A/B."""
    result = yield
    if item.stash.get(ITEM_RESULTS_KEY, None):
        from .run.session import session_of

        sess = session_of(item.config)
        if sess.ab is not None:
            from .run.ab import gate_item  # lazy: the runner and the gate import the results, and numpy

            gate_item(sess, item)
        else:
            from .run.gate import gate_item as gate_plain  # lazy: the gate imports the results, and numpy

            gate_plain(sess, item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Note how each test that uses ``mgpu_bench`` ended: a session that measured nothing fails."""
    report = yield
    sess = session_if_any(item.config)
    if sess is not None and item.nodeid in sess.measuring and not (sess.ab is not None and _probing(item.config)):
        sess.note_outcome(report)
    return report


def _probing(config: pytest.Config) -> bool:
    from .run.ab import is_probing

    return is_probing(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop engines; write baselines (on update), JSON, Markdown and pytest-benchmark exports."""
    sess = session_if_any(session.config)
    if sess is not None:
        sess.finish(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the per-item table, the per-layout table and the gate summary."""
    sess = session_if_any(config)
    if sess is not None:
        sess.write_summary(terminalreporter)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last resort: never leave an engine running."""
    sess = session_if_any(config)
    if sess is not None:
        sess.close()
