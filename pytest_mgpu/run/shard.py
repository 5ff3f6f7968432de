"""``--mgpu-shard I/N``: a stable slice of the suite, engines kept whole, balanced by estimated cost.

Every runner of a job matrix collects the same suite and computes the same assignment, so the
shards are disjoint and together cover every item. The unit of assignment is an *engine group*:
all items that share an engine key (engine, model, layout, options), so no engine starts in two
shards; every other item is a unit of its own. Units are placed longest first on the least
loaded shard (LPT), ties broken by name, so the result depends only on the collected items,
never on the runner and never on the baselines: shards run one after the other in one checkout
with ``--mgpu-update-baselines``, or on runners whose baselines differ, must still split alike.

A unit's cost is an estimate in seconds from what collection knows: the engine's start
(:data:`START_COST_S`) plus :data:`DEFAULT_ITEM_COST_S` per item. Each shard's ``--mgpu-json``
carries the collected items and its share (``shard``), so that ``pytest-mgpu merge`` checks that
the shards cover every item exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from .session import SPEC_KEY, MgpuSession

#: Seconds an engine takes to start, by engine (vLLM compiles per layout: 2-3 min on an H100 the
#: first time, see shared notes; TensorRT-LLM builds its engine; the sim starts in about a second).
START_COST_S = {"sim": 2.0, "vllm": 120.0, "trtllm": 180.0}
#: Seconds per item that uses an engine (collection does not know its workload).
DEFAULT_ITEM_COST_S = 60.0
#: Seconds for an item that uses no engine.
PLAIN_ITEM_COST_S = 0.1


@dataclass
class Unit:
    """Items that must run in the same shard, and their estimated cost in seconds."""

    name: str  # stable across runners: the first item's node id
    items: list[pytest.Item] = field(default_factory=list)
    cost: float = 0.0


def assign(units: Sequence[tuple[str, float]], n: int) -> dict[str, int]:
    """Place ``(name, cost)`` units on ``n`` shards (1..n): longest first onto the least loaded.

    Deterministic: it depends on the names and costs only, not on their order. The largest load
    is at most the mean load plus the largest unit (and within 4/3 of the best possible).
    """
    loads = [0.0] * n
    out: dict[str, int] = {}
    for name, cost in sorted(units, key=lambda u: (-u[1], u[0])):
        k = min(range(n), key=lambda j: (loads[j], j))
        loads[k] += cost
        out[name] = k + 1
    return out


def units_of(items: Iterable[pytest.Item], key_of: Any, engine_of: Any) -> list[Unit]:
    """Group items into units: by engine key (``key_of(item)``, None for a plain item), costed."""
    groups: dict[Any, Unit] = {}
    plain: list[Unit] = []
    for item in items:
        key = key_of(item)
        if key is None:
            plain.append(Unit(item.nodeid, [item], PLAIN_ITEM_COST_S))
            continue
        unit = groups.get(key)
        if unit is None:
            unit = groups[key] = Unit(item.nodeid, [], START_COST_S.get(engine_of(item), DEFAULT_ITEM_COST_S))
        unit.items.append(item)
        unit.cost += DEFAULT_ITEM_COST_S
    return [*groups.values(), *plain]


def select(sess: MgpuSession, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this shard's items (``--mgpu-shard I/N``), deselect the rest, say what was kept."""
    shard = config.getoption("mgpu_shard", None)
    if not shard:
        return
    i, n = shard

    def key_of(item: pytest.Item) -> Any:
        spec = item.stash.get(SPEC_KEY, None)
        return None if spec is None else spec.key

    def engine_of(item: pytest.Item) -> str:
        spec = item.stash.get(SPEC_KEY, None)
        return spec.engine if spec is not None else ""

    units = units_of(items, key_of, engine_of)
    collected = [it.nodeid for it in items]
    where = assign([(u.name, u.cost) for u in units], n)
    keep = {id(it) for u in units if where[u.name] == i for it in u.items}
    selected = [it for it in items if id(it) in keep]
    deselected = [it for it in items if id(it) not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected
    mine = [u for u in units if where[u.name] == i]
    load = sum(u.cost for u in mine)
    total = sum(u.cost for u in units)
    engines = sum(1 for u in mine if key_of(u.items[0]) is not None)
    sess.env_info["shard"] = f"{i}/{n}"
    sess.shard = {"index": i, "count": n, "collected": collected, "items": [it.nodeid for it in selected]}
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"mgpu shard {i}/{n}: {len(selected)} of {len(selected) + len(deselected)} items, {engines} engine "
            f"group(s), estimated {load:.0f}s of {total:.0f}s"
            + ("; this shard has no items (it passes; the other shards run them)" if not selected else "")
        )
