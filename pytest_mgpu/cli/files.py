"""What several commands read and write: JSON files, the results of a ``--mgpu-json`` document."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CliError
from ..judge.baseline import atomic_write_text
from ..judge.results import BenchResult


def write_output(path: str | Path, text: str) -> None:
    """Write an output file the user named, creating its folder; CliError (exit 2) when that fails."""
    p = Path(path)
    try:
        atomic_write_text(p, text)
    except OSError as exc:
        raise CliError(f"cannot write {p}: {exc.strerror or exc}") from None


def load_json(path: Path) -> Any:
    """The JSON document at ``path``; CliError (exit 2) names a missing, unreadable or invalid file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON ({exc}); pass a baseline file or a --mgpu-json results file") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc})") from None


def read_results(data: Mapping[str, Any], p: Path) -> list[tuple[BenchResult, Mapping[str, Any]]]:
    """The results of a ``--mgpu-json`` document, each with its raw dict; CliError names a malformed one."""
    out = []
    for i, raw in enumerate(data["results"]):
        try:
            out.append((BenchResult.from_dict(raw), raw))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CliError(
                f"{p}: result #{i + 1} is malformed ({exc!r}); regenerate the file with --mgpu-json"
            ) from None
    return out
