"""``merge_shards`` and its parts, exactly: the merged document key by key, the A/B blocks, and each
refusal's whole message (what a user reads to fix the call). The plugin-level tests in test_shard.py
show that a merged sharded run equals the unsharded one; these pin the rules one by one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_mgpu.errors import CliError
from pytest_mgpu.judge.results import RESULTS_SCHEMA_VERSION
from pytest_mgpu.judge.verdicts import Comparison, MetricComparison, Verdict
from pytest_mgpu.report.merge import (
    Shard,
    ab_comparison,
    check_coverage,
    comparison_to_dict,
    merge_shards,
    settings_warnings,
)


def comparison(eid: str, verdict: Verdict = Verdict.PASS) -> Comparison:
    """A gate comparison of one metric."""
    m = MetricComparison("tpot_p50", 10.0, 10.5, 5.0, 3.0, 5.0, verdict, True, 0.05, 0.03, 3, 3)
    return Comparison(eid, verdict, (m,), "note", "0.26.0", "0.26.0", "vllm")


def shard(name: str, doc: dict[str, Any]) -> Shard:
    """A loaded shard file (its comparisons rebuilt from the document)."""
    from pytest_mgpu.report.merge import comparison_from_dict

    return Shard(Path("/runs") / name, doc, [comparison_from_dict(c) for c in doc.get("comparisons", [])])


def doc(env: dict[str, Any], results: list[dict[str, Any]], comps: list[Comparison] = (), **top: Any) -> dict[str, Any]:  # type: ignore[assignment]
    """A --mgpu-json document."""
    return {"schema_version": 2, "fingerprint": "h100-80gb-x1", "env": env, "results": results,
            "comparisons": [comparison_to_dict(c) for c in comps], **top}


def result(module: str, eid: str, **kw: Any) -> dict[str, Any]:
    """One result of a --mgpu-json document."""
    return {"module": module, "nodeid": f"{module}::{eid.split('::')[0]}", "entry_id": eid, **kw}


# --- the merged document ------------------------------------------------------------------------

def test_the_merged_document_is_one_run_of_all_shards() -> None:
    one = doc({"commit": "c1", "date": "d1", "shard": "1/2", "python": "3.11"},
              [result("b.py", "t_b::w"), result("a.py", "t_z::w")], [comparison("t_b::w"), comparison("t_z::w")])
    two = doc({"commit": "c2", "date": "d2", "shard": "2/2", "python": "3.12"},
              [result("a.py", "t_a::w")], [comparison("t_a::w", Verdict.FAIL)], schema_version=1)
    merged = merge_shards([shard("one.json", one), shard("two.json", two)])
    assert merged == {
        "schema_version": 2,  # the first shard's
        "fingerprint": "h100-80gb-x1",
        "env": {"commit": "c1", "date": "d1", "python": "3.11",  # the first shard's, without its "shard"
                "shards": [{"file": "one.json", "shard": "1/2", "commit": "c1", "date": "d1"},
                           {"file": "two.json", "shard": "2/2", "commit": "c2", "date": "d2"}]},
        # by module, then node id, then entry id
        "results": [result("a.py", "t_a::w"), result("a.py", "t_z::w"), result("b.py", "t_b::w")],
        # by entry id
        "comparisons": [comparison_to_dict(comparison("t_a::w", Verdict.FAIL)),
                        comparison_to_dict(comparison("t_b::w")), comparison_to_dict(comparison("t_z::w"))],
    }
    assert "ab" not in merged


def test_an_unsharded_file_merges_alone_and_a_missing_schema_is_this_versions() -> None:
    d = doc({"commit": "c"}, [result("a.py", "t::w")], [comparison("t::w")])
    del d["schema_version"]
    merged = merge_shards([shard("a.json", d)])
    assert merged["schema_version"] == RESULTS_SCHEMA_VERSION
    assert merged["env"] == {"commit": "c", "shards": [{"file": "a.json", "shard": None, "commit": "c", "date": None}]}


def test_a_shard_without_env_merges() -> None:
    d = doc({}, [result("a.py", "t::w")])
    del d["env"]
    assert merge_shards([shard("a.json", d)])["env"] == {
        "shards": [{"file": "a.json", "shard": None, "commit": None, "date": None}]}


def test_one_entry_id_in_two_modules_is_no_overlap() -> None:
    """Results are keyed by (module, entry id): two files may hold tests of the same name."""
    one = doc({"shard": "1/2"}, [result("a.py", "t::w")])
    two = doc({"shard": "2/2"}, [result("b.py", "t::w")])
    assert len(merge_shards([shard("1.json", one), shard("2.json", two)])["results"]) == 2
    same = doc({"shard": "2/2"}, [result("a.py", "t::w")])
    with pytest.raises(CliError) as exc:
        merge_shards([shard("1.json", one), shard("2.json", same)])
    assert str(exc.value) == "t::w is in two files (/runs/1.json, /runs/2.json): shards must not overlap"


# --- A/B documents --------------------------------------------------------------------------------

AB_A = {"verdict": "FAIL", "rounds": 3, "note": "tpot_p50 +9.8%", "old_version": "0.25.1", "new_version": "0.26.0"}


def test_ab_blocks_are_summed_and_ab_results_count_as_comparisons() -> None:
    one = doc({"shard": "1/2"}, [result("a.py", "t1::w", engine="vllm", engine_version="0.26.0", ab=AB_A)],
              ab={"old": "0.25.1", "rule": "r", "verdicts": {"FAIL": 1, "PASS": 2}, "summary": "s1", "gpu_minutes": 1.5})
    two = doc({"shard": "2/2"}, [result("a.py", "t2::w", engine="vllm", engine_version="0.26.0",
                                        ab={"verdict": "PASS", "rounds": 2})],
              ab={"old": "other", "verdicts": {"PASS": 1}, "summary": "s2", "gpu_minutes": None})
    merged = merge_shards([shard("1.json", one), shard("2.json", two)])
    assert merged["ab"] == {"old": "0.25.1", "rule": "r", "verdicts": {"FAIL": 1, "PASS": 3}, "summary": None,
                            "gpu_minutes": 1.5}
    assert merged["comparisons"] == [comparison_to_dict(c) for c in (ab_comparison(one["results"][0]),
                                                                      ab_comparison(two["results"][0]))]
    assert [c["verdict"] for c in merged["comparisons"]] == ["FAIL", "PASS"]


def test_a_result_judged_by_the_gate_is_not_counted_again_from_its_ab_block() -> None:
    one = doc({}, [result("a.py", "t1::w", ab=AB_A)], [comparison("t1::w")])
    (c,) = merge_shards([shard("1.json", one)])["comparisons"]
    assert c["verdict"] == "PASS" and c["note"] == "note"


def test_gpu_minutes_add_up_over_the_shards() -> None:
    blocks = [{"verdicts": {}, "gpu_minutes": 1.25}, {"verdicts": {}, "gpu_minutes": 2.5}, {"verdicts": {}}]
    shards = [shard(f"{i}.json", doc({"shard": f"{i}/3"}, [], ab=b)) for i, b in enumerate(blocks, 1)]
    assert merge_shards(shards)["ab"]["gpu_minutes"] == 3.75
    assert merge_shards(shards)["ab"]["verdicts"] == {}


def test_ab_comparison_carries_every_field() -> None:
    c = ab_comparison(result("a.py", "t::w", engine="vllm", engine_version="0.26.1", ab=AB_A))
    assert c == Comparison("t::w", Verdict.FAIL, (), "A/B, 3 rounds: tpot_p50 +9.8%", "0.25.1", "0.26.0", "vllm")


def test_ab_comparison_falls_back_where_the_block_is_short() -> None:
    bare = ab_comparison({"entry_id": "t::w", "engine_version": "0.26.1", "ab": {"verdict": "PASS"}})
    assert bare == Comparison("t::w", Verdict.PASS, (), "A/B, ? rounds", "?", "0.26.1", None)
    nothing = ab_comparison({"entry_id": "t::w", "ab": {"verdict": "WARN", "note": ""}})
    assert nothing == Comparison("t::w", Verdict.WARN, (), "A/B, ? rounds", "?", "?", None)


@pytest.mark.parametrize("r", [{"entry_id": "t"}, {"entry_id": "t", "ab": None}, {"entry_id": "t", "ab": {"rounds": 3}},
                               {"entry_id": "t", "ab": "FAIL"}])
def test_a_result_without_an_ab_verdict_is_no_comparison(r: dict[str, Any]) -> None:
    assert ab_comparison(r) is None


def test_an_unknown_ab_verdict_is_named() -> None:
    with pytest.raises(CliError) as exc:
        ab_comparison({"entry_id": "t::w", "ab": {"verdict": "MAYBE"}})
    assert str(exc.value) == "t::w: unknown A/B verdict 'MAYBE'"


# --- refusals, word for word ------------------------------------------------------------------------

def refusal(*shards: Shard, allow_missing: bool = False) -> str:
    with pytest.raises(CliError) as exc:
        merge_shards(shards, allow_missing=allow_missing)
    return str(exc.value)


def test_refusals_say_what_is_wrong_and_what_to_do() -> None:
    assert refusal() == "no files to merge"
    a = shard("a.json", doc({"shard": "1/2"}, []))
    other = shard("b.json", {**doc({"shard": "2/2"}, []), "fingerprint": "a100-40gb-x1"})
    assert refusal(a, other) == ("the files come from different hardware (a.json: h100-80gb-x1, b.json: a100-40gb-x1); "
                                 "merge shards of one run")
    assert refusal(a, shard("c.json", doc({}, []))) == (
        "some files are shards (--mgpu-shard) and some are not; merge the shards of one run")
    assert refusal(a, shard("d.json", doc({"shard": "2/3"}, []))) == "the files are shards of different splits (1/2, 2/3)"
    assert refusal(a, shard("e.json", doc({"shard": "1/2"}, []))) == "shard 1/2 given twice (/runs/a.json, /runs/e.json)"
    four = [shard(f"{i}.json", doc({"shard": f"{i}/4"}, [])) for i in (2, 4)]
    assert refusal(*four) == ("shard(s) 1/4, 3/4 missing: their items would be absent from the report; pass every "
                              "shard's file (or --allow-missing)")
    assert merge_shards(four, allow_missing=True)["results"] == []


def share(name: str, spec: str, collected: list[str], items: list[str]) -> Shard:
    """A shard file that lists the suite it collected and the items it ran."""
    return shard(name, doc({"shard": spec}, [], shard={"collected": collected, "items": items}))


def test_coverage_refusals_word_for_word() -> None:
    suite = ["m.py::a", "m.py::b", "m.py::c"]
    with pytest.raises(CliError) as exc:
        check_coverage([share("1.json", "1/2", suite, ["m.py::a"]), share("2.json", "2/2", suite, [])])
    assert str(exc.value) == ("m.py::b and 1 more ran in no shard: the report would lack them; pass every shard's "
                              "file, or --allow-missing")
    with pytest.raises(CliError) as exc:
        check_coverage([share("1.json", "1/2", suite, ["m.py::a", "m.py::b"]), share("2.json", "2/2", suite, [])])
    assert str(exc.value) == ("m.py::c ran in no shard: the report would lack it; pass every shard's file, or "
                              "--allow-missing")
    with pytest.raises(CliError) as exc:
        check_coverage([share("1.json", "1/2", suite, ["m.py::a"]), share("2.json", "2/2", suite, ["m.py::a"])])
    assert str(exc.value) == "m.py::a ran in two shards (/runs/1.json, /runs/2.json): the shards overlap"
    with pytest.raises(CliError) as exc:
        check_coverage([share("1.json", "1/2", suite, ["m.py::a"]), share("2.json", "2/2", suite[:2], [])])
    assert str(exc.value) == ("/runs/1.json and /runs/2.json collected different suites (e.g. m.py::c); every shard "
                              "must run the same tests with the same options")
    with pytest.raises(CliError) as exc:
        check_coverage([shard("1.json", doc({}, [], shard={"collected": "m.py::a", "items": []}))])
    assert str(exc.value) == ("/runs/1.json: 'shard' is malformed (want lists of node ids 'collected' and 'items'); "
                              "regenerate the file with --mgpu-json")


def test_allow_missing_reaches_the_coverage_check() -> None:
    suite = ["m.py::a", "m.py::b"]
    shards = [share("1.json", "1/2", suite, ["m.py::a"]), share("2.json", "2/2", suite, [])]
    assert "ran in no shard" in refusal(*shards)
    assert merge_shards(shards, allow_missing=True)["results"] == []
    check_coverage(shards, allow_missing=True)


def test_coverage_is_not_checked_when_a_file_predates_it() -> None:
    suite = ["m.py::a", "m.py::b"]
    check_coverage([share("1.json", "1/2", suite, ["m.py::a"]), shard("2.json", doc({"shard": "2/2"}, []))])


def test_settings_warnings_name_each_setting_and_each_file() -> None:
    def s(name: str, settings: dict[str, Any]) -> Shard:
        return shard(name, doc({}, [], settings=settings))

    gate_a, gate_b = {"noise_k": 2.5}, {"noise_k": 1.0}
    lines = settings_warnings([s("1.json", {"gate": gate_a, "engine_options": {"x": "1"}, "repeats": 3}),
                               s("2.json", {"gate": gate_b, "engine_options": {"x": "1"}, "repeats": 5}),
                               shard("3.json", doc({}, []))])
    assert lines == [
        'warning: the shards ran with different gate settings (tolerances, gated metrics, noise), so the merged '
        'verdicts were not judged alike: 1.json: {"noise_k": 2.5}; 2.json: {"noise_k": 1.0}',
        "warning: the shards ran with different repeats, so the merged verdicts were not judged alike: "
        "1.json: 3; 2.json: 5",
    ]
    assert settings_warnings([s("1.json", {"gate": gate_a}), s("2.json", {"gate": dict(gate_a)})]) == []
    assert settings_warnings([s("1.json", {"engine_options": {"x": "1"}}), s("2.json", {})]) == [
        'warning: the shards ran with different engine options, so the merged verdicts were not judged alike: '
        '1.json: {"x": "1"}; 2.json: null']


def test_a_loaded_file_round_trips_through_json(tmp_path: Path) -> None:
    from pytest_mgpu.report.merge import load_shard

    d = doc({"shard": "1/1"}, [result("a.py", "t::w")], [comparison("t::w", Verdict.WARN)])
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    s = load_shard(p)
    assert s.doc == d and s.comparisons == [comparison("t::w", Verdict.WARN)] and s.shard == (1, 1)


# --- details of the document --------------------------------------------------------------------------

def test_results_sort_by_node_id_before_entry_id() -> None:
    def r(nodeid: str, eid: str) -> dict[str, Any]:
        return {"module": "m.py", "nodeid": nodeid, "entry_id": eid}

    d = doc({}, [r("m.py::t_b", "a::w"), r("m.py::t_a", "z::w"), r("m.py::t_a", "y::w")])
    got = [x["entry_id"] for x in merge_shards([shard("a.json", d)])["results"]]
    assert got == ["y::w", "z::w", "a::w"]


def test_the_schema_version_is_the_first_files() -> None:
    old = doc({"shard": "1/2"}, [], schema_version=1)
    assert merge_shards([shard("1.json", old), shard("2.json", doc({"shard": "2/2"}, []))])["schema_version"] == 1


def test_a_number_written_as_inf_reads_back_as_a_float_and_text_stays_text() -> None:
    from pytest_mgpu.report.merge import comparison_from_dict

    d = comparison_to_dict(comparison("t::w"))
    d["metrics"][0].update(delta_pct="inf", noise_pct="-inf", base="nan")
    d["note"] = "inf"
    c = comparison_from_dict(d)
    m = c.metrics[0]
    assert m.delta_pct == float("inf") and m.noise_pct == float("-inf") and m.base != m.base  # nan
    assert c.note == "inf" and m.metric == "tpot_p50" and m.now == 10.5


def test_settings_in_another_key_order_are_the_same_settings() -> None:
    def s(name: str, gate: dict[str, Any]) -> Shard:
        return shard(name, doc({}, [], settings={"gate": gate}))

    assert settings_warnings([s("1.json", {"a": 1, "b": 2}), s("2.json", {"b": 2, "a": 1})]) == []


def test_a_document_without_comparisons_has_none() -> None:
    from pytest_mgpu.report.merge import merged_comparisons

    assert merged_comparisons({"results": []}) == []
    assert merged_comparisons({"comparisons": [comparison_to_dict(comparison("t::w"))]}) == [comparison("t::w")]


@pytest.mark.parametrize("content, message", [
    ("[]", "not a --mgpu-json results file (no 'results' list)"),
    ('{"comparisons": []}', "not a --mgpu-json results file (no 'results' list)"),
    ('{"results": [], "comparisons": [], "env": []}', "'env' is list, not an object; regenerate the file with --mgpu-json"),
    ('{"results": [[1]], "comparisons": []}', "result #1 is malformed ('[1]': not an object with an 'entry_id')"),
    ('{"results": [{"entry_id": 7}], "comparisons": []}', "result #1 is malformed"),
])
def test_a_file_that_is_no_results_file_is_named(tmp_path: Path, content: str, message: str) -> None:
    from pytest_mgpu.report.merge import load_shard

    p = tmp_path / "s.json"
    p.write_text(content)
    with pytest.raises(CliError) as exc:
        load_shard(p)
    assert str(exc.value).startswith(f"{p}: {message}")


def test_merging_refuses_missing_shards_by_default() -> None:
    two = [shard("2.json", doc({"shard": "2/2"}, []))]
    with pytest.raises(CliError, match=r"shard\(s\) 1/2 missing"):
        merge_shards(two)


def test_a_comparison_without_metrics_reads_as_none() -> None:
    from pytest_mgpu.report.merge import comparison_from_dict

    assert comparison_from_dict({"entry_id": "t::w", "verdict": "NEW"}) == Comparison("t::w", Verdict.NEW)
