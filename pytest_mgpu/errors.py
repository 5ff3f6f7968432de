"""Every exception class of pytest-mgpu, in one place; each message names the problem and the fix."""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - only the type
    from .engines import RunningEngine

# --- declarations in test files (collection errors naming the test) ----------------------------


class MarkerError(ValueError):
    """A marker on a test is malformed; the message names the test.

    The test is then collected as one item that errors with this message; the module's other
    tests still run.
    """


class LayoutError(ValueError):
    """A layout declaration is malformed."""


class ModelError(ValueError):
    """A model name or directory cannot be used."""


class WorkloadError(ValueError):
    """A workload parameter is out of range."""


class PromptError(ValueError):
    """Text prompts cannot be built for this engine (no tokenizer, no ``/tokenize``); names the fix."""


# --- engines ------------------------------------------------------------------------------------


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        try:
            fh.seek(-256 * 1024, os.SEEK_END)
        except OSError:
            fh.seek(0)
        tail = deque(fh.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
    return "\n".join(tail)


#: The start of an error block in an engine log: a Python traceback, a log record at level ERROR
#: (vLLM: ``ERROR 05-02 10:00:00 [core.py:700] ...``, also behind a ``(EngineCore_DP0 pid=1)``
#: prefix), or an argparse / sim style ``prog: error: ...`` line.
ERROR_START = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b|^\S+: error: ")
#: A log record of a lower level, which ends an error block.
OTHER_RECORD = re.compile(r"\b(INFO|WARNING|DEBUG)\b")
#: At most this many lines of the first error block are shown.
ROOT_CAUSE_LINES = 40
#: At most this much of the log is searched for the first error block.
ROOT_CAUSE_SCAN_BYTES = 32 * 1024 * 1024


def first_error_block(lines: list[str], max_lines: int = ROOT_CAUSE_LINES) -> tuple[int, list[str]] | None:
    """(index, lines) of the first error block in ``lines``: a traceback or ERROR record and what follows it.

    The block runs to the first record of a lower level (INFO, WARNING, DEBUG) after it, or
    ``max_lines`` lines, whichever comes first.
    """
    for i, line in enumerate(lines):
        if line.startswith("$ "):  # the command line the plugin wrote first
            continue
        if ERROR_START.search(line):
            block = [line]
            for nxt in lines[i + 1 : i + max_lines]:
                if OTHER_RECORD.search(nxt) and not ERROR_START.search(nxt):
                    break
                block.append(nxt)
            return i, block
    return None


def root_cause(path: Path | None, tail_lines: int = 30) -> str:
    """The first error block of an engine log when it lies above the last ``tail_lines`` lines, else ''.

    vLLM ends a failed start with "Engine core initialization failed. See root cause above"; the
    cause (often from ``EngineCore``) is the first ERROR / Traceback block, far above the tail.
    """
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        lines = fh.read(ROOT_CAUSE_SCAN_BYTES).decode("utf-8", "replace").splitlines()
    found = first_error_block(lines)
    if found is None:
        return ""
    start, block = found
    if start >= len(lines) - tail_lines:  # already in the tail, shown there
        return ""
    return "\n".join(block)


class EngineError(RuntimeError):
    """An engine failed to start, died, or could not be stopped cleanly.

    The message ends with the root cause found in the engine's log (its first error block, when
    that lies above the tail) and the last lines of the log.
    """

    def __init__(self, message: str, log_path: Path | None = None, tail_lines: int = 30) -> None:
        self.log_path = log_path
        self.summary = message
        self.tail = log_tail(log_path, tail_lines) if log_path else ""
        self.root_cause = root_cause(log_path, tail_lines) if log_path else ""
        text = message
        if self.root_cause:
            text += f"\n--- root cause: the first error in {log_path} ---\n{self.root_cause}"
        if log_path is not None:
            text += f"\n--- last {tail_lines} lines of {log_path} ---\n{self.tail}"
        super().__init__(text)


class EngineRestartWarning(UserWarning):
    """An engine stopped answering between tests and was restarted; the message carries its log tail."""


def restart_warning(engine: RunningEngine, detail: str, lines: int = 30) -> EngineRestartWarning:
    """``engine stopped answering: <engine>: <detail>`` with the last ``lines`` of its log (read now)."""
    return EngineRestartWarning(
        f"engine stopped answering: {engine.describe()}: {detail}\n"
        f"--- last {lines} lines of {engine.log_path} ---\n{log_tail(engine.log_path, lines)}"
    )


class EngineUnavailable(RuntimeError):
    """The engine is not installed for the chosen interpreter (tests are skipped, not failed)."""


class GpuMemoryError(RuntimeError):
    """GPU memory did not return to its level from before an engine started."""


class ClusterError(EngineError):
    """The Ray cluster cannot take an engine as asked: too few free GPUs, or workers placed on other nodes."""


class ClusterTeardownError(GpuMemoryError):
    """A stopped engine left something in the Ray cluster: actors, held GPUs, or GPU memory on a node.

    A :class:`GpuMemoryError`, so it fails the session as GPU memory that does not come back does locally.
    """


class SSEParseError(ValueError):
    """A server-sent event's ``data`` is not valid JSON (or ``[DONE]``)."""


# --- the simulated engine -----------------------------------------------------------------------


class SimError(ValueError):
    """The simulated engine cannot start with this model, layout or options."""


class SimOptionError(SimError):
    """An unknown or malformed ``--opt KEY=VALUE`` (the server exits with code 2)."""


class BadRequest(ValueError):
    """The sim server's client sent something the OpenAI API would reject (an HTTP 4xx answer)."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


# --- baselines and the command line -------------------------------------------------------------


class BaselineError(RuntimeError):
    """A baseline file is missing keys, truncated or of another schema; the message names the fix."""


class CliError(Exception):
    """A user-facing error of the ``pytest-mgpu`` command: printed without a traceback, exit code 2."""
