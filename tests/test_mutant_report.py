"""scripts/mutant_report.py tells a mutant that changes only a message from one that changes a decision."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutant_report.py"


@pytest.fixture(scope="module")
def mr() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutant_report", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kind_of(mr: ModuleType, before: str, after: str) -> tuple[str, str, str]:
    a, b = (ast.parse(f"def f(x):\n    {src}\n").body[0] for src in (before, after))
    old, new, path = mr.first_difference(a, b)
    return mr.kind(old, new, path), mr.one_line(old), mr.one_line(new)


@pytest.mark.parametrize("before, after, want", [
    ("raise ValueError(f'bad {x}')", "raise ValueError(None)", "wording"),
    ("raise ValueError('no files to merge')", "raise ValueError('XXno files to mergeXX')", "wording"),
    ("return ', '.join(x)", "return 'XX, XX'.join(x)", "wording"),
    ("return f'{x}: note'", "return f'{x}: NOTE'", "wording"),
    ("raise ValueError('bad')", "raise TypeError('bad')", "logic"),
    ("return x.get('module')", "return x.get('XXmoduleXX')", "logic"),
    ("return x > 0", "return x >= 0", "logic"),
    ("return x or ''", "return x or 'XXXX'", "logic"),
    ("return x or 1", "return x and 1", "logic"),
])
def test_kind(mr: ModuleType, before: str, after: str, want: str) -> None:
    got, old, new = kind_of(mr, before, after)
    assert got == want, (old, new)
    # the changed statement is shown before and after
    assert (old, new) == (ast.unparse(ast.parse(before)), ast.unparse(ast.parse(after)))


def test_short_names(mr: ModuleType) -> None:
    assert mr.short("pytest_mgpu.report.merge.x_merge_shards__mutmut_66") == "report.merge.merge_shards#66"
    assert mr.short("pytest_mgpu.judge.baseline.xǁRecordingǁto_dict__mutmut_20") == "judge.baseline.Recording.to_dict#20"


def test_without_a_run_it_says_what_to_do(mr: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mr.main(["--root", str(tmp_path)]) == 2
    assert "run `nox -s mutants` first" in capsys.readouterr().err


def test_every_reason_names_a_kind_of_mutant_and_wording_is_explained(mr: ModuleType) -> None:
    assert mr.why("pytest_mgpu.judge.ab_verdicts.x_t_sf__mutmut_6", "logic").startswith("t_sf at t = 0")
    assert mr.why("pytest_mgpu.run.shard.x_select__mutmut_4", "logic").startswith("reads pytest items")
    assert mr.why("pytest_mgpu.judge.verdicts.x_compare__mutmut_999", "wording").startswith("wording of a message")
    assert mr.why("pytest_mgpu.judge.verdicts.x_compare__mutmut_999", "logic") == "unexplained"
