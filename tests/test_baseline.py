"""The baseline store: layout on disk, merge, broken files, atomic writes, the gate lifecycle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu import METRIC_DEFINITION_VERSION, __version__
from pytest_mgpu.errors import BaselineError
from pytest_mgpu.gpus import GpuInfo, GpuInventory
from pytest_mgpu.judge import baseline as bl
from pytest_mgpu.judge.baseline import (
    BaselineEntry,
    BaselineStore,
    Recording,
    dumps_baseline,
    parse_baseline_data,
)
from pytest_mgpu.judge.results import BenchResult, RepeatResult
from pytest_mgpu.judge.verdicts import GateConfig, Verdict, compare
from pytest_mgpu.layout import Layout
from pytest_mgpu.machine import collect_env
from pytest_mgpu.measure.workload import Workload

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
    # One recording: a gain is not judged an improvement (the spread between engine starts is unknown).
    assert gate(store, make_result(factors={"output_throughput_per_gpu": 1.25})) is Verdict.PASS
    second = make_result()  # another run of the unchanged engine: a second recording
    second.env = {**second.env, "date": "2026-01-02T00:00:00+00:00"}
    store.update(FP, MOD, [second])
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
    assert doc["schema_version"] == 2 and doc["fingerprint"] == FP
    assert json.dumps(doc, sort_keys=True, indent=2) + "\n" == text  # stable and sorted
    e = doc["entries"]["test_serve[tp2-pp1]::in128-out128-n256-qps32"]
    assert e["test"] == "test_serve[tp2-pp1]" and e["model"] == "tiny" and e["engine"] == "sim"
    assert e["layout"]["tp"] == 2 and e["engine_config"] == {}
    (rec,) = e["recordings"]
    assert rec["engine_version"] == "0.1.0" and rec["repeats"] == 3
    assert rec["metrics"]["output_throughput_per_gpu"] == [1000.0, 1010.0, 990.0]  # samples only: nothing derived
    assert rec["env"]["plugin_version"] == __version__
    assert rec["env"]["metric_definition_version"] == METRIC_DEFINITION_VERSION
    assert store.fingerprints() == [FP]
    # Reading and writing back produces byte-identical output.
    _, entries = bl.read_baseline_file(path)
    assert dumps_baseline(FP, MOD, entries) == text


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
        ('{"schema_version": 3, "fingerprint": "x", "entries": {}}', "schema_version 3"),
        ('{"schema_version": 1, "entries": {}}', "lacks 'fingerprint' or 'entries'"),
        ('{"schema_version": 1, "fingerprint": "x", "entries": {"t::w": {"engine": "sim"}}}', "broken entry 't::w'"),
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
    ident = make_result("t").identity
    rec = Recording({m: tuple(s) for m, s in metrics.items()}, version, {"date": "2026-01-01"}, 3, {"speed": "1"})
    entry = BaselineEntry("t::w", ident, (rec, rec), nodeid="m.py::t")
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


# --- schema 2: history, migration, identity (issue 8, issue 9 part 1) ---------------------------

V1_ENTRY = {
    "engine": "sim", "engine_version": "0.0.9", "model": "tiny", "nodeid": f"{MOD}::test_serve[tp2-pp1]",
    "layout": {"gpu_mem_gb": None, "pp": 1, "tp": 2}, "repeats": 3,
    "workload": {**Workload().to_dict(), "vocab_size": 32000},
    "env": {"date": "2025-12-01T00:00:00+00:00", "commit": "old"},
    "metrics": {m: {"samples": [v, v * 1.01, v * 0.99], "median": 12345.0, "noise": 0.5} for m, v in BASE.items()},
}


def test_schema_1_is_migrated_on_read_and_written_as_2(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    path = store.path(FP, MOD)
    path.parent.mkdir(parents=True)
    eid = make_result().entry_id
    path.write_text(json.dumps({"schema_version": 1, "fingerprint": FP, "module": MOD, "entries": {eid: V1_ENTRY}}))
    e = store.get(FP, MOD, eid)
    assert e is not None and len(e.recordings) == 1 and e.engine_version == "0.0.9"
    assert e.identity == make_result().identity  # the test comes from the node id, engine options default to none
    assert e.median("output_throughput_per_gpu") == pytest.approx(1000.0)  # derived; the stored 12345 is ignored
    assert e.engine_options is None  # not recorded in schema 1
    store.update(FP, MOD, [make_result(version="0.1.0")])
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 2
    recs = doc["entries"][eid]["recordings"]
    assert [r["engine_version"] for r in recs] == ["0.0.9", "0.1.0"] and "engine_options" not in recs[0]


def test_history_keeps_the_last_n(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for i in range(4):
        store.update(FP, MOD, [make_result(factors={"tpot_p50": 1 + i / 100})], history=3)
    e = store.get(FP, MOD, make_result().entry_id)
    assert e is not None and [r.metrics["tpot_p50"][0] for r in e.recordings] == [10.1, 10.2, 10.3]
    assert len(e.history("tpot_p50")) == 2 and e.stats("tpot_p50").recordings == 3
    with pytest.raises(BaselineError, match="at least 1"):
        store.update(FP, MOD, [make_result()], history=0)


def test_another_identity_replaces_the_entry_and_says_so(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result(), make_result("test_b")])
    other = make_result()
    other.model = "llama-2-7b"
    res = store.update(FP, MOD, [other])
    assert res.replaced == {other.entry_id: "baseline is for model tiny; this run: llama-2-7b"}
    e = store.get(FP, MOD, other.entry_id)
    assert e is not None and e.model == "llama-2-7b" and len(e.recordings) == 1
    assert store.get(FP, MOD, make_result("test_b").entry_id) is not None


def test_another_version_or_options_start_a_new_level(tmp_path: Path) -> None:
    """An accepted upgrade (or new setting) measured something else: the older recordings are kept, not used."""
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    store.update(FP, MOD, [make_result(factors={"tpot_p50": 1.005})])
    res = store.update(FP, MOD, [make_result(factors={"output_throughput_per_gpu": 1.25}, version="0.2.0")])
    assert res.new_level == {make_result().entry_id: "engine version 0.1.0 -> 0.2.0"}
    e = store.get(FP, MOD, make_result().entry_id)
    assert e is not None and len(e.recordings) == 3 and len(e.active) == 1
    assert e.median("output_throughput_per_gpu") == pytest.approx(1250.0)
    assert store.compare(FP, make_result(factors={"output_throughput_per_gpu": 1.25})).verdict is Verdict.PASS
    tuned = make_result(factors={"output_throughput_per_gpu": 1.25}, version="0.2.0")
    tuned.engine_options = {"max-num-seqs": "64"}
    store.update(FP, MOD, [make_result(factors={"output_throughput_per_gpu": 1.25}, version="0.2.0")])
    res = store.update(FP, MOD, [tuned])
    assert res.new_level == {make_result().entry_id: "engine options changed"}


def test_two_results_with_one_entry_id_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="share the entry id"):
        BaselineStore(tmp_path).update(FP, MOD, [make_result(), make_result()])


def test_entry_id_is_unique_per_item_class_included() -> None:
    r = make_result()
    r.nodeid = f"{MOD}::TestSlow::test_serve[tp2-pp1]"
    assert r.entry_id == "TestSlow::test_serve[tp2-pp1]::in128-out128-n256-qps32" and r.test_name == "test_serve[tp2-pp1]"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_follows_the_umask(tmp_path: Path, umask: int) -> None:
    import stat

    old = os.umask(umask)
    try:
        p = tmp_path / "f.json"
        bl.atomic_write_text(p, "{}")
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
        p.chmod(0o600)
        bl.atomic_write_text(p, "{}")  # an update: the umask again, not the temp file's 0600
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(old)


def test_unknown_top_level_keys_are_kept(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    path = store.path(FP, MOD)
    doc = json.loads(path.read_text())
    doc["x_team"] = {"owner": "perf"}
    path.write_text(json.dumps(doc))
    store.update(FP, MOD, [make_result("test_b")])
    assert json.loads(path.read_text())["x_team"] == {"owner": "perf"}


def _update_many(root: str, worker: int, n: int, barrier: Any) -> None:
    """One writer process: ``n`` updates of the same baseline file, each adding its own entry."""
    store = BaselineStore(Path(root))
    barrier.wait()  # every writer starts at once, so their read-modify-write cycles overlap
    for i in range(n):
        store.update(FP, MOD, [make_result(f"test_w{worker}_{i}")])


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    """Processes writing one baseline file at once (xdist workers, shards on one disk) each add entries;
    the store's directory lock makes every read-modify-write whole, so none is lost."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    workers, n = 6, 8
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_update_many, args=(str(tmp_path), w, n, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    entries = json.loads(BaselineStore(tmp_path).path(FP, MOD).read_text())["entries"]
    assert len(entries) == workers * n


def test_store_compare_uses_the_given_gate_config(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    slower = make_result(factors={"tpot_p50": 1.08})
    assert store.compare(FP, slower).verdict is Verdict.FAIL
    loose = GateConfig().with_overrides({"tpot_p50": "10%"})
    assert store.compare(FP, slower, loose).verdict is Verdict.PASS


def test_history_of_one_and_extra_metrics_are_recorded(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    r = make_result()
    for rep in r.repeats:
        rep.summary["itl_p50"] = 9.0
    store.update(FP, MOD, [r], history=1, metrics=["itl_p50"])
    store.update(FP, MOD, [r], history=1, metrics=["itl_p50"])
    entry = store.get(FP, MOD, r.entry_id)
    assert entry is not None and len(entry.recordings) == 1 and entry.samples("itl_p50") == [9.0] * 3
    assert entry.nodeid == r.nodeid and entry.entry_id == r.entry_id
    assert entry.samples("no_such_metric") == []
    assert entry.stats("tpot_p50", noise_floor=0.02).latest_noise == 0.02
    with pytest.raises(BaselineError):
        store.update(FP, MOD, [r], history=0)
