"""What a mode of the plugin adds to a session's report, behind one small interface.

The same-job A/B (:mod:`pytest_mgpu.run.ab`) registers a :class:`ReportExtension` on the session
at configure (``sess.extensions``); the session's header, the terminal summary and the output files
call every registered extension, so none of them imports the mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class ReportExtension(Protocol):
    """A mode's own part of the header, the terminal summary and the output files."""

    def header_lines(self) -> list[str]:
        """Lines under the ``mgpu:`` line of the header."""
        ...

    def summary_lines(self) -> Iterator[tuple[str | None, str]]:
        """The mode's section of the terminal summary: ``(sep, text)`` as :mod:`.summary` yields them."""
        ...

    def json_sections(self) -> dict[str, Any]:
        """Top-level keys added to the results document (``--mgpu-json``, the last results)."""
        ...

    def markdown(self) -> str | None:
        """The ``--mgpu-report-md`` text, in place of the gate's; None keeps the gate's."""
        ...
