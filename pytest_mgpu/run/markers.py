"""Marker registration and parsing: ``gpu``, ``layout``, ``model``, ``perf_tolerance``, ``engine_opts``.

A test's marks are parsed once, at collection, into one frozen :class:`TestMarks`, which the item
carries in its stash (:data:`MARKS_KEY`) for the engine spec and the gate.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import LayoutError, MarkerError
from ..layout import Layout, parse_layout

if TYPE_CHECKING:  # pragma: no cover - the gate's module is imported when a perf_tolerance mark is parsed
    from ..judge.verdicts import Tolerance

#: Signature-first marker docs, so that ``pytest --markers`` is the documentation.
MARKERS = (
    "gpu: performance test that drives an inference engine (select with -m gpu)",
    "layout(tp=1, pp=1, gpu_mem_gb=None, nodes=1): run the test on an engine with tensor parallelism tp "
    "and pipeline parallelism pp (tp*pp GPUs), optionally capped at gpu_mem_gb GB per GPU, spread over "
    "nodes nodes of a Ray cluster (--mgpu-ray-address; tp*pp/nodes GPUs each); several layout marks make "
    "one test item per layout, with ids like tp2-pp1 or tp8-pp2-n2",
    "model(name): config-only model to serve: a built-in name (llama-2-7b, tiny-llama) or a "
    "directory holding config.json; overrides --mgpu-model",
    "perf_tolerance(**metric_tolerance): per-test gate tolerances, e.g. "
    "perf_tolerance(output_throughput_per_gpu='3%', tpot_p50='8%'); naming a p99 metric gates it",
    "engine_opts(**options): extra engine options for this test (merged over --mgpu-engine-opt); "
    "tests with different options get different engines",
)


#: Names of the marks that :class:`TestMarks` reads.
MARK_NAMES = frozenset({"layout", "model", "perf_tolerance", "engine_opts"})


def register_markers(config: pytest.Config) -> None:
    """Add the plugin's markers to ``pytest --markers``."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


@dataclass(frozen=True)
class TestMarks:
    """Everything a test's marks declare, parsed and validated once."""

    __test__ = False  # not a test class, despite the name

    layouts: tuple[Layout, ...] = (Layout(),)
    model: str | None = None  # the closest ``model`` mark; None: --mgpu-model
    engine_opts: tuple[tuple[str, str], ...] = ()
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)

    @classmethod
    def from_node(cls, node: pytest.Item, nodeid: str | None = None) -> TestMarks:
        """Parse the marks of ``node`` (a test function's definition or item).

        Every bad mark is reported: MarkerError names the test, one line per problem.
        """
        nid = nodeid or node.nodeid
        problems: list[str] = mark_typos(node, nid)

        def parse(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args, nid)
            except MarkerError as exc:
                problems.append(str(exc))
                return None

        layouts = parse(layouts_from_marks, reversed(list(node.iter_markers("layout"))))
        model = parse(model_from_marks, node.iter_markers("model"))
        opts = parse(engine_opts_from_marks, node.iter_markers("engine_opts"))
        tolerances = parse(tolerances_from_marks, node.iter_markers("perf_tolerance"))
        if problems:
            raise MarkerError("\n".join(problems))
        return cls(
            layouts=tuple(layouts), model=model, engine_opts=tuple(sorted(opts.items())), tolerances=tolerances
        )


#: The plugin's own marks, which :func:`mark_typos` matches unknown marks against.
PLUGIN_MARKS = tuple(line.split(":", 1)[0].split("(", 1)[0] for line in MARKERS)
#: How close (difflib's ratio) an unknown mark must be to one of :data:`PLUGIN_MARKS` to be a typo of it.
TYPO_CUTOFF = 0.75


def registered_marks(config: pytest.Config) -> set[str]:
    """Names of every mark registered (pytest's, the plugins', the project's ``markers`` ini lines)."""
    return {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}


def mark_typos(node: pytest.Item, nodeid: str) -> list[str]:
    """One problem per unregistered mark on ``node`` that is close to one of the plugin's marks.

    pytest only warns about an unknown mark, and the test would run without the mark it meant:
    ``@pytest.mark.layuot(tp=2)`` measures TP=1 and records it as NEW.
    """
    import difflib  # lazy: only for a test that is an mgpu test

    known = registered_marks(node.config)
    problems = []
    for name in dict.fromkeys(m.name for m in node.iter_markers()):
        if name in known:
            continue
        close = difflib.get_close_matches(name, PLUGIN_MARKS, n=1, cutoff=TYPO_CUTOFF)
        if close:
            problems.append(
                f"{nodeid}: unknown mark @pytest.mark.{name}: did you mean @pytest.mark.{close[0]}? "
                f"(an unknown mark is ignored: the test would run without it)"
            )
    return problems


#: The parsed marks of an mgpu item, set at collection.
MARKS_KEY = pytest.StashKey[TestMarks]()


def layouts_from_marks(marks: Iterable[pytest.Mark], nodeid: str) -> list[Layout]:
    """One :class:`Layout` per ``layout`` mark (default: ``tp1-pp1``), validated."""
    layouts: list[Layout] = []
    for mark in marks:
        if mark.args:
            raise MarkerError(
                f"{nodeid}: layout() takes keywords only, got positional {mark.args!r}; "
                f"write @pytest.mark.layout(tp=2, pp=1)"
            )
        try:
            layouts.append(parse_layout(mark.kwargs, where=nodeid))
        except LayoutError as exc:
            raise MarkerError(str(exc)) from None
    if not layouts:
        layouts.append(Layout())
    ids = [lay.id for lay in layouts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise MarkerError(f"{nodeid}: layout {', '.join(dup)} is declared more than once")
    return layouts


def model_from_marks(marks: Iterable[pytest.Mark], nodeid: str) -> str | None:
    """The model named by the closest ``model`` mark, or None."""
    for mark in marks:
        if len(mark.args) != 1 or mark.kwargs or not isinstance(mark.args[0], str):
            raise MarkerError(f"{nodeid}: model() takes one model name or path, e.g. @pytest.mark.model('llama-2-7b')")
        return mark.args[0]
    return None


def engine_opts_from_marks(marks: Iterable[pytest.Mark], nodeid: str) -> dict[str, str]:
    """Engine options from ``engine_opts`` marks (closest mark wins per key)."""
    opts: dict[str, str] = {}
    for mark in reversed(list(marks)):
        if mark.args:
            raise MarkerError(f"{nodeid}: engine_opts() takes keywords only, e.g. engine_opts(speed=0.8)")
        bad = [f"{k}={v!r}" for k, v in mark.kwargs.items() if not _is_scalar(v)]
        if bad:
            raise MarkerError(
                f"{nodeid}: engine_opts() values must be scalars (str, int, float or bool), got {', '.join(bad)}; "
                f"an engine option is one KEY=VALUE, e.g. engine_opts(max_num_seqs=128)"
            )
        opts.update({k: _opt_str(v) for k, v in mark.kwargs.items()})
    return opts


def _is_scalar(v: Any) -> bool:
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))  # NaN and inf are no option values
    return isinstance(v, (str, int, bool))


def tolerances_from_marks(marks: Iterable[pytest.Mark], nodeid: str) -> dict[str, Tolerance]:
    """Parsed ``perf_tolerance`` keywords (closest mark wins per metric); bad ones name the test."""
    from ..judge.verdicts import Tolerance, check_metric  # lazy: markers are registered in every pytest run

    raw: dict[str, Any] = {}
    for mark in reversed(list(marks)):
        if mark.args:
            raise MarkerError(
                f"{nodeid}: perf_tolerance() takes metric=tolerance keywords, e.g. perf_tolerance(tpot_p50='8%')"
            )
        raw.update(mark.kwargs)
    try:
        return {check_metric(name): Tolerance.parse(value) for name, value in raw.items()}
    except (argparse.ArgumentTypeError, ValueError) as exc:  # the bad value is in the text
        raise MarkerError(f"{nodeid}: perf_tolerance: {exc}") from None


def _opt_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
