"""The plugin's fixtures: ``mgpu_layout``, ``mgpu_engine``, ``mgpu_bench``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .bench import Bench
from .engines import RunningEngine
from .errors import EngineError, EngineUnavailable
from .layout import Layout
from .regime import roofline_for_engine
from .results import BenchResult
from .session import ITEM_RESULTS_KEY, SPEC_KEY, MgpuSession, session_of


@pytest.fixture
def mgpu_layout(request: pytest.FixtureRequest) -> Layout:
    """This item's layout, from its ``layout`` mark (``tp1-pp1`` without one)."""
    return getattr(request, "param", Layout())


@pytest.fixture
def mgpu_engine(request: pytest.FixtureRequest, mgpu_layout: Layout) -> Iterator[RunningEngine]:
    """The started engine for this item's layout, shared by every test with the same engine key.

    Exposes ``base_url``, ``layout``, ``num_gpus``, ``name``, ``version``, ``log_path``, ``model``.
    An engine that is not installed skips the test, with the install hint; one that fails to
    start errors the test with the last lines of its log.
    """
    sess = session_of(request.config)
    spec = request.node.stash.get(SPEC_KEY, None)
    if spec is None:  # pragma: no cover - every fixture user gets a spec at collection
        pytest.fail(f"{request.node.nodeid}: no engine spec (was the plugin disabled?)", pytrace=False)
    try:
        engine = sess.manager.acquire(spec)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    except EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield engine
    if not engine.alive:
        # Died during the test: stop what is left now, so the next test starts clean.
        try:
            sess.manager.stop_current()
        except EngineError as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def mgpu_bench(request: pytest.FixtureRequest, mgpu_engine: RunningEngine) -> Bench:
    """Runs workloads against ``mgpu_engine``: ``mgpu_bench.run(input_len=128, output_len=128,
    num_requests=256, request_rate=32.0)`` returns a :class:`~pytest_mgpu.results.BenchResult`
    and records it for the gate, the reports and ``--mgpu-update-baselines``."""
    sess = session_of(request.config)
    item = request.node
    item.stash[ITEM_RESULTS_KEY] = []

    def record(result: BenchResult) -> None:
        sess.record(item, result)

    return Bench(
        mgpu_engine,
        nodeid=item.nodeid,
        test_name=item.name,
        module=item.nodeid.split("::", 1)[0],
        repeats=sess.settings.repeats,
        request_timeout_s=sess.settings.request_timeout_s,
        env=sess.env_info,
        record=record,
        prompt=sess.settings.prompt,
        roofline=roofline_of(sess, mgpu_engine),
    )


def roofline_of(sess: MgpuSession, engine: RunningEngine) -> dict[str, Any] | None:
    """The engine layout's decode floor (computed once per engine), as a dict; None where unknown."""
    key = (engine.pid, engine.base_url)
    if key not in sess.rooflines:
        rl = roofline_for_engine(engine, sess.inventory)
        sess.rooflines[key] = rl.to_dict() if rl is not None else None
    return sess.rooflines[key]
