"""Live progress while an engine starts and a workload runs, outside the tests' captured output.

On a terminal one status line is updated in place after the current test's name and erased when
the phase ends (``live``); elsewhere, and under ``-q``, one line is printed per phase (``lines``):
when an engine starts and when it is ready, and when each repeat of a workload ends. ``auto``
off a terminal (a CI log) and without ``-v`` prints a repeat's line only when the repeat took
:data:`SLOW_REPEAT_S` or more, so that a quick, all-pass run stays short.
``--mgpu-progress`` picks (``auto``, ``live``, ``lines``, ``off``).

Progress is written to the terminal with pytest's capture suspended, as live logging does, and
never through ``print``: it is not part of any test's captured output or of the JUnit XML.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

MODES = ("auto", "live", "lines", "off")
#: ``auto`` off a terminal (a CI log) prints a line per repeat only for a repeat this slow (seconds), or with -v.
SLOW_REPEAT_S = 10.0
#: Live updates are redrawn at most this often (seconds).
MIN_REDRAW_S = 0.2
#: The engine log's last line is read from at most this many bytes at its end.
LOG_TAIL_BYTES = 4096

#: ``watch(log_path)``: an engine is starting; its log is at ``log_path`` (None before launch).
EngineWatch = Callable[[Path | None], None]
#: ``report(done, total, tokens, seconds)``: requests done of total, tokens streamed, in seconds.
WorkloadReport = Callable[[int, int, int, float], None]


def last_log_line(path: Path | None, limit: int = 160) -> str:
    """The last non-empty line of an engine log (its end only is read), shortened to ``limit``."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    if not lines:
        return ""
    line = "".join(ch if ch.isprintable() else " " for ch in lines[-1])
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _isatty(tr: Any) -> bool:
    """Whether the terminal reporter writes to a terminal: a bool attribute up to pytest 8.x, a
    method from pytest 9 (calling the bool failed every engine start on the pytest 8.0 floor)."""
    value = tr.isatty
    return bool(value() if callable(value) else value)


def _write_raw(tw: Any, text: str) -> None:
    """Write to the terminal without pytest counting it into the current line's width.

    ``TerminalWriter.write_raw`` is missing on the pytest 8.0 floor: there, write to its file directly.
    """
    if hasattr(tw, "write_raw"):
        tw.write_raw(text, flush=True)
    else:
        tw._file.write(text)
        tw._file.flush()


#: Separates what a live line may drop (names the terminal already shows) from what it must keep.
KEEP = "\x00"


def fit(text: str, room: int) -> str:
    """``text`` in ``room`` columns. Where it holds :data:`KEEP`, the part before it (names) goes
    first, word by word from its end, so that a narrow terminal still shows the counts after it."""
    names, sep, keep = text.partition(KEEP)
    if not sep:
        return text if len(text) <= room else text[: room - 1] + "…"
    words = names.split()
    while words and len(" ".join(words)) + 1 + len(keep) > room:
        words.pop()
    line = " ".join([*words, keep])
    return line if len(line) <= room else line[: room - 1] + "…"


class Progress:
    """Writes progress to pytest's terminal: live (in place) or one line per phase, never captured."""

    def __init__(self, config: pytest.Config, mode: str = "auto") -> None:
        self.config = config
        tr = config.pluginmanager.get_plugin("terminalreporter")
        self.tr = tr
        #: ``auto`` chose ``lines`` without -v: engine starts always, a repeat only when it was slow.
        self.brief = False
        if mode == "auto":
            quiet = config.get_verbosity() < 0
            mode = "live" if tr is not None and _isatty(tr) and not quiet else "lines"
            self.brief = mode == "lines" and config.get_verbosity() < 1
        self.mode = mode if tr is not None else "off"
        self._col: int | None = None  # where the live text starts on the current line
        self._last_draw = 0.0

    # --- writing, with capture suspended ------------------------------------------------------
    @contextmanager
    def _uncaptured(self) -> Iterator[None]:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if capman is None:
            yield
            return
        with capman.global_and_fixture_disabled():
            yield

    def line(self, text: str) -> None:
        """One line of its own (``lines`` mode)."""
        if self.mode != "lines" or self.tr is None:
            return
        tw = self.tr._tw
        with self._uncaptured():
            # Without -v not tr.ensure_newline(): it makes pytest write the test file's name again
            # before the next dot (once per item in a CI log), and under -q it does nothing, gluing
            # the line to the dots; a newline of our own does neither. With -v pytest must write the
            # test's name again beside its PASSED, which ensure_newline() asks for.
            if self.config.get_verbosity() >= 1:
                self.tr.ensure_newline()
            elif tw.width_of_current_line:
                tw.line()
            tw.line(f"[mgpu] {text}")
            tw.flush()

    def show(self, text: str, force: bool = False) -> None:
        """Draw ``text`` in place after the current line's content (``live`` mode)."""
        if self.mode != "live" or self.tr is None:
            return
        now = time.monotonic()
        if not force and self._col is not None and now - self._last_draw < MIN_REDRAW_S:
            return
        tw = self.tr._tw
        if self._col is None:
            self._col = tw.width_of_current_line
        room = max(20, tw.fullwidth - self._col - 2)
        text = fit(text, room)
        with self._uncaptured():
            # Back to the start of the line, forward past pytest's own text, clear the rest, draw.
            _write_raw(tw, f"\r\x1b[{self._col}C\x1b[K " + text if self._col else f"\r\x1b[K {text}")
        self._last_draw = now

    def clear(self) -> None:
        """Erase the live text: the line is as pytest left it (``live`` mode)."""
        if self._col is None or self.tr is None:
            return
        tw = self.tr._tw
        with self._uncaptured():
            _write_raw(tw, f"\r\x1b[{self._col}C\x1b[K" if self._col else "\r\x1b[K")
        self._col = None

    # --- phases ---------------------------------------------------------------------------------
    @contextmanager
    def engine_start(self, engine: str, layout: str, model: str) -> Iterator[EngineWatch]:
        """Report an engine start; yields the ``watch`` the engine manager calls while it waits.

        Nothing is shown unless ``watch`` is called (a reused engine never calls it).
        """
        began: list[float] = []
        what = f"{engine} {layout} ({model})"

        def watch(log_path: Path | None) -> None:
            if not began:
                began.append(time.monotonic())
                self.line(f"starting {what}")
            elapsed = time.monotonic() - began[0]
            tail = last_log_line(log_path)
            self.show(f"starting {what}: {elapsed:.0f}s" + (f" | {tail}" if tail else ""))

        ok = False
        try:
            yield watch
            ok = True
        finally:
            if began:
                self.clear()
                elapsed = time.monotonic() - began[0]
                self.line(f"{what} {'ready' if ok else 'failed to start'} after {elapsed:.1f}s")

    @contextmanager
    def repeat(self, test: str, workload: str, i: int, n: int, clock: str = "wall") -> Iterator[WorkloadReport]:
        """Report one repeat of a workload; yields ``report(done, total, tokens, seconds)``.

        ``clock`` is ``"model"`` when the seconds are the sim's modelled time.
        """
        state = [0, 0, 0, 0.0]
        t0 = time.monotonic()

        def text(sep: str = " ") -> str:
            done, total, tokens, secs = state
            rate = f", {tokens / secs:,.0f} tok/s" if secs > 0 else ""
            unit = " (modelled)" if clock == "model" and rate else ""
            return f"{test} {workload}{sep}repeat {i}/{n}: {done}/{total} requests{rate}{unit}"

        def report(done: int, total: int, tokens: int, seconds: float) -> None:
            state[:] = [done, total, tokens, seconds]
            self.show(text(" " + KEEP))

        try:
            yield report
        finally:
            self.clear()
            elapsed = time.monotonic() - t0
            if not self.brief or elapsed >= SLOW_REPEAT_S:
                self.line(f"{text()}, {elapsed:.1f}s")


PROGRESS_KEY = pytest.StashKey[Progress]()


def progress_of(config: pytest.Config) -> Progress:
    """The session's :class:`Progress` (created on first use from ``--mgpu-progress``)."""
    p = config.stash.get(PROGRESS_KEY, None)
    if p is None:
        mode = config.getoption("mgpu_progress", "auto") or "auto"
        p = config.stash[PROGRESS_KEY] = Progress(config, mode)
    return p
