"""CI's no-silent-skip rule (tests/conftest.py, ``MGPU_REQUIRE_NO_SKIP=1``): a skip fails unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent

INNER = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="needs a thing CI forgot to install")
def test_forgotten():
    pass

def test_busy_host():
    pytest.skip("host too busy for a wall-clock comparison (load 9)")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with this repository's tests/conftest.py and an allow-list of one skip."""
    pytester.makeconftest((HERE / "conftest.py").read_text())
    (pytester.path / "allowed_skips.txt").write_text(
        "# comment\n*::test_busy_host | host too busy for a wall-clock comparison*\n")
    pytester.makepyfile(test_inner=INNER, test_mod="import pytest\npytest.importorskip('no_such_module_xyz')\n")
    return pytester


def test_without_the_variable_skips_stay_skips(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MGPU_REQUIRE_NO_SKIP", raising=False)
    r = inner.runpytest("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_in_ci_an_unlisted_skip_fails_and_says_what_to_do(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MGPU_REQUIRE_NO_SKIP", "1")
    r = inner.runpytest("-p", "no:cacheprovider", "-rs")
    # A module's skip is a collection error, which stops the run: CI fails.
    r.assert_outcomes(errors=1)
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines(["*ERROR collecting test_mod.py*", "test_mod.py skipped in a run with MGPU_REQUIRE_NO_SKIP=1*"])
    # A test's skip errors at its setup; the allowed skip and the xfail stay what they are.
    r = inner.runpytest("-p", "no:cacheprovider", "-rs", "test_inner.py")
    r.assert_outcomes(passed=1, skipped=1, xfailed=1, errors=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines([
        "*test_forgotten skipped in a run with MGPU_REQUIRE_NO_SKIP=1 (CI), where every test must run: "
        "needs a thing CI forgot to install",
        "*allow the skip in */allowed_skips.txt with the reason why.",
    ])
    r.stdout.fnmatch_lines(["SKIPPED *host too busy for a wall-clock comparison (load 9)"])


def test_the_repository_allow_list_parses(request: pytest.FixtureRequest) -> None:
    # The loaded tests/conftest.py, found among the plugins: ``from conftest import`` would get
    # whichever conftest.py was imported last (tests/cluster/ has its own in a whole-tree run).
    here = Path(__file__).with_name("conftest.py")
    conftest = next(p for p in request.config.pluginmanager.get_plugins()
                    if getattr(p, "__file__", None) and Path(p.__file__) == here)
    rows = conftest.allowed_skips()
    assert rows and all(node.startswith("tests/") and reason for node, reason in rows)
