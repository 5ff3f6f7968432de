"""Live progress: engine start and workload repeats, in place on a terminal, one line per phase elsewhere.

Progress is written with capture suspended: it must never land in a test's captured output or
in the JUnit XML. A terminal is emulated by making pytest's terminal reporter report a tty (a
conftest in the pytester directory); :func:`render` replays the carriage returns and the ANSI
cursor moves the live mode writes, giving what the screen shows at the end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_mgpu.run.progress import last_log_line

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "-p", "no:cacheprovider", "--mgpu-repeats", "2", "--color=no"]

PERF_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=2)
def test_serve(mgpu_bench):
    print("hello from the test body")
    mgpu_bench.run(input_len=64, output_len=16, num_requests=32, request_rate=math.inf, warmup_requests=2)
    assert False, "fails on purpose, to show its captured output"
"""

FAKE_TTY = """
import pytest


class CallableBool:
    \"\"\"True both as pytest 8's bool attribute and as pytest 9's method (_pytest.compat has no such class on 8.0).\"\"\"

    def __bool__(self):
        return True

    def __call__(self):
        return True


class Tee:
    \"\"\"The terminal's file, with a byte-exact copy in raw.txt (pytester's lines split at \\r).\"\"\"

    def __init__(self, inner, path):
        self.inner, self.copy = inner, open(path, "w")

    def write(self, s):
        self.copy.write(s)
        self.copy.flush()
        return self.inner.write(s)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    tr = config.pluginmanager.get_plugin("terminalreporter")
    tr.isatty = CallableBool()
    tr._tw._file = Tee(tr._tw._file, config.rootpath / "raw.txt")
"""

STARTING = "starting sim tp2-pp1 (llama-2-7b)"
REPEAT = re.compile(r"test_serve\[tp2-pp1\] in64-out16-n32-qpsinf(?:-text)? repeat (\d)/2: 32/32 requests, [\d,]+ tok/s \(modelled\)")
#: A repeat drawn in place, at any count: redraws closer than MIN_REDRAW_S apart are skipped, so the
#: last one drawn before a quick repeat ends (and is erased) may be any of its counts, even 0.
DRAWN_REPEAT = re.compile(r"test_serve\[tp2-pp1\] in64-out16-n32-qpsinf(?:-text)? repeat (\d)/2: \d+/32 requests")


def render(text: str) -> list[str]:
    """The screen after ``text``: handles ``\\n``, ``\\r``, ``ESC[nC`` (forward) and ``ESC[K`` (erase to end)."""
    lines: list[list[str]] = [[]]
    col = 0
    i = 0
    while i < len(text):
        ch = text[i]
        m = re.match(r"\x1b\[(\d*)([CK])", text[i:])
        if m:
            if m.group(2) == "C":
                col += int(m.group(1) or 1)
            else:
                del lines[-1][col:]
            i += m.end()
            continue
        if ch == "\n":
            lines.append([])
            col = 0
        elif ch == "\r":
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines]


def captured_section(out: str) -> str:
    """The 'Captured stdout call' section of a failure report."""
    m = re.search(r"-+ Captured stdout call -+\n(.*?)(?=\n[-=]{5})", out, re.S)
    assert m, out
    return m.group(1)


def test_render_replays_cursor_moves() -> None:
    assert render("abc.\x1b[4C\x1b[K status 1\r\x1b[4C\x1b[K status 22\r\x1b[4C\x1b[K.\n") == ["abc..", ""]


def test_not_a_terminal_prints_one_line_per_phase(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(*SIM, "-rA", f"--junitxml={junit}", "--mgpu-progress=lines")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "\x1b[" not in out
    result.stdout.fnmatch_lines([
        f"[[]mgpu[]] {STARTING}",
        "[[]mgpu[]] sim tp2-pp1 (llama-2-7b) ready after *s",
    ])
    repeats = [m.group(1) for line in out.splitlines() if line.startswith("[mgpu]") and (m := REPEAT.search(line))]
    assert repeats == ["1", "2"], out
    # The test's own print is captured; the progress is not, and it is not in the JUnit XML.
    section = captured_section(out)
    assert "hello from the test body" in section
    assert "[mgpu]" not in section and "repeat 1/2" not in section
    xml = junit.read_text()
    assert "hello from the test body" in xml
    assert "repeat 1/2" not in xml and STARTING not in xml


def test_quiet_prints_lines_even_on_a_terminal(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_TTY)
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "-q")
    result.assert_outcomes(failed=1)
    assert "\x1b[" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"[[]mgpu[]] {STARTING}"])


def test_terminal_updates_in_place_and_erases(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(FAKE_TTY)
    pytester.makepyfile(test_perf=PERF_TEST)
    monkeypatch.setenv("COLUMNS", "200")  # room for the whole status line
    junit = pytester.path / "junit.xml"
    # The sim logs a line and sleeps 1 s before it listens: the start is long enough to be redrawn.
    result = pytester.runpytest(*SIM, "-rA", f"--junitxml={junit}", "--mgpu-engine-opt", "start_delay=1")
    result.assert_outcomes(failed=1)
    raw = (pytester.path / "raw.txt").read_bytes().decode()  # read_text() would turn \r into \n
    assert "[mgpu]" not in raw  # no per-phase lines
    # Drawn in place after the test file's name: engine start (elapsed, log's last line), then repeats.
    drawn = re.findall(r"\x1b\[K ([^\r\n\x1b]+)", raw)
    assert any(d.startswith(STARTING + ": ") for d in drawn), drawn
    assert any(re.search(r": [1-9]s \| \[sim [\d:]+\] FAULT start_delay=1", d) for d in drawn), drawn  # log's last line
    assert [m.group(1) for d in drawn if (m := DRAWN_REPEAT.match(d))][-1] == "2", drawn
    # ... and erased: the screen shows pytest's own line as if no progress had been drawn.
    screen = render(raw)
    assert any(re.fullmatch(r"test_perf\.py F +\[100%\]", line) for line in screen), "\n".join(screen)
    assert not any("starting sim" in line or "repeat 1/2" in line for line in screen), screen
    section = captured_section(raw)
    assert "hello from the test body" in section and "starting sim" not in section and "\x1b[" not in section
    xml = junit.read_text()
    assert "starting sim" not in xml and "repeat 1/2" not in xml


def test_a_skipped_last_redraw_still_leaves_a_clean_screen(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ticks faster than redraws: a repeat's last count is never drawn (CI saw this once); erasing still works."""
    import pytest_mgpu.measure.client as client
    import pytest_mgpu.run.progress as progress

    monkeypatch.setattr(client, "PROGRESS_INTERVAL_S", 0.001)
    monkeypatch.setattr(progress, "MIN_REDRAW_S", 60.0)
    pytester.makeconftest(FAKE_TTY)
    pytester.makepyfile(test_perf=PERF_TEST)
    monkeypatch.setenv("COLUMNS", "200")
    result = pytester.runpytest(*SIM)
    result.assert_outcomes(failed=1)
    raw = (pytester.path / "raw.txt").read_bytes().decode()
    drawn = re.findall(r"\x1b\[K ([^\r\n\x1b]+)", raw)
    # Each repeat's first report is drawn (at the first tick, before any request ended); no later one.
    assert [m.group(1) for d in drawn if (m := DRAWN_REPEAT.match(d))] == ["1", "2"], drawn
    assert not any(REPEAT.match(d) for d in drawn), drawn
    screen = render(raw)
    assert any(re.fullmatch(r"test_perf\.py F +\[100%\]", line) for line in screen), "\n".join(screen)


def test_off_is_silent(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKE_TTY)
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest(*SIM, "--mgpu-progress", "off")
    out = result.stdout.str()
    assert "[mgpu]" not in out and "\x1b[" not in out and "starting sim" not in out


def test_last_log_line(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    assert last_log_line(log) == ""
    log.write_text("first\n" + "x" * 10000 + "\nINFO loading\x07 weights 3/7\n\n")
    assert last_log_line(log) == "INFO loading  weights 3/7"
    assert last_log_line(None) == ""
    log.write_text("y" * 500)
    assert last_log_line(log, limit=20) == "y" * 19 + "…"


def test_isatty_is_read_as_pytest_8_attribute_and_pytest_9_method() -> None:
    from types import SimpleNamespace

    from pytest_mgpu.run.progress import _isatty

    assert _isatty(SimpleNamespace(isatty=True)) is True  # pytest 8.x: a bool attribute
    assert _isatty(SimpleNamespace(isatty=False)) is False
    assert _isatty(SimpleNamespace(isatty=lambda: True)) is True  # pytest 9: a method
