"""The baseline store: layout on disk, merge, broken files, atomic writes, the gate lifecycle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu import METRIC_DEFINITION_VERSION, __version__
from pytest_mgpu import baseline as bl
from pytest_mgpu.baseline import (
    BaselineEntry,
    BaselineStore,
    MetricRecord,
    dumps_baseline,
    parse_baseline_data,
)
from pytest_mgpu.errors import BaselineError
from pytest_mgpu.gpus import GpuInfo, GpuInventory
from pytest_mgpu.layout import Layout
from pytest_mgpu.machine import collect_env
from pytest_mgpu.results import BenchResult, RepeatResult
from pytest_mgpu.verdicts import Verdict, compare
from pytest_mgpu.workload import Workload

FP = "sim-v100-16gb-x4"
MOD = "perf_tests/test_llama.py"
BASE = {"output_throughput_per_gpu": 1000.0, "ttft_p50": 50.0, "tpot_p50": 10.0, "ttft_p99": 90.0, "tpot_p99": 14.0}


def make_result(
    test: str = "test_serve[tp2-pp1]",
    factors: dict[str, float] | None = None,
    invalid: str | None = None,
    version: str = "0.1.0",
) -> BenchResult:
    """A hand-built result: BASE x factor, three repeats with 1% jitter."""
    factors = factors or {}
    reps = [
        RepeatResult({m: v * factors.get(m, 1.0) * j for m, v in BASE.items()}, invalid=invalid)
        for j in (1.0, 1.01, 0.99)
    ]
    return BenchResult(
        nodeid=f"{MOD}::{test}", test_name=test, module=MOD, workload=Workload(), layout=Layout(tp=2),
        engine="sim", engine_version=version, model="tiny", repeats=reps,
        env={"fingerprint": FP, "driver": None, "commit": "abc", "date": "2026-01-01T00:00:00+00:00"},
    )


def gate(store: BaselineStore, result: BenchResult, fingerprint: str = FP) -> Verdict:
    """What the plugin does for one result."""
    return store.compare(fingerprint, result).verdict


def test_lifecycle(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    assert gate(store, make_result()) is Verdict.NEW
    store.update(FP, MOD, [make_result()])
    assert gate(store, make_result()) is Verdict.PASS
    assert gate(store, make_result(factors={"output_throughput_per_gpu": 0.8})) is Verdict.FAIL
    assert gate(store, make_result(factors={"output_throughput_per_gpu": 1.25})) is Verdict.IMPROVED
    assert gate(store, make_result(invalid="2 of 256 requests failed")) is Verdict.INVALID
    other = "nvidia-h100-80gb-hbm3-x2"
    c = store.compare(other, make_result())
    assert c.verdict is Verdict.NEW and f"no baseline for {other}; have: {FP}" in c.note
    c = compare(make_result(factors={"tpot_p50": 1.3}), store.get(FP, MOD, make_result().entry_id))
    assert c.verdict is Verdict.FAIL and "tpot_p50 +30.0% (tolerance 5%" in c.note


def test_layout_and_format(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    res = store.update(FP, MOD, [make_result()])
    path = tmp_path / FP / "perf_tests" / "test_llama.py.json"
    assert res.path == path and res.written == [make_result().entry_id]
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "entries"')
    doc = json.loads(text)
    assert doc["schema_version"] == 1 and doc["fingerprint"] == FP
    assert json.dumps(doc, sort_keys=True, indent=2) + "\n" == text  # stable and sorted
    e = doc["entries"]["test_serve[tp2-pp1]::in128-out128-n256-qps32"]
    assert e["engine_version"] == "0.1.0" and e["layout"]["tp"] == 2 and e["repeats"] == 3
    m = e["metrics"]["output_throughput_per_gpu"]
    assert m["samples"] == [1000.0, 1010.0, 990.0] and m["median"] == 1000.0 and 0.009 < m["noise"] < 0.011
    assert e["env"]["plugin_version"] == __version__
    assert e["env"]["metric_definition_version"] == METRIC_DEFINITION_VERSION
    assert store.fingerprints() == [FP]
    # Writing the same data again produces byte-identical output.
    store.update(FP, MOD, [make_result()])
    assert path.read_text() == text


def test_update_merges_and_replaces(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result("test_a"), make_result("test_b")])
    store.update(FP, MOD, [make_result("test_b", version="0.2.0"), make_result("test_c")])
    entries = store.load(FP, MOD)
    assert sorted(e.split("::")[0] for e in entries) == ["test_a", "test_b", "test_c"]
    assert entries[make_result("test_b").entry_id].engine_version == "0.2.0"
    assert entries[make_result("test_a").entry_id].engine_version == "0.1.0"


def test_update_skips_invalid(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    res = store.update(FP, MOD, [make_result("test_a", invalid="boom"), make_result("test_b")])
    assert list(res.skipped) == [make_result("test_a").entry_id] and "boom" in res.skipped[make_result("test_a").entry_id]
    assert list(store.load(FP, MOD)) == [make_result("test_b").entry_id]
    with pytest.raises(BaselineError, match="invalid result cannot become a baseline"):
        BaselineEntry.from_result(make_result(invalid="boom"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"schema_version": 1, "fingerprint": "x", "entr', "not valid JSON"),
        ('{"schema_version": 2, "fingerprint": "x", "entries": {}}', "schema_version 2"),
        ('{"schema_version": 1, "entries": {}}', "lacks 'fingerprint' or 'entries'"),
        ('{"schema_version": 1, "fingerprint": "x", "entries": {"t::w": {"engine": "sim"}}}', "malformed entry 't::w'"),
        ("[]", "does not hold a JSON object"),
    ],
)
def test_broken_file_raises_and_is_kept(tmp_path: Path, content: str, match: str) -> None:
    store = BaselineStore(tmp_path)
    path = store.path(FP, MOD)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(BaselineError, match=match) as exc:
        store.load(FP, MOD)
    assert str(path) in str(exc.value) and "--mgpu-update-baselines" in str(exc.value)
    with pytest.raises(BaselineError):
        store.update(FP, MOD, [make_result()])
    assert path.read_text() == content  # never overwritten silently
    store.update(FP, MOD, [make_result()], force=True)
    assert list(store.load(FP, MOD)) == [make_result().entry_id]


def test_iter_all_reports_broken_files(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    broken = tmp_path / "cpu" / "perf_tests" / "test_b.py.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{")
    files = {(f.fingerprint, f.module): f for f in store.iter_all()}
    assert files[(FP, MOD)].error is None and len(files[(FP, MOD)].entries) == 1
    assert "not valid JSON" in (files[("cpu", "perf_tests/test_b.py")].error or "")
    assert store.fingerprints_with(MOD, make_result().entry_id) == [FP]


def test_atomic_write_leaves_no_temp_and_keeps_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    path = store.path(FP, MOD)
    original = path.read_text()
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    with pytest.raises(BaselineError, match="non-finite values in tpot_p50"):
        store.update(FP, MOD, [make_result("test_nan", factors={"tpot_p50": float("nan")})])
    assert path.read_text() == original

    # Serialisation fails: nothing written, original intact.
    def bad_dumps(*args: object, **kwargs: object) -> str:
        raise TypeError("Object of type Path is not JSON serializable")

    with monkeypatch.context() as mp:
        mp.setattr(bl, "dumps_baseline", bad_dumps)
        with pytest.raises(TypeError):
            store.update(FP, MOD, [make_result("test_other")])
    assert path.read_text() == original

    # The disk write fails half-way: the temp file is removed, original intact.
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bl.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        store.update(FP, MOD, [make_result("test_other")])
    assert path.read_text() == original
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_bad_paths_rejected(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    with pytest.raises(BaselineError, match="relative"):
        store.path(FP, "../evil.py")
    with pytest.raises(BaselineError, match="fingerprint"):
        store.path("Bad Name", MOD)
    assert store.load(FP, MOD) == {} and store.get(FP, MOD, "x") is None
    assert BaselineStore(tmp_path / "missing").fingerprints() == []


def test_collect_env(tmp_path: Path) -> None:
    inv = GpuInventory(gpus=[GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559)], driver="550.54", cuda="12.4")
    env = collect_env("nvidia-h100-80gb-hbm3-x1", inv, cwd=tmp_path)
    assert env["fingerprint"] == "nvidia-h100-80gb-hbm3-x1" and env["driver"] == "550.54" and env["cuda"] == "12.4"
    assert env["commit"] is None and env["dirty"] is False  # tmp_path is no git repo
    assert env["date"].endswith("+00:00") and env["plugin_version"] == __version__
    here = collect_env("cpu", None, cwd=Path(__file__).parent)
    if here["commit"] is not None:  # running inside the project's git checkout
        assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)


samples = st.lists(st.floats(1e-3, 1e6, allow_nan=False), min_size=1, max_size=5)


@given(st.dictionaries(st.sampled_from(sorted(BASE)), samples, min_size=1), st.text(min_size=1, max_size=20))
def test_round_trip(metrics: dict[str, list[float]], version: str) -> None:
    entry = BaselineEntry(
        entry_id="t::w", engine="sim", engine_version=version, model="tiny", layout=Layout(tp=2).to_dict(),
        workload=Workload().to_dict(), metrics={m: MetricRecord.from_samples(s) for m, s in metrics.items()},
        env={"date": "2026-01-01"}, nodeid="m.py::t", repeats=3,
    )
    text = dumps_baseline(FP, MOD, {entry.entry_id: entry})
    header, entries = parse_baseline_data(json.loads(text))
    assert entries == {"t::w": entry} and header["fingerprint"] == FP
    assert dumps_baseline(FP, MOD, entries) == text


def test_store_round_trip_of_results(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    r = make_result()
    store.update(FP, MOD, [r])
    e = store.get(FP, MOD, r.entry_id)
    assert e is not None
    for m in BASE:
        assert e.samples(m) == pytest.approx(r.samples(m), rel=1e-6)
        assert e.median(m) == pytest.approx(r.median[m], rel=1e-6)
    assert os.listdir(tmp_path) == [FP]
