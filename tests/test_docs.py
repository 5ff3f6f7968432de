"""The documentation holds its promises: a short README whose first screen starts with a venv, links
that lead somewhere, and only options that exist.

The options come from ``pytest --help`` (the plugin as installed through its entry point), not from
the module that registers them, so the check survives moves inside the package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

MAX_README_LINES = 170
MAX_LINE_CHARS = 200
FIRST_SCREEN = 40

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
OPTION = re.compile(r"--mgpu-[a-z0-9]+(?:-[a-z0-9]+)*")


def split_fences(text: str) -> tuple[str, str]:
    """(prose, code) of Markdown ``text``: each keeps its own lines and blanks the other's, so line numbers hold."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            prose.append("")
            code.append("")
        else:
            prose.append("" if fenced else line)
            code.append(line if fenced else "")
    return "\n".join(prose), "\n".join(code)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return split_fences(text)[0]


def code(text: str) -> str:
    """Only the fenced code blocks of ``text``: the commands a reader copies."""
    return split_fences(text)[1]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of the Markdown file ``path``."""
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose(path.read_text(encoding="utf-8")), flags=re.M)
    return {slug(h) for h in heads}


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image in ``path`` outside code blocks."""
    out = []
    for n, line in enumerate(prose(path.read_text(encoding="utf-8")).splitlines(), 1):
        out.extend((n, m.group(1)) for m in LINK.finditer(line))
    return out


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; at most {MAX_README_LINES}"


def test_readme_has_no_overlong_line() -> None:
    long = [(n, len(line)) for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > MAX_LINE_CHARS]
    assert not long, f"README.md lines over {MAX_LINE_CHARS} characters (line, length): {long}"


def test_readme_first_screen_creates_a_venv_before_any_pip_install() -> None:
    screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN])
    commands = code(screen)
    venv = re.search(r"python3? -m venv ", commands)
    assert venv, f"no `python3 -m venv` command in README.md's first {FIRST_SCREEN} lines"
    pip = re.search(r"pip install", commands)
    assert pip, f"no install command in README.md's first {FIRST_SCREEN} lines"
    assert venv.start() < pip.start(), "README.md's first pip install command comes before the venv is made"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(doc: Path) -> None:
    broken = []
    for n, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"line {n}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"line {n}: {target} (no heading #{fragment} in {dest.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Real part\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#real-part) [gone](c.md)\n\n```\n[in code](nowhere.md)\n```\n[bad anchor](a.md#nope)\n")
    found = links(doc)
    assert [t for _, t in found] == ["a.md#real-part", "c.md", "a.md#nope"]
    assert "real-part" in anchors(tmp_path / "a.md")
    assert code("text pip install\n```\npython3 -m venv .venv\n```\n").split("\n") == ["", "", "python3 -m venv .venv", ""]
    assert slug("Modelled clock and time scale (`pytest_mgpu/sim/clock.py`)") == (
        "modelled-clock-and-time-scale-pytest_mgpusimclockpy"
    )


def test_every_option_the_docs_name_exists(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    registered = set(OPTION.findall(result.stdout.str()))
    assert "--mgpu-engine" in registered, "the plugin's options are missing from pytest --help"
    named: dict[str, list[str]] = {}
    for doc in [README, *DOCS]:
        for opt in OPTION.findall(doc.read_text(encoding="utf-8")):
            named.setdefault(opt, []).append(str(doc.relative_to(ROOT)))
    unknown = {opt: sorted(set(where)) for opt, where in named.items() if opt not in registered}
    assert not unknown, f"options named in the docs that pytest --help does not list: {unknown}"
