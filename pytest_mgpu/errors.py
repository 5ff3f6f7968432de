"""Every exception class of pytest-mgpu, in one place; each message names the problem and the fix."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

# --- declarations in test files (collection errors naming the test) ----------------------------


class MarkerError(ValueError):
    """A marker on a test is malformed; the message names the test."""


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


class EngineError(RuntimeError):
    """An engine failed to start, died, or could not be stopped cleanly.

    The message ends with the last lines of the engine's log.
    """

    def __init__(self, message: str, log_path: Path | None = None, tail_lines: int = 30) -> None:
        self.log_path = log_path
        self.tail = log_tail(log_path, tail_lines) if log_path else ""
        text = message
        if log_path is not None:
            text += f"\n--- last {tail_lines} lines of {log_path} ---\n{self.tail}"
        super().__init__(text)


class EngineUnavailable(RuntimeError):
    """The engine is not installed for the chosen interpreter (tests are skipped, not failed)."""


class GpuMemoryError(RuntimeError):
    """GPU memory did not return to its level from before an engine started."""


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
