"""Files written at session end: ``--mgpu-json`` results and the other exports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .baseline import atomic_write_text
from .results import RESULTS_SCHEMA_VERSION
from .session import MgpuState


def results_document(state: MgpuState, with_records: bool) -> dict[str, Any]:
    """The ``--mgpu-json`` document."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "fingerprint": state.fingerprint,
        "env": state.env_info,
        "results": [r.to_dict(with_records) for r in state.results],
    }


def write_outputs(config: pytest.Config, state: MgpuState) -> None:
    """Write whichever output files were asked for."""
    s = state.settings
    if s.json_path is not None:
        atomic_write_text(s.json_path, json.dumps(results_document(state, s.json_records), indent=2, sort_keys=True) + "\n")
    if s.report_md is not None:
        from .compare import render_markdown

        title = f"pytest-mgpu: {state.settings.engine} on {state.fingerprint}"
        atomic_write_text(s.report_md, render_markdown(state.comparisons, title=title))
    if s.benchmark_json is not None:
        from .compare import to_benchmark_json

        doc = to_benchmark_json(state.results)
        atomic_write_text(s.benchmark_json, json.dumps(doc, indent=2, sort_keys=True) + "\n")
