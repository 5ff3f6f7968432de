"""Baseline recordings, exactly: every field a recording writes and reads back, each refusal of a
corrupt number word for word, which run a recording belongs to, and how a new recording moves the
history and the anchor. test_baseline.py covers the store's lifecycle; these pin its rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_baseline import FP, MOD, V1_ENTRY, make_result  # type: ignore[import-not-found]

from pytest_mgpu import METRIC_DEFINITION_VERSION, __version__
from pytest_mgpu.errors import BaselineError
from pytest_mgpu.judge.baseline import (
    SAMPLE_RANGE,
    BaselineEntry,
    BaselineStore,
    Recording,
    add_recording,
    check_samples,
    read_baseline_file,
    run_of,
    same_run,
)
from pytest_mgpu.judge.results import BenchResult, RepeatResult


def rec(run: str | None = "r1", version: str = "0.26.0", tpot: float = 10.0, anchor: bool = False,
        date: str = "2026-12-01") -> Recording:
    """A one-metric recording of run ``run``."""
    env = {"date": date, **({"run_id": run} if run else {})}
    return Recording(metrics={"tpot_p50": (tpot, tpot * 1.01)}, engine_version=version, env=env, repeats=2,
                     anchor=anchor)


def measured(metric: str, *values: float, output_len: int | None = None) -> BenchResult:
    """``make_result()`` with ``metric`` measured as ``values``, one per repeat (one value: every repeat)."""
    r = make_result()
    if output_len is not None:
        r.workload = replace(r.workload, output_len=output_len)
    vals = values * len(r.repeats) if len(values) == 1 else values
    assert len(vals) == len(r.repeats), (metric, values)
    r.repeats = [RepeatResult({**x.summary, metric: v}) for x, v in zip(r.repeats, vals)]
    return r


# --- one recording, every field -----------------------------------------------------------------

def test_a_recording_writes_and_reads_every_field() -> None:
    full = Recording(metrics={"tpot_p50": (10.0, 10.1), "ttft_p50": (50.0, 51.0)}, engine_version="0.26.0",
                     env={"run_id": "r1"}, repeats=2, engine_options={"--max-num-seqs": "8", "--a": "1"},
                     gate_settings={"noise_k": 2.5}, telemetry={"sm_util": 0.9, "mem_gb": 40.0}, anchor=True)
    d = full.to_dict()
    assert d == {"engine_version": "0.26.0", "env": {"run_id": "r1"}, "repeats": 2,
                 "metrics": {"tpot_p50": [10.0, 10.1], "ttft_p50": [50.0, 51.0]},
                 "engine_options": {"--a": "1", "--max-num-seqs": "8"}, "gate_settings": {"noise_k": 2.5},
                 "telemetry": {"mem_gb": 40.0, "sm_util": 0.9}, "anchor": True}
    assert list(d["engine_options"]) == ["--a", "--max-num-seqs"] and list(d["telemetry"]) == ["mem_gb", "sm_util"]
    assert Recording.from_dict(d, "recording 1") == full


def test_a_bare_recording_writes_no_optional_key() -> None:
    bare = rec()
    assert bare.to_dict() == {"engine_version": "0.26.0", "env": {"date": "2026-12-01", "run_id": "r1"},
                              "repeats": 2, "metrics": {"tpot_p50": [10.0, 10.1]}}
    back = Recording.from_dict(bare.to_dict(), "")
    assert back == bare and back.engine_options is None and back.gate_settings is None and back.telemetry is None
    assert back.anchor is False
    assert Recording.from_dict({**bare.to_dict(), "anchor": "yes"}, "").anchor is False  # only true is true


@pytest.mark.parametrize("where, prefix", [("recording 2", "recording 2: "), ("", "")])
def test_an_empty_recording_is_refused_naming_where(where: str, prefix: str) -> None:
    with pytest.raises(ValueError) as exc:
        Recording.from_dict({"metrics": {}, "engine_version": "1"}, where)
    assert str(exc.value) == f"{prefix}'metrics' is empty; a baseline needs at least one metric's samples"
    with pytest.raises(ValueError) as exc:
        Recording.from_dict({"metrics": {"tpot_p50": [0.0]}, "engine_version": "1"}, where)
    assert str(exc.value) == f"{prefix}metric 'tpot_p50': sample 0.0 is not a finite number > 0"


@pytest.mark.parametrize("values, message", [
    ([], "m: samples must be a non-empty list of numbers, got []"),
    ("1.0", "m: samples must be a non-empty list of numbers, got '1.0'"),
    ([1.0, True], "m: sample True is not a number"),
    ([1.0, "2"], "m: sample '2' is not a number"),
    ([0], "m: sample 0 is not a finite number > 0"),
    ([-1.0], "m: sample -1.0 is not a finite number > 0"),
    ([float("inf")], "m: sample inf is not a finite number > 0"),
    ([1e-13], "m: sample 1e-13 is not a finite number > 0 in the range of a measurement (1e-12 to 1e+15)"),
    ([2e15], "m: sample 2000000000000000.0 is not a finite number > 0 in the range of a measurement (1e-12 to 1e+15)"),
])
def test_corrupt_samples_are_refused_word_for_word(values: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_samples(values, "m")
    assert str(exc.value) == message


def test_the_range_of_a_measurement_includes_its_ends() -> None:
    assert check_samples([SAMPLE_RANGE[0], SAMPLE_RANGE[1], 3], "m") == (SAMPLE_RANGE[0], SAMPLE_RANGE[1], 3.0)
    assert check_samples({"samples": [2.0]}, "m") == (2.0,)  # schema 1's form


# --- a recording from a result --------------------------------------------------------------------

def test_a_recording_from_a_result_keeps_the_gates_extra_metrics_rounded() -> None:
    r = measured("e2el_p90", 123.4567891)
    r.gate_settings = {"metrics": ["e2el_p90"], "gated": ["tpot_p50"]}
    got = Recording.from_result(r)
    assert got.metrics["e2el_p90"] == (123.457, 123.457, 123.457)  # six significant digits
    assert "e2el_p90" not in Recording.from_result(replace(r, gate_settings=None)).metrics
    assert got.gate_settings == {"metrics": ["e2el_p90"], "gated": ["tpot_p50"]}
    assert got.env["plugin_version"] == __version__
    assert got.env["metric_definition_version"] == METRIC_DEFINITION_VERSION
    assert got.repeats == 3 and got.engine_version == "0.1.0" and got.engine_options == {}


def test_a_zero_in_an_ungated_metric_is_left_out_and_in_a_gated_one_refused() -> None:
    r = measured("ttft_p99", 0.0)
    assert "ttft_p99" not in Recording.from_result(r).metrics  # ungated by default: not recordable, skipped
    r.gate_settings = {"gated": ["ttft_p99"]}
    with pytest.raises(BaselineError) as exc:
        Recording.from_result(r)
    assert str(exc.value) == (f"{r.entry_id}: the gated metric ttft_p99 has a value <= 0 (0.0): a corrupt measurement "
                              f"cannot become a baseline (the gate would skip ttft_p99); measure it again")


def test_a_value_outside_the_range_of_a_measurement_is_named() -> None:
    r = measured("ttft_p50", 5.0, 1e-300, 1e-200)
    with pytest.raises(BaselineError) as exc:
        Recording.from_result(r)
    assert str(exc.value) == (f"{r.entry_id}: ttft_p50 value 1e-300 is outside the range of a measurement "
                              f"(1e-12 to 1e+15) and cannot become a baseline")


def test_a_result_with_nothing_positive_is_refused() -> None:
    r = make_result()
    r.repeats = [RepeatResult(dict.fromkeys(x.summary, 0.0)) for x in r.repeats]
    r.gate_settings = {"gated": ["nothing"]}
    with pytest.raises(BaselineError) as exc:
        Recording.from_result(r)
    assert str(exc.value) == f"{r.entry_id}: no metric with positive values; nothing to record"


# --- which run made a recording -------------------------------------------------------------------

def test_run_of_is_the_run_id_else_the_date() -> None:
    assert run_of(rec("r7")) == "r7"
    assert run_of(rec(None, date="2026-11-30")) == "2026-11-30"
    assert run_of(Recording(metrics={"x": (1.0,)}, engine_version="1", env={})) == "?"


def test_same_run_by_id_else_by_everything() -> None:
    assert same_run(rec("r1"), rec("r1", tpot=20.0))  # one run id: the same run, whatever the numbers
    assert not same_run(rec("r1"), rec("r2"))
    assert not same_run(rec("r1"), rec(None))  # one side without an id: compared by content
    assert same_run(rec(None), rec(None))
    assert not same_run(rec(None), rec(None, tpot=11.0))
    assert not same_run(rec(None), rec(None, version="0.25.1"))
    assert not same_run(rec(None), rec(None, date="2026-12-02"))


# --- history and anchor -------------------------------------------------------------------------

def entry(*recs: Recording, kept_anchor: Recording | None = None) -> BaselineEntry:
    return BaselineEntry("t::w", make_result().identity, recs, "m.py::t", kept_anchor)


def test_adding_keeps_the_last_n_and_the_anchor_beside_them() -> None:
    a, b, c = rec("a"), rec("b"), rec("c")
    e = add_recording(entry(a, b), c, 2, "m.py::t_new")
    assert e.recordings == (b, c) and e.kept_anchor == a and e.anchor == a
    assert e.nodeid == "m.py::t_new" and e.entry_id == "t::w" and e.identity == entry().identity
    e2 = add_recording(e, rec("d"), 2, "m.py::t")
    assert e2.recordings == (c, rec("d")) and e2.kept_anchor == a  # a kept anchor stays
    assert add_recording(entry(a), b, 2, "n").kept_anchor is None  # nothing fell out of the history


def test_a_pinned_anchor_inside_the_history_moves_beside_it_when_it_falls_out() -> None:
    a, b, c = rec("a"), rec("b", anchor=True), rec("c")
    e = add_recording(entry(a, b), c, 3, "n")
    assert e.kept_anchor is None and e.anchor == b
    e = add_recording(e, rec("d"), 3, "n")
    assert e.recordings == (b, c, rec("d")) and e.kept_anchor is None and e.anchor == b
    e = add_recording(e, rec("e"), 3, "n")
    assert e.recordings == (c, rec("d"), rec("e")) and e.kept_anchor == b and e.anchor == b


def test_a_new_pin_replaces_every_earlier_anchor() -> None:
    a, b = rec("a", anchor=True), rec("b")
    pinned = rec("c", anchor=True)
    e = add_recording(entry(a, b, kept_anchor=rec("old", anchor=True)), pinned, 2, "m.py::t2")
    assert e.recordings == (rec("b"), pinned) and e.kept_anchor is None and e.anchor == pinned
    assert e.nodeid == "m.py::t2" and e.entry_id == "t::w"
    assert [r.anchor for r in add_recording(entry(a, b), pinned, 5, "n").recordings] == [False, False, True]


def test_update_pins_writes_nodeid_and_says_which_run_it_already_has(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    r = make_result()
    r.env = {**r.env, "run_id": "run-1"}
    store.update(FP, MOD, [r])
    again = store.update(FP, MOD, [r])
    assert again.already == {r.entry_id: "run-1"} and again.written == []
    # The node id as run from another directory: the same test, so the same entry, which takes the new node id.
    moved = f"sub/{r.nodeid}"
    r2 = replace(r, env={**r.env, "run_id": "run-2"}, nodeid=moved)
    store.update(FP, MOD, [r2], anchor=True)
    _, entries = read_baseline_file(store.path(FP, MOD))
    e = entries[r.entry_id]
    assert e.nodeid == moved and [x.anchor for x in e.recordings] == [False, True]
    assert [run_of(x) for x in e.recordings] == ["run-1", "run-2"]
    first = BaselineStore(tmp_path / "other")
    first.update(FP, MOD, [r], anchor=True)
    assert read_baseline_file(first.path(FP, MOD))[1][r.entry_id].recordings[0].anchor is True


# --- an entry from a file ------------------------------------------------------------------------

def test_an_entry_with_a_kept_anchor_reads_back_whole() -> None:
    e = entry(rec("b"), rec("c"), kept_anchor=rec("a", anchor=True))
    d = e.to_dict()
    assert d["anchor"] == rec("a", anchor=True).to_dict() and d["nodeid"] == "m.py::t"
    back = BaselineEntry.from_dict("t::w", d)
    assert back == e and back.kept_anchor == rec("a", anchor=True)


def test_an_entrys_broken_recording_or_anchor_is_named() -> None:
    d = entry(rec("a"), rec("b"), kept_anchor=rec("x")).to_dict()
    bad = {**d, "recordings": [d["recordings"][0], {**d["recordings"][1], "metrics": {"tpot_p50": [-1.0]}}]}
    with pytest.raises(ValueError, match=r"^recording 2: metric 'tpot_p50': sample -1.0 is not a finite number > 0$"):
        BaselineEntry.from_dict("t::w", bad)
    with pytest.raises(ValueError, match=r"^anchor: 'metrics' is empty"):
        BaselineEntry.from_dict("t::w", {**d, "anchor": {**d["anchor"], "metrics": {}}})
    with pytest.raises(ValueError, match="'recordings' must be a non-empty list"):
        BaselineEntry.from_dict("t::w", {**d, "recordings": []})
    with pytest.raises(ValueError, match="'recordings' must be a non-empty list"):
        BaselineEntry.from_dict("t::w", {**d, "recordings": {"0": d["recordings"][0]}})


def test_a_schema_1_entry_finds_its_test_in_the_node_id_or_the_entry_id() -> None:
    v1 = {k: v for k, v in V1_ENTRY.items() if k != "nodeid"}
    without = BaselineEntry.from_dict("TestX::test_y[tp2]::in128-out32", v1, schema=1)
    assert without.nodeid == "" and without.identity.as_dict()["test"] == "TestX::test_y[tp2]"
    with_node = BaselineEntry.from_dict("other::w", {**v1, "nodeid": "m.py::TestX::test_z"}, schema=1)
    assert with_node.nodeid == "m.py::TestX::test_z" and with_node.identity.as_dict()["test"] == "TestX::test_z"
    with pytest.raises(ValueError, match=r"^metric 'tpot_p50': sample"):
        BaselineEntry.from_dict("t::w", {**v1, "metrics": {"tpot_p50": [0.0]}}, schema=1)
    assert without.recordings[0].engine_version == "0.0.9"


def test_an_entry_from_a_result_is_the_results() -> None:
    r = measured("e2el_p90", 100.0)
    e = BaselineEntry.from_result(r, ["e2el_p90"])
    assert (e.entry_id, e.identity, e.nodeid) == (r.entry_id, r.identity, r.nodeid)
    assert e.recordings == (Recording.from_result(r, ["e2el_p90"]),) and "e2el_p90" in e.recordings[0].metrics


def test_update_records_the_extra_metrics_it_is_given(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    r = measured("e2el_p90", 100.0)
    store.update(FP, MOD, [r], metrics=["e2el_p90"])
    assert "e2el_p90" in read_baseline_file(store.path(FP, MOD))[1][r.entry_id].recordings[0].metrics


# --- TPOT of one-token outputs ---------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["tpot_p50", "itl_p50"])
def test_a_one_token_workloads_zero_tpot_is_left_out_even_when_gated(metric: str) -> None:
    r = measured(metric, 0.0, output_len=1)
    r.gate_settings = {"gated": [metric]}
    assert metric not in Recording.from_result(r, [metric]).metrics
    r.workload = replace(r.workload, output_len=2)  # two tokens have a gap: a zero is corrupt
    with pytest.raises(BaselineError, match=f"the gated metric {metric} has a value <= 0"):
        Recording.from_result(r, [metric])


def test_a_one_token_workloads_zero_ttft_or_partly_zero_tpot_is_corrupt() -> None:
    r = measured("ttft_p50", 0.0, output_len=1)
    with pytest.raises(BaselineError, match="the gated metric ttft_p50 has a value <= 0"):
        Recording.from_result(r)  # TTFT is defined for one token
    r = measured("tpot_p50", 1.0, 0.0, 0.0, output_len=1)
    with pytest.raises(BaselineError, match="the gated metric tpot_p50 has a value <= 0"):
        Recording.from_result(r)  # zero in some repeats only: not the one-token case


# --- the store's files ------------------------------------------------------------------------------

def test_a_first_recording_keeps_its_node_id(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    r = make_result()
    store.update(FP, MOD, [r])
    first = read_baseline_file(store.path(FP, MOD))[1][r.entry_id]
    assert first.nodeid == r.nodeid and first.recordings[0].anchor is False  # pinned only when asked
    other = replace(r, model="other-model", nodeid=f"sub/{r.nodeid}")  # the same entry, another identity
    assert store.update(FP, MOD, [other]).replaced
    assert read_baseline_file(store.path(FP, MOD))[1][r.entry_id].nodeid == f"sub/{r.nodeid}"


def test_a_recording_keeps_the_runs_gpu_telemetry() -> None:
    r = make_result()
    gpus = {"gpus": {"0": {"util_pct": {"mean": 80.0}, "power_w": {"mean": 300.0}}}}
    r.repeats = [RepeatResult(x.summary, telemetry=gpus) for x in r.repeats]
    t = Recording.from_result(r).telemetry
    assert t is not None and t["util_pct"] == 80.0 and t["power_w"] == 300.0
    assert Recording.from_result(make_result()).telemetry is None


def test_small_positive_values_are_recorded_and_the_range_ends_are_measurements() -> None:
    r = measured("tpot_p50", 0.5, SAMPLE_RANGE[0], SAMPLE_RANGE[1])
    assert Recording.from_result(r).metrics["tpot_p50"] == (0.5, SAMPLE_RANGE[0], SAMPLE_RANGE[1])


def test_telemetry_keeps_every_finite_number() -> None:
    r = Recording.from_dict({"metrics": {"x": [1.0]}, "engine_version": "1",
                             "telemetry": {"a": "n/a", "b": float("nan"), "c": 2, "d": "3.5"}}, "")
    assert r.telemetry == {"c": 2.0, "d": 3.5}


def test_fingerprints_are_the_folders_named_like_one(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for fp in ("h100-80gb-x1", "a100-40gb-x2"):
        store.update(fp, MOD, [make_result()])
    (tmp_path / "sim-v100-16gb-x4").write_text("a file, not a folder")
    (tmp_path / "Not A Fingerprint").mkdir()
    assert store.fingerprints() == ["a100-40gb-x2", "h100-80gb-x1"]
    eid = make_result().entry_id
    assert store.fingerprints_with(MOD, eid) == ["a100-40gb-x2", "h100-80gb-x1"]
    assert store.fingerprints_with(MOD, eid, exclude="a100-40gb-x2") == ["h100-80gb-x1"]
    store.path("a100-40gb-x2", MOD).write_text("{broken")
    assert store.fingerprints_with(MOD, eid) == ["h100-80gb-x1"]  # a broken file is skipped, the rest still read


def test_iter_all_names_each_files_path(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(FP, MOD, [make_result()])
    store.update("h100-80gb-x1", MOD, [make_result()])
    store.path("h100-80gb-x1", MOD).write_text("{broken")
    files = {f.fingerprint: f for f in store.iter_all()}
    assert files[FP].path == store.path(FP, MOD) and files[FP].error is None
    assert files["h100-80gb-x1"].path == store.path("h100-80gb-x1", MOD) and files["h100-80gb-x1"].error


@pytest.mark.parametrize("module", ["", "/abs/test_x.py", "../up/test_x.py"])
def test_a_module_path_must_be_relative_and_inside(module: str) -> None:
    from pytest_mgpu.judge.baseline import check_module

    with pytest.raises(BaselineError):
        check_module(module)


def test_a_windows_module_path_is_written_with_slashes() -> None:
    from pytest_mgpu.judge.baseline import check_module

    assert check_module("perf_tests\\test_x.py") == "perf_tests/test_x.py"


def test_recordings_are_of_one_level_where_both_recorded_their_options() -> None:
    def r(opts: dict[str, str] | None, version: str = "1") -> Recording:
        return Recording(metrics={"x": (1.0,)}, engine_version=version, env={}, engine_options=opts)

    assert r({"a": "1"}).same_level(r(None)) and r(None).same_level(r({"a": "1"})) and r(None).same_level(r(None))
    assert r({"a": "1"}).same_level(r({"a": "1"}))
    assert not r({"a": "1"}).same_level(r({"a": "2"}))
    assert not r(None).same_level(r(None, version="2"))


def test_a_recording_without_a_repeat_count_reads_as_zero() -> None:
    assert Recording.from_dict({"metrics": {"x": [1.0]}, "engine_version": "1"}, "").repeats == 0


def test_an_entry_whose_latest_recording_lacks_a_metric_has_no_value_for_it() -> None:
    old = Recording(metrics={"x": (1.0,), "y": (2.0,)}, engine_version="1", env={"run_id": "a"})
    new = Recording(metrics={"x": (1.0,)}, engine_version="1", env={"run_id": "b"})
    assert entry(old, new).stats("y").value is None and entry(old, new).median("x") == 1.0


def test_the_anchor_is_described_and_its_trend_starts_there() -> None:
    a, b, c = rec("a"), rec("b"), rec("c")
    assert entry(a, b).describe_anchor() == "recording 1, the first"
    assert entry(a, b).since_anchor() == (a, b)
    pinned = rec("b", anchor=True)
    assert entry(a, pinned, c).describe_anchor() == "recording 2, pinned"
    assert entry(a, pinned, c).since_anchor() == (pinned, c)
    assert entry(b, c, kept_anchor=a).describe_anchor() == "older than the history, kept beside it"
    assert entry(b, c, kept_anchor=rec("a", anchor=True)).describe_anchor() == (
        "older than the history, kept beside it, pinned")
    assert entry(b, c, kept_anchor=a).since_anchor() == (a, b, c)
