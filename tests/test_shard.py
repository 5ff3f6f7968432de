"""``--mgpu-shard I/N`` and ``pytest-mgpu merge``: stable, disjoint, engine-whole shards that merge into
the report of one unsharded run (on the sim)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.cli import main as cli
from pytest_mgpu.judge.verdicts import Comparison, MetricComparison, Verdict
from pytest_mgpu.report.merge import comparison_from_dict, comparison_to_dict, load_shard, merge_shards
from pytest_mgpu.run.options import parse_shard
from pytest_mgpu.run.shard import assign

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "1"]

#: Three engine keys (tp1, tp2, tp1-pp2) shared by two test functions, plus two plain tests.
SUITE = """
import math, os, pytest

pytestmark = pytest.mark.model("llama-2-7b")

def _log(engine):
    with open(os.environ["START_LOG"], "a") as fh:
        fh.write(f"{engine.layout.id} {engine.pid}\\n")

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
@pytest.mark.layout(tp=1, pp=2)
def test_batch(mgpu_bench, mgpu_engine):
    _log(mgpu_engine)
    mgpu_bench.run(input_len=64, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)

@pytest.mark.layout(tp=1)
@pytest.mark.layout(tp=2)
@pytest.mark.layout(tp=1, pp=2)
def test_poisson(mgpu_bench, mgpu_engine):
    _log(mgpu_engine)
    mgpu_bench.run(input_len=64, output_len=8, num_requests=16, request_rate=64.0, warmup_requests=1)

def test_plain_a():
    pass

def test_plain_b():
    pass
"""


def test_parse_shard() -> None:
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1/1 ") == (1, 1)
    for bad in ("0/2", "3/2", "1/0", "a/b", "a/2", "2", "1/2/3", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)


def test_bad_shard_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    r = pytester.runpytest("--mgpu-shard", "0/2", "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--mgpu-shard*out of range: shards are numbered 1..N*"])


units_st = st.dictionaries(st.text("abcdef", min_size=1, max_size=6), st.floats(0, 1000), min_size=0, max_size=30)


@given(units_st, st.integers(1, 6), st.randoms(use_true_random=False))
def test_assignment_is_a_stable_balanced_partition(units: dict[str, float], n: int, rnd) -> None:
    items = list(units.items())
    a = assign(items, n)
    rnd.shuffle(items)
    assert assign(items, n) == a  # order of collection does not matter
    assert set(a) == set(units) and all(1 <= s <= n for s in a.values())
    loads = [sum(c for u, c in units.items() if a[u] == k) for k in range(1, n + 1)]
    if units:
        assert max(loads) <= sum(units.values()) / n + max(units.values()) + 1e-6


def _run_shards(pytester: pytest.Pytester, n: int, extra: list[str]) -> tuple[list[Path], list[list[str]]]:
    files, starts = [], []
    for i in range(1, n + 1):
        log = pytester.path / f"starts-{i}.txt"
        log.write_text("")
        out = pytester.path / f"shard-{i}.json"
        pytester._monkeypatch.setenv("START_LOG", str(log))
        r = pytester.runpytest(*SIM, *extra, "--mgpu-shard", f"{i}/{n}", "--mgpu-json", str(out))
        assert r.ret in (0, 5), r.stdout.str()
        r.stdout.fnmatch_lines([f"mgpu shard {i}/{n}: * of 8 items, * engine group(s), estimated *s of *s"])
        files.append(out)
        starts.append(log.read_text().splitlines())  # "<layout> <engine pid>" per test
    return files, starts


def test_shards_are_disjoint_cover_everything_and_start_each_engine_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    collected = []
    for i in (1, 2, 3):
        r = pytester.runpytest(*SIM, "--mgpu-shard", f"{i}/3", "--collect-only", "-q")
        collected.append({line for line in r.stdout.lines if "::" in line})
    assert not (collected[0] & collected[1]) and not (collected[0] & collected[2]) and not (collected[1] & collected[2])
    assert len(collected[0] | collected[1] | collected[2]) == 8
    for items in collected:  # an engine key never spans shards: both tests of a layout go together
        layouts = {re.search(r"\[(.*)\]", x).group(1) for x in items if "[" in x}  # type: ignore[union-attr]
        for lay in layouts:
            assert {f"test_suite.py::test_batch[{lay}]", f"test_suite.py::test_poisson[{lay}]"} <= items
    # The same split twice (another runner) gives the same slices.
    again = pytester.runpytest(*SIM, "--mgpu-shard", "2/3", "--collect-only", "-q")
    assert {line for line in again.stdout.lines if "::" in line} == collected[1]


def test_baselines_do_not_move_the_split(pytester: pytest.Pytester) -> None:
    """Issue 17.4: the split came from the baselines' costs, so shards run one after the other with
    --mgpu-update-baselines (or on runners whose baselines differ) skipped some items and ran others twice."""
    pytester.makepyfile(test_suite=SUITE)
    pytester._monkeypatch.setenv("START_LOG", str(pytester.path / "starts.txt"))

    def split() -> list[set[str]]:
        return [{line for line in pytester.runpytest(*SIM, "--mgpu-shard", f"{i}/2", "--collect-only", "-q").stdout.lines
                 if "::" in line} for i in (1, 2)]

    before = split()
    pytester.runpytest(*SIM, "--mgpu-update-baselines").assert_outcomes(passed=8)
    # Make tp1-pp2's recorded request rate 1000x slower: a cost estimated from baselines would move it.
    path = next((pytester.path / "baselines").rglob("*.json"))
    doc = json.loads(path.read_text())
    for eid, e in doc["entries"].items():
        if "tp1-pp2" in eid:
            for rec in e["recordings"]:
                rec["metrics"]["request_throughput"] = [v / 1000 for v in rec["metrics"]["request_throughput"]]
    path.write_text(json.dumps(doc))
    assert split() == before
    assert len(before[0] | before[1]) == 8 and not before[0] & before[1]


def test_sharded_run_merged_matches_the_unsharded_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester._monkeypatch.setenv("START_LOG", str(pytester.path / "record.txt"))
    pytester.runpytest(*SIM, "--mgpu-update-baselines").assert_outcomes(passed=8)
    # The default tolerances: the sim is timed by its modelled clock, and at noise=0 its numbers repeat
    # exactly (benchmarks/sim_noise.py --clock model: sigma 0.0000), so every verdict is PASS.
    gate: list[str] = []
    whole_log = pytester.path / "starts-whole.txt"
    pytester._monkeypatch.setenv("START_LOG", str(whole_log))
    whole_json = pytester.path / "whole.json"
    r = pytester.runpytest(*SIM, *gate, "--mgpu-json", str(whole_json), "--mgpu-report-md", str(pytester.path / "whole.md"))
    r.assert_outcomes(passed=8)
    files, starts = _run_shards(pytester, 2, gate)

    merged_json, merged_md = pytester.path / "merged.json", pytester.path / "merged.md"
    assert cli(["merge", *map(str, files), "--json", str(merged_json), "--markdown", str(merged_md)]) == 0
    whole, merged = json.loads(whole_json.read_text()), json.loads(merged_json.read_text())

    # Every engine started once in all: each layout has one engine (pid) over all shards, as in the whole run.
    engines = {tuple(line.split()) for s in starts for line in s}
    layouts = [lay for lay, _ in engines]
    assert sorted(layouts) == sorted({line.split()[0] for line in whole_log.read_text().splitlines()})
    assert len(layouts) == len(set(layouts)) == 3
    assert merged["fingerprint"] == whole["fingerprint"]
    assert [s["shard"] for s in merged["env"]["shards"]] == ["1/2", "2/2"]

    def results(doc: dict) -> list[tuple]:
        return sorted((r["module"], r["entry_id"], r["engine"], json.dumps(r["layout"]), json.dumps(r["workload"]),
                       r["valid"]) for r in doc["results"])

    def verdicts(doc: dict) -> list[tuple]:
        return sorted((c["entry_id"], c["verdict"], tuple((m["metric"], m["verdict"], m["gated"]) for m in c["metrics"]))
                      for c in doc["comparisons"])

    assert results(merged) == results(whole) and len(merged["results"]) == 6
    assert verdicts(merged) == verdicts(whole)
    assert {c["verdict"] for c in merged["comparisons"]} == {"PASS"}

    def md_rows(text: str) -> list[str]:  # the report without its numbers, which differ run to run
        rows = [re.sub(r"\|[^|]*\d[^|]*(?=\|)", "| # ", line) for line in text.splitlines() if line.startswith("| `")]
        return sorted(rows)

    assert md_rows(merged_md.read_text()) == md_rows((pytester.path / "whole.md").read_text())
    assert merged_md.read_text().count("**6 passed**") == (pytester.path / "whole.md").read_text().count("**6 passed**") == 1


def _comparison(eid: str, verdict: Verdict = Verdict.PASS) -> Comparison:
    m = MetricComparison("tpot_p50", 10.0, 10.5, 5.0, 3.0, 5.0, verdict, True, 0.05, 0.03, 3, 3)
    return Comparison(eid, verdict, (m,), "note", "0.26.0", "0.26.0", "vllm")


def test_comparisons_round_trip_through_json() -> None:
    c = _comparison("t[tp1-pp1]::w", Verdict.FAIL)
    assert comparison_from_dict(json.loads(json.dumps(comparison_to_dict(c)))) == c


def _doc(shard: str | None, eids: list[str], fingerprint: str = "fp", verdict: Verdict = Verdict.PASS) -> dict:
    env = {"commit": "abc", **({"shard": shard} if shard else {})}
    return {
        "schema_version": 1, "fingerprint": fingerprint, "env": env,
        "results": [{"module": "m.py", "entry_id": e, "nodeid": f"m.py::{e}"} for e in eids],
        "comparisons": [comparison_to_dict(_comparison(e, verdict)) for e in eids],
    }


def _write(tmp_path: Path, name: str, doc: dict) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


@pytest.mark.parametrize("docs, message", [
    ([_doc("1/2", ["a"]), _doc("2/2", ["a"])], "a is in two files"),
    ([_doc("1/3", ["a"]), _doc("2/3", ["b"])], "shard(s) 3/3 missing"),
    ([_doc("2/2", ["b"])], "shard(s) 1/2 missing"),
    ([_doc("1/2", ["a"]), _doc("1/2", ["b"])], "shard 1/2 given twice"),
    ([_doc("1/2", ["a"]), _doc("2/3", ["b"])], "shards of different splits"),
    ([_doc("1/2", ["a"]), _doc("2/2", ["b"], fingerprint="other")], "come from different hardware"),
    ([_doc("1/2", ["a"]), _doc(None, ["b"])], "some files are shards"),
])
def test_merge_refuses_files_that_do_not_belong_together(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         docs: list[dict], message: str) -> None:
    paths = [_write(tmp_path, f"{i}.json", d) for i, d in enumerate(docs)]
    assert cli(["merge", *paths]) == 2
    assert message in capsys.readouterr().err


def test_merge_needs_the_gate_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc("1/1", ["a"])
    del doc["comparisons"]
    assert cli(["merge", _write(tmp_path, "a.json", doc)]) == 2
    assert "has no 'comparisons'" in capsys.readouterr().err


def test_merge_exit_code_follows_the_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = [_write(tmp_path, "1.json", _doc("1/2", ["a"])), _write(tmp_path, "2.json", _doc("2/2", ["b"]))]
    assert cli(["merge", *ok]) == 0
    bad = _write(tmp_path, "3.json", _doc("2/2", ["b"], verdict=Verdict.FAIL))
    assert cli(["merge", ok[0], bad]) == 1
    assert "1 failed, 1 passed" in capsys.readouterr().out
    new = _write(tmp_path, "4.json", _doc("2/2", ["b"], verdict=Verdict.NEW))
    assert cli(["merge", ok[0], new]) == 0 and cli(["merge", ok[0], new, "--strict"]) == 1
    assert cli(["merge", ok[0], "--allow-missing"]) == 0
    shard = load_shard(ok[0])
    assert shard.shard == (1, 2) and merge_shards([shard], allow_missing=True)["env"]["shards"][0]["shard"] == "1/2"


@pytest.mark.parametrize("verdict", list(Verdict))
def test_merge_exits_by_the_one_failure_rule(tmp_path: Path, verdict: Verdict) -> None:
    """`pytest-mgpu merge` fails exactly where the plugin and `compare` fail: verdicts.fails, with and without --strict."""
    from pytest_mgpu.judge.verdicts import fails

    ok = _write(tmp_path, "1.json", _doc("1/2", ["a"]))
    other = _write(tmp_path, "2.json", _doc("2/2", ["b"], verdict=verdict))
    assert cli(["merge", ok, other]) == int(fails(verdict))
    assert cli(["merge", ok, other, "--strict"]) == int(fails(verdict, strict=True))


# --- issue 17.4: the split depends on the items alone; merge checks the coverage -------------


class _Stash(dict):  # type: ignore[type-arg]
    """``item.stash`` of a stub item."""


def _select(suite: list[tuple[str, int | None]], i: int, n: int, costs: dict[str, float]) -> list[str]:
    """Run ``shard.select`` for shard ``i`` of ``n`` on stub items; ``costs`` stand in for what baselines held."""
    from types import SimpleNamespace
    from unittest import mock

    from pytest_mgpu.run import shard
    from pytest_mgpu.run.session import SPEC_KEY

    items = []
    for nodeid, group in suite:
        stash = _Stash()
        if group is not None:
            stash[SPEC_KEY] = SimpleNamespace(key=("sim", "m", f"g{group}"), engine="sim")
        items.append(SimpleNamespace(nodeid=nodeid, stash=stash))
    sess = SimpleNamespace(settings=SimpleNamespace(baseline_dir=Path("baselines")), fingerprint="fp", env_info={},
                           shard=None)
    config = SimpleNamespace(getoption=lambda name, default=None: (i, n),
                             hook=SimpleNamespace(pytest_deselected=lambda items: None),
                             pluginmanager=SimpleNamespace(get_plugin=lambda name: None))
    with mock.patch.object(shard, "item_costs", lambda root, fp: dict(costs), create=True):
        shard.select(sess, config, items)  # type: ignore[arg-type]
    return [it.nodeid for it in items]


@given(
    groups=st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=1, max_size=16),
    n=st.integers(1, 5),
    data=st.data(),
)
def test_every_item_lands_in_exactly_one_shard_whatever_the_baselines(groups: list[int | None], n: int,
                                                                       data: st.DataObject) -> None:
    """Issue 17.4: each runner may see other baselines (random costs per shard); the shards still partition the suite."""
    suite = [(f"t.py::test_{k}", g) for k, g in enumerate(groups)]
    names = [x for x, _ in suite]
    costs = st.dictionaries(st.sampled_from(names), st.floats(0.01, 1e5), max_size=len(names))
    shards = [_select(suite, i, n, data.draw(costs)) for i in range(1, n + 1)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == sorted(names)  # every item once: none missing, none twice


def _shard_doc(shard: str, collected: list[str], items: list[str]) -> dict:
    i, n = shard.split("/")
    doc = _doc(shard, [x.split("::")[1] for x in items])
    doc["shard"] = {"index": int(i), "count": int(n), "collected": collected, "items": items}
    return doc


@pytest.mark.parametrize("docs, message", [
    ([_shard_doc("1/2", ["m.py::a", "m.py::b", "m.py::c"], ["m.py::a"]),
      _shard_doc("2/2", ["m.py::a", "m.py::b", "m.py::c"], ["m.py::b"])], "m.py::c ran in no shard"),
    ([_shard_doc("1/2", ["m.py::a", "m.py::b"], ["m.py::a", "m.py::b"]),
      _shard_doc("2/2", ["m.py::a", "m.py::b"], ["m.py::b"])], "m.py::b ran in two shards"),
    ([_shard_doc("1/2", ["m.py::a", "m.py::b"], ["m.py::a"]),
      _shard_doc("2/2", ["m.py::a", "m.py::x"], ["m.py::x"])], "collected different suites"),
])
def test_merge_checks_that_the_shards_cover_the_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      docs: list[dict], message: str) -> None:
    """Issue 17.4: merge took shards that skipped an item, or ran one twice, with exit 0."""
    for d in docs:  # results of an item that ran twice are not what is checked here
        d["results"] = d["results"][:1]
        d["comparisons"] = d["comparisons"][:1]
    docs[1]["results"][0]["entry_id"] = docs[1]["comparisons"][0]["entry_id"] = "other"
    paths = [_write(tmp_path, f"{i}.json", d) for i, d in enumerate(docs)]
    assert cli(["merge", *paths]) == 2
    assert message in capsys.readouterr().err


def test_a_shard_with_no_items_passes_and_merges(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17.4: a shard with no items exited 5 (no tests collected), which fails a CI matrix."""
    pytester.makepyfile(test_suite=SUITE)
    pytester._monkeypatch.setenv("START_LOG", str(pytester.path / "starts.txt"))
    n = 6  # 3 engine groups and 2 plain tests: one shard is empty
    files, empty = [], []
    for i in range(1, n + 1):
        out = pytester.path / f"shard-{i}.json"
        r = pytester.runpytest(*SIM, "--mgpu-shard", f"{i}/{n}", "--mgpu-json", str(out))
        assert r.ret == 0, r.stdout.str()
        if "this shard has no items" in r.stdout.str():
            empty.append(i)
            assert json.loads(out.read_text())["shard"]["items"] == []
        files.append(str(out))
    assert len(empty) == 1
    capsys.readouterr()
    assert cli(["merge", *files]) == 0
    assert "merged 6 file(s): 6 results" in capsys.readouterr().out
    assert cli(["merge", *[f for k, f in enumerate(files, 1) if k != empty[0]]]) == 2  # a shard file missing
def test_assignment_is_longest_first_onto_the_least_loaded() -> None:
    """The exact greedy: 7, 5, 4, 3, 1 on two shards is {7, 3} and {5, 4, 1} (shortest first, or by name,
    would give another split); equal costs go by name, whatever the order they come in."""
    units = [("a", 1.0), ("d", 4.0), ("c", 7.0), ("b", 3.0), ("e", 5.0)]
    assert assign(units, 2) == {"c": 1, "e": 2, "d": 2, "b": 1, "a": 2}
    assert assign([("b", 1.0), ("a", 1.0)], 2) == assign([("a", 1.0), ("b", 1.0)], 2) == {"a": 1, "b": 2}


def test_merged_results_are_ordered_by_module_and_node_and_list_their_shards(tmp_path: Path) -> None:
    a, b = _doc("1/2", ["z", "b"]), _doc("2/2", ["a"])
    for doc, commit in ((a, "c1"), (b, "c2")):
        doc["env"].update(commit=commit, date=f"d-{commit}")
    a["results"][0]["module"] = "a.py"  # "z" sorts first by its module
    merged = merge_shards([load_shard(_write(tmp_path, "a.json", a)), load_shard(_write(tmp_path, "b.json", b))])
    assert [r["entry_id"] for r in merged["results"]] == ["z", "a", "b"]
    assert merged["env"]["shards"] == [{"file": "a.json", "shard": "1/2", "commit": "c1", "date": "d-c1"},
                                       {"file": "b.json", "shard": "2/2", "commit": "c2", "date": "d-c2"}]
    assert "shard" not in merged["env"]
