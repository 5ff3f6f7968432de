"""Files written at session end: ``--mgpu-json`` results and the other exports."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .results import RESULTS_SCHEMA_VERSION
from .session import MgpuState


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
