"""The plugin's fixtures: ``mgpu_layout``, ``mgpu_engine``, ``mgpu_bench``.

Thin shells: each imports the runners it uses (the bench, the A/B, the gate) inside its body, so
that loading the plugin in a project without mgpu tests imports no engine code and no numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest

from .keys import ITEM_RESULTS_KEY, SPEC_KEY

if TYPE_CHECKING:  # pragma: no cover - imported inside the fixtures
    from ..engines import RunningEngine
    from ..judge.results import BenchResult
    from ..layout import Layout
    from .ab import AbBench, AbEngines
    from .bench import Bench
    from .session import MgpuSession


@pytest.fixture
def mgpu_layout(request: pytest.FixtureRequest) -> Layout:
    """This item's layout, from its ``layout`` mark (``tp1-pp1`` without one)."""
    from ..layout import Layout

    return getattr(request, "param", Layout())


@pytest.fixture
def mgpu_engine(request: pytest.FixtureRequest, mgpu_layout: Layout) -> Iterator[RunningEngine | AbEngines]:
    """The started engine for this item's layout, shared by every test with the same engine key.

    Exposes ``base_url``, ``layout``, ``num_gpus``, ``name``, ``version``, ``log_path``, ``model``.
    An engine that is not installed skips the test, with the install hint; one that fails to
    start errors the test with the last lines of its log. In A/B mode (``--mgpu-ab``) it is an
    :class:`~pytest_mgpu.run.ab.AbEngines`: both sides' versions, and an engine only inside ``mgpu_bench.run``.
    """
    from ..errors import EngineError, EngineUnavailable, restart_warning
    from .progress import progress_of
    from .session import session_of

    sess = session_of(request.config)
    spec = request.node.stash.get(SPEC_KEY, None)
    if spec is None:  # pragma: no cover - every fixture user gets a spec at collection
        pytest.fail(f"{request.node.nodeid}: no engine spec (was the plugin disabled?)", pytrace=False)
    # pytest.skip / pytest.fail outside the ``except`` blocks: raised inside them, pytest prints
    # the error twice ("During handling of the above exception, another exception occurred").
    skip = fail = None
    if sess.ab is not None:
        from .ab import engines_for  # lazy: the runners import numpy; see the module's docstring

        try:
            engines = engines_for(sess, spec)
        except EngineUnavailable as exc:
            skip = str(exc)
        if skip is not None:
            pytest.skip(skip)
        yield engines
        return
    try:
        with progress_of(request.config).engine_start(spec.engine, spec.layout.id, spec.model.name) as watch:
            engine = sess.manager.acquire(spec, watch)
    except EngineUnavailable as exc:
        skip = str(exc)
    except EngineError as exc:
        fail = str(exc)
    if skip is not None:
        pytest.skip(skip)
    if fail is not None:
        pytest.fail(fail, pytrace=False)
    yield engine
    if not engine.alive:
        # Died during the test: say so, and stop what is left now, so the next test starts clean.
        rc = engine.exit_code()
        warnings.warn(
            restart_warning(
                engine,
                f"it exited with code {rc} during {request.node.nodeid}; the next test that needs it starts a new one",
            ),
            stacklevel=1,
        )
        try:
            sess.manager.stop_current()
        except EngineError as exc:
            fail = str(exc)
        if fail is not None:
            pytest.fail(fail, pytrace=False)


@pytest.fixture
def mgpu_bench(request: pytest.FixtureRequest, mgpu_engine: RunningEngine | AbEngines) -> Bench | AbBench:
    """Runs workloads against ``mgpu_engine``: ``mgpu_bench.run(input_len=128, output_len=128,
    num_requests=256, request_rate=32.0)`` returns a :class:`~pytest_mgpu.judge.results.BenchResult`
    and records it for the gate, the reports and ``--mgpu-update-baselines``. In A/B mode it is an
    :class:`~pytest_mgpu.run.ab.AbBench`: ``run()`` measures the old and the new engine in rounds."""
    from .bench import Bench  # lazy: numpy
    from .progress import progress_of
    from .session import session_of

    sess = session_of(request.config)
    item = request.node
    item.stash[ITEM_RESULTS_KEY] = []

    def record(result: BenchResult) -> None:
        sess.record(item, result)

    if sess.ab is not None:
        from .ab import AbBench, AbEngines, progress_writer  # lazy: numpy
        from .gate import item_gate_config

        assert isinstance(mgpu_engine, AbEngines)
        return AbBench(
            sess, mgpu_engine, nodeid=item.nodeid, test_name=item.name, module=item.nodeid.split("::", 1)[0],
            gate=item_gate_config(sess, item), record=record, progress=progress_writer(request.config),
        )
    engine = cast("RunningEngine", mgpu_engine)
    return Bench(
        engine,
        nodeid=item.nodeid,
        test_name=item.name,
        module=item.nodeid.split("::", 1)[0],
        repeats=sess.settings.repeats,
        request_timeout_s=sess.settings.request_timeout_s,
        env={**sess.env_info, "fingerprint": sess.fingerprint_for(engine.name)},
        record=record,
        prompt=sess.settings.prompt,
        roofline=roofline_of(sess, engine),
        progress=progress_of(request.config),
    )


def roofline_of(sess: MgpuSession, engine: RunningEngine) -> dict[str, Any] | None:
    """The engine layout's decode floor (computed once per engine), as a dict; None where unknown."""
    from ..report.regime import roofline_for_engine  # lazy: numpy

    key = (engine.pid, engine.base_url)
    if key not in sess.rooflines:
        rl = roofline_for_engine(engine, sess.inventory)
        sess.rooflines[key] = rl.to_dict() if rl is not None else None
    return sess.rooflines[key]
