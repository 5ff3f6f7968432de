"""The package's shape (issue 19): no import cycle, every import points down its layers, a small root.

``scripts/import_cycles.py`` reads the import statements with ``ast`` (function-level ones
included, ``if TYPE_CHECKING:`` blocks left out); these tests run it on the package and on small
packages built to break each rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "import_cycles.py"
PACKAGE = REPO / "pytest_mgpu"


def run_checker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_package_has_no_cycle_and_imports_point_down() -> None:
    result = run_checker()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycle, every import points down its layers" in result.stdout


def test_the_root_holds_at_most_12_modules() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 12, root_modules


def test_a_function_level_cycle_is_found_and_a_type_checking_import_is_not(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .a import x  # lazy, still a cycle\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n",
        "d.py": "from .c import z\n",
    })
    result = run_checker("--root", str(pkg), "--no-layers")
    assert result.returncode == 1
    assert "cycle through 2 modules: a, b" in result.stdout
    assert "pkg.a:1 -> pkg.b:2 -> pkg.a" in result.stdout
    assert "c, d" not in result.stdout
    assert "1 cycle(s)" in result.stdout


def test_an_upward_import_and_an_unplaced_module_are_listed(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {
        "__init__.py": "",
        "errors.py": "",
        "run/__init__.py": "",
        "run/session.py": "from ..errors import E\n",
        "run/bench.py": "from ..measure.client import run\n",
        "measure/__init__.py": "",
        "measure/client.py": "def f():\n    from ..run import session\n",
        "stray.py": "",
    })
    result = run_checker("--root", str(pkg))
    assert result.returncode == 1
    assert "upward import: pkg.measure.client:2 (measure) imports pkg.run.session (run)" in result.stdout
    assert "no layer claims pkg.stray" in result.stdout
    assert "pkg.run.bench" not in result.stdout  # run -> measure points down
    assert "imports pkg.run (run)" not in result.stdout  # the package of the module named is not listed again
    assert "cycle through" not in result.stdout


def test_type_only_upward_imports_are_noted_not_counted(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {
        "__init__.py": "",
        "run/__init__.py": "",
        "run/session.py": "from ..report.summary import lines\n",
        "report/__init__.py": "",
        "report/summary.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..run.session import S\n",
    })
    assert run_checker("--root", str(pkg)).returncode == 0
    result = run_checker("--root", str(pkg), "--types")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == (
        "note: type-only upward import: pkg.report.summary:3 imports pkg.run.session (not counted)"
    )
