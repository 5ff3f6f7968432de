"""A new user's first look from the repository root works after ``pip install -e .`` alone.

``pytest --markers`` and ``pytest --help`` load ``tests/conftest.py`` (it is under ``testpaths``);
without the ``test`` extra there is no hypothesis. The subprocess hides hypothesis with a
``None`` entry in ``sys.modules`` (so ``import hypothesis`` raises ImportError, as when it is not
installed) and disables plugin autoloading (hypothesis's own pytest plugin would otherwise load
through its entry point, which an uninstalled package does not have), loading ours with ``-p``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_HYPOTHESIS = (
    "import sys\n"
    "sys.modules['hypothesis'] = None\n"
    "import pytest\n"
    "sys.exit(pytest.main(['-p', 'pytest_mgpu.plugin', '-p', 'no:cacheprovider', *sys.argv[1:]]))\n"
)


def run_without_hypothesis(*args: str) -> subprocess.CompletedProcess[str]:
    """``pytest ARGS`` from the repository root, as if hypothesis were not installed."""
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", WITHOUT_HYPOTHESIS, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("arg", "expected"), [
    ("--markers", "@pytest.mark.layout("),
    ("--help", "--mgpu-engine"),
])
def test_markers_and_help_work_without_the_test_extra(arg: str, expected: str) -> None:
    proc = run_without_hypothesis(arg)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expected in proc.stdout
    assert "hypothesis" not in proc.stderr
    # pytest --help prints its help even when a conftest fails to load, with this warning.
    assert "could not load initial conftests" not in proc.stdout + proc.stderr


def test_the_hiding_works() -> None:
    """The check above would prove nothing if hypothesis were still importable in the subprocess."""
    code = WITHOUT_HYPOTHESIS.replace("import pytest\n", "import hypothesis\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr


def test_running_the_tests_without_the_test_extra_says_how_to_install_it() -> None:
    """Plain ``pytest`` at the root without hypothesis: one usage error naming the extra, not 14 import errors."""
    proc = run_without_hypothesis("--collect-only", "-q", "tests/test_repo_root.py")  # collect only: no recursion
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pip install -e '.[test]'" in proc.stderr
    assert "ModuleNotFoundError" not in proc.stdout + proc.stderr
