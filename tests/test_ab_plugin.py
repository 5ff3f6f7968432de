"""Same-job A/B (``--mgpu-ab``) through the whole plugin, on the sim engine (pytester).

On the sim, ``mgpu_bench`` times every request by the modelled clock stamped on each chunk (issue
10), so the numbers do not depend on this host's load, and with the sim's own noise set to zero
(``noise=0``) an unchanged sim measures the same on both sides. The verdict tests therefore run
at any host load (they used to skip above load average = cores while the sim ran in real time).
They keep 5 repeats per engine start and the tolerances set in the test file: 10% for throughput
and TPOT (so a change beyond 5% FAILs: ``speed=0.9`` makes both 10-13% worse) and 20% for TTFT.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_mgpu.engines.vllm import VllmAdapter

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-engine-opt", "noise=0"]
# "--opt=VALUE": pytest reads a path-like value of a plugin option as a test path when it picks the rootdir.
AB = [*SIM, f"--mgpu-ab={sys.executable}", "--mgpu-repeats", "3"]
#: The verdict tests: 5 repeats per engine start.
AB5 = [*AB, "--mgpu-repeats", "5"]

AB_TEST = """
import math, pytest

pytestmark = [
    pytest.mark.gpu, pytest.mark.model("llama-2-7b"),
    pytest.mark.perf_tolerance(output_throughput_per_gpu="10%", tpot_p50="10%", ttft_p50="20%"),
]

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench, mgpu_engine):
    with pytest.raises(RuntimeError, match="only inside mgpu_bench.run"):
        mgpu_engine.base_url
    r = mgpu_bench.run(input_len=64, output_len=16, num_requests=16, request_rate=math.inf, warmup_requests=2)
    assert r.valid
    print("SIDES", mgpu_engine.old_version, "->", mgpu_engine.version, r.verdict, len(r.rounds))
"""


def _ab(pytester: pytest.Pytester, *args: str, base: list[str] = AB) -> tuple[pytest.RunResult, dict, str]:
    pytester.makepyfile(test_ab=AB_TEST)
    out, md = pytester.path / "ab.json", pytester.path / "ab.md"
    r = pytester.runpytest(*base, "-s", "--mgpu-json", str(out), "--mgpu-report-md", str(md), *args)
    return r, json.loads(out.read_text()), md.read_text()


def test_slower_new_engine_fails_confirmed_and_reports_both_sides(pytester: pytest.Pytester) -> None:
    r, doc, md = _ab(pytester, "--mgpu-engine-opt", "speed=0.9", "--mgpu-ab-opt", "speed=1.0", base=AB5)
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(
        [
            "mgpu A/B: old = sim * (*opt speed=1.0), new = sim * (*); rounds 3..10, 5 repeat(s) per engine start",
            "FAIL: test_serve[[]tp1-pp1[]]::in64-out16-n16-qpsinf-text (sim * -> *, * rounds)",
            "* is *% * (worse) on the new side (sim *) than on the old side (sim *, * opt speed=1.0)*",
            "*A/B: sim * -> * on sim-h100-80gb-x4*",
            "test_serve[[]tp1-pp1[]]::in64-out16-n16-qpsinf-text  FAIL  (sim * -> *, * rounds, * GPU-min)",
            "  metric*old*new*change*90% CI*fail beyond*tol*verdict",
            "GPU time per verdict*",
            "  total*",
            "mgpu A/B: 1 failed; 1 verdicts, * GPU-min (* per verdict)",
        ]
    )
    (res,) = doc["results"]
    ab = res["ab"]
    assert ab["verdict"] == "FAIL" and ab["old_version"] == ab["new_version"] == res["engine_version"]
    failed = [m for m in ab["metrics"] if m["verdict"] == "FAIL"]
    assert failed and all(m["gated"] for m in failed)
    for m in failed:  # every FAIL is a change for the worse beyond half the tolerance
        worse = -m["delta_pct"] if m["metric"] == "output_throughput_per_gpu" else m["delta_pct"]
        assert worse > m["threshold_pct"], m
    # A FAIL needs two looks in a row: at least min_rounds + 1 rounds, each with two engine starts.
    assert 4 <= ab["rounds"] <= 10 and ab["cost"]["starts"] == 2 * ab["rounds"]
    assert [rd["order"] for rd in ab["per_round"][:2]] == [["old", "new"], ["new", "old"]]
    assert all(len(rd["old"]) == len(rd["new"]) == 5 for rd in ab["per_round"])
    assert len(res["repeats"]) == 5 * ab["rounds"]  # the new side: every repeat of every round
    assert doc["ab"]["verdicts"] == {"FAIL": 1} and doc["ab"]["gpu_minutes"] > 0
    v = res["engine_version"]
    assert md.splitlines()[0] == f"## pytest-mgpu A/B: sim {v} → {v} on sim-h100-80gb-x4"
    assert "**FAIL**" in md and "### GPU time per verdict" in md


def test_unchanged_engine_passes_and_restarts_before_every_measurement(pytester: pytest.Pytester) -> None:
    xml = pytester.path / "junit.xml"
    r, doc, md = _ab(pytester, f"--junitxml={xml}", base=AB5)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*SIDES * -> * PASS *", "mgpu A/B: 1 passed; 1 verdicts, *"])
    ab = doc["results"][0]["ab"]
    assert ab["verdict"] == "PASS" and 3 <= ab["rounds"] <= 10
    assert ab["cost"]["starts"] == 2 * ab["rounds"]
    assert all(set(rd["start_s"]) == {"old", "new"} for rd in ab["per_round"])
    props = {p.get("name"): p.get("value") for p in ET.parse(xml).iter("property")}
    assert props["mgpu.ab.old_version"] == props["mgpu.ab.new_version"]
    assert props["mgpu.in64-out16-n16-qpsinf-text.ab.verdict"] == "PASS"
    assert float(props["mgpu.in64-out16-n16-qpsinf-text.output_throughput_per_gpu.old"]) > 0
    assert "mgpu.in64-out16-n16-qpsinf-text.tpot_p50.new" in props
    assert "**1 passed; 1 verdicts" in md


def test_ab_result_recorded_as_baseline_is_the_new_side(pytester: pytest.Pytester) -> None:
    r, doc, _ = _ab(pytester, "--mgpu-update-baselines", "--mgpu-ab-min-rounds", "3", "--mgpu-ab-rounds", "3")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["recorded the new side as 1 baseline entry under *sim-h100-80gb-x4"])
    files = list((pytester.path / "baselines" / "sim-h100-80gb-x4").rglob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())["entries"]["test_serve[tp1-pp1]::in64-out16-n16-qpsinf-text"]
    # Nine samples: three rounds of three repeats, all from the new side.
    new_tput = [rep["summary"]["output_throughput_per_gpu"] for rep in doc["results"][0]["repeats"]]
    samples = entry["recordings"][-1]["metrics"]["output_throughput_per_gpu"]  # baseline schema 2
    assert len(samples) == 9 and samples == pytest.approx(new_tput, rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mgpu-ab-env", "PYTHONPATH=/x"], "--mgpu-ab-env only apply to an A/B; add --mgpu-ab OLD_PYTHON"),
        (["--mgpu-ab-rounds", "5"], "--mgpu-ab-rounds only apply to an A/B*"),
        (["--mgpu-ab", "/no/such/python"], "--mgpu-ab '/no/such/python' is not an executable interpreter*"),
        ([f"--mgpu-ab={sys.executable}", "--mgpu-ab-rounds", "2"], "--mgpu-ab-min-rounds/--mgpu-ab-rounds: max_rounds=2 is below*"),
        ([f"--mgpu-ab={sys.executable}", "--mgpu-ab-opt", "speed"], "--mgpu-ab-opt expects KEY=VALUE*"),
    ],
)
def test_bad_ab_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_ab=AB_TEST)
    r = pytester.runpytest(*SIM, *args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*{message}"])


def _fake_vllm_site(root: Path, version: str) -> Path:
    """A folder that makes ``importlib.metadata`` see vllm ``version`` when it is on PYTHONPATH."""
    site = root / f"site-{version}"
    info = site / f"vllm-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return site


def test_each_side_reads_its_version_under_its_own_pythonpath(tmp_path: Path) -> None:
    """Two vLLM installs for one python, chosen by PYTHONPATH (the GPU machines' layout)."""
    site25, site26 = _fake_vllm_site(tmp_path, "0.25.1"), _fake_vllm_site(tmp_path, "0.26.0")
    adapter = VllmAdapter()
    assert adapter.version(sys.executable, {"PYTHONPATH": str(site25)}) == "0.25.1"
    assert adapter.version(sys.executable, {"PYTHONPATH": str(site26)}) == "0.26.0"


def test_header_names_both_versions_from_pythonpath(pytester: pytest.Pytester) -> None:
    site25, site26 = _fake_vllm_site(pytester.path, "0.25.1"), _fake_vllm_site(pytester.path, "0.26.0")
    pytester.makepyfile(test_ab=AB_TEST)
    r = pytester.runpytest(
        "--co", "-p", "no:cacheprovider", "--mgpu-engine", "vllm", f"--mgpu-ab={sys.executable}",
        "--mgpu-ab-env", f"PYTHONPATH={site25}", "--mgpu-engine-env", f"PYTHONPATH={site26}",
    )
    r.stdout.fnmatch_lines(
        [f"mgpu A/B: old = vllm 0.25.1 (* PYTHONPATH={site25}), new = vllm 0.26.0 (* PYTHONPATH={site26}); rounds 3..10*"]
    )


def test_sweep_is_skipped_in_ab_mode_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sweep="""
import pytest
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

def test_knee(mgpu_bench):
    mgpu_bench.sweep(concurrency=[1, 2])
"""
    )
    r = pytester.runpytest(*AB, "-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*mgpu_bench.sweep() is not run in A/B mode (--mgpu-ab)*"])


def test_old_side_without_the_engine_is_a_usage_error_naming_it(pytester: pytest.Pytester) -> None:
    site26, empty = _fake_vllm_site(pytester.path, "0.26.0"), pytester.path / "empty"
    empty.mkdir()
    pytester.makepyfile(test_ab=AB_TEST)
    r = pytester.runpytest(
        "-p", "no:cacheprovider", "--mgpu-engine", "vllm", f"--mgpu-ab={sys.executable}",
        "--mgpu-ab-env", f"PYTHONPATH={empty}", "--mgpu-engine-env", f"PYTHONPATH={site26}",
    )
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*the A/B's old side (* PYTHONPATH={empty}): vLLM is not installed for * with PYTHONPATH={empty}*"])


def test_engine_env_pythonpath_is_where_the_install_check_looks(pytester: pytest.Pytester) -> None:
    """The early "engine not installed" check reads the version under --mgpu-engine-env, as a start does."""
    site26 = _fake_vllm_site(pytester.path, "0.26.0")
    pytester.makepyfile(test_ab=AB_TEST)
    r = pytester.runpytest(
        "-p", "no:cacheprovider", "--mgpu-engine", "vllm", "--mgpu-engine-env", f"PYTHONPATH={site26}",
        "--mgpu-start-timeout", "20",
    )
    # vLLM 0.26.0 is "installed" there (a fake dist-info), so this is no usage error: the start is tried,
    # under that PYTHONPATH, and fails because the fake has no code.
    assert r.ret != pytest.ExitCode.USAGE_ERROR, r.stderr.str()
    assert "cannot run" not in r.stderr.str()
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines([
        "[[]mgpu[]] starting vllm tp1-pp1 (llama-2-7b)",
        "*vllm exited with code 1 before it became ready (tp1-pp1)",
        "*-m vllm.entrypoints.openai.api_server *",
        "*No module named 'vllm'*",
    ])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("run(repeats=0)", "*test_args.py::test_serve*mgpu_bench.run(repeats=0): repeats must be an int >= 1*"),
        ("run(repeats=-2)", "*test_args.py::test_serve*mgpu_bench.run(repeats=-2): repeats must be an int >= 1*"),
        ("run(max_concurrency=1.5)", "*test_args.py::test_serve*: mgpu_bench.run(): *max_concurrency*"),
    ],
)
def test_bad_run_arguments_in_ab_mode_are_errors_before_any_engine_starts(
    pytester: pytest.Pytester, call: str, message: str
) -> None:
    """A/B mode checks run()'s arguments like the plain bench: no silent default, no engine started."""
    pytester.makepyfile(
        test_args=f"""
import pytest
pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

def test_serve(mgpu_bench):
    mgpu_bench.{call}
"""
    )
    r = pytester.runpytest(*AB)
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([message])
    assert "round 1" not in r.stdout.str() and "starting sim" not in r.stdout.str()


GROUP_TEST = """
import math, pytest

pytestmark = [
    pytest.mark.gpu, pytest.mark.model("llama-2-7b"),
    pytest.mark.perf_tolerance(output_throughput_per_gpu="10%", tpot_p50="10%", ttft_p50="20%"),
    pytest.mark.layout(tp=1),
]

def test_burst(mgpu_bench):
    r = mgpu_bench.run(input_len=64, output_len=16, num_requests=16, request_rate=math.inf, warmup_requests=2)
    print("RESULT burst", r.verdict, len(r.rounds))

@pytest.mark.perf_tolerance(output_throughput_per_gpu="40%", tpot_p50="40%", ttft_p50="90%")
def test_paced(mgpu_bench):
    r = mgpu_bench.run(input_len=64, output_len=16, num_requests=16, request_rate=64.0, warmup_requests=2)
    print("RESULT paced", r.verdict, len(r.rounds))

def test_stream(mgpu_bench):
    r = mgpu_bench.run(input_len=64, output_len=16, num_requests=4, request_rate=math.inf, max_concurrency=1,
                       warmup_requests=1)
    print("RESULT stream", r.verdict, len(r.rounds))
"""


def _group_ab(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(test_group=GROUP_TEST)
    out = pytester.path / "ab.json"
    r = pytester.runpytest(*AB, "-s", "-v", "--mgpu-json", str(out), *args)
    return r, json.loads(out.read_text())


def test_items_of_one_engine_share_its_starts_and_keep_their_own_verdicts(pytester: pytest.Pytester) -> None:
    """3 items x 3 rounds on one engine key: 6 engine starts (one per side per round), not 18."""
    r, doc = _group_ab(pytester, "--mgpu-ab-min-rounds", "3", "--mgpu-ab-rounds", "3")
    r.assert_outcomes(passed=3)
    (group,) = doc["ab"]["groups"]
    assert group["starts"] <= 8 and group["starts"] == 2 * group["rounds"] == 6
    assert len(group["items"]) == 3 and group["gpu_minutes"] > 0
    results = doc["results"]
    assert len(results) == 3 and {res["ab"]["verdict"] for res in results} == {"PASS"}
    for res in results:  # each item was measured on every start of the group, with its own rounds and decision
        ab = res["ab"]
        assert ab["rounds"] == 3 and ab["cost"]["starts"] == 6 and ab["group"]["starts"] == 6
        assert all(rd["shared_by"] == 3 for rd in ab["per_round"])
    # The shares of the group's GPU time add up to the group's.
    assert sum(res["ab"]["cost"]["gpu_minutes"] for res in results) == pytest.approx(group["gpu_minutes"], rel=1e-6)
    # Rotating order: each round's first item differs (round 1 starts with the first item to run).
    r.stdout.fnmatch_lines(["*round 1 (*shared by 3 items)*", "GPU time per engine group*", "*engine group*starts*"])
    for name in ("burst", "paced", "stream"):
        r.stdout.fnmatch_lines([f"*RESULT {name} PASS 3*"])
    positions = [[rd["position"] for rd in res["ab"]["per_round"]] for res in results]
    assert all(len(set(p)) == 3 for p in positions), positions  # each item first, second and last once
    r.stdout.fnmatch_lines(["  total * 6 *"])  # the per-verdict table counts each shared start once


def test_a_decided_item_drops_out_of_later_rounds(pytester: pytest.Pytester) -> None:
    """A 15% slower new side: burst (10% tolerance) FAILs at its confirming look, round 4 or later; paced
    (40% tolerance, TTFT 90%) is decided at round 3 and is measured on none of the later starts."""
    r, doc = _group_ab(pytester, "--mgpu-engine-opt", "speed=0.85", "--mgpu-ab-opt", "speed=1.0", "-k", "burst or paced")
    r.assert_outcomes(failed=1, passed=1)
    by = {res["test_name"]: res["ab"] for res in doc["results"]}
    burst, paced = by["test_burst[tp1-pp1]"], by["test_paced[tp1-pp1]"]
    assert burst["verdict"] == "FAIL" and burst["rounds"] >= 4
    (group,) = doc["ab"]["groups"]
    assert group["starts"] == 2 * burst["rounds"]
    assert paced["verdict"] in ("PASS", "WARN") and paced["rounds"] == 3  # WARN: a warn-only p99 moved
    assert paced["cost"]["starts"] == 6 < group["starts"]
    assert [rd["shared_by"] for rd in burst["per_round"]] == [2, 2, 2] + [1] * (burst["rounds"] - 3)


def test_sides_that_would_send_different_prompt_modes_fail_with_the_fix(pytester: pytest.Pytester) -> None:
    """Old side without a tokenizer, new side with one: text against token ids is no comparison."""
    pytester.makepyfile(conftest="""
from pytest_mgpu.engines.sim import SimAdapter
_tokenizer = SimAdapter.tokenizer

def tokenizer(self, spec, work_dir):  # the old side (--mgpu-ab-opt speed=1.0) cannot tokenize
    return None if spec.options_dict.get("speed") == "1.0" else _tokenizer(self, spec, work_dir)

SimAdapter.tokenizer = tokenizer

def pytest_unconfigure(config):
    SimAdapter.tokenizer = _tokenizer
""")
    args = ("--mgpu-engine-opt", "speed=1.0001", "--mgpu-ab-opt", "speed=1.0")
    r, _, _ = _ab(pytester, *args)
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*A/B test_serve*the old side sent token-ids prompts and the new side text prompts*"
                            "--mgpu-prompt token-ids*"])
    assert "Traceback" not in r.stdout.str()
    r, doc, _ = _ab(pytester, *args, "--mgpu-prompt", "token-ids")
    r.assert_outcomes(passed=1)
    assert doc["results"][0]["workload"]["prompt"] == "token-ids"


def test_one_selected_item_runs_its_own_ab(pytester: pytest.Pytester) -> None:
    r, doc = _group_ab(pytester, "-k", "stream", "--mgpu-ab-min-rounds", "3", "--mgpu-ab-rounds", "3")
    r.assert_outcomes(passed=1)
    (res,) = doc["results"]
    assert res["ab"]["cost"]["starts"] == 6 and doc["ab"]["groups"][0]["items"] == [res["entry_id"]]
    assert "shared by" not in r.stdout.str()


def test_a_body_that_stops_before_run_in_the_probe_is_measured_on_its_own_starts(pytester: pytest.Pytester) -> None:
    """The probe runs each body up to run(); one that skips there (here: only the first time it runs) is not
    planned, and its real run measures it alone: 2 x 3 starts for it, 6 shared by the other two."""
    pytester.makepyfile(test_group=GROUP_TEST.replace(
        "def test_stream(mgpu_bench):\n",
        "def test_stream(mgpu_bench):\n    import sys\n    if not hasattr(sys, '_seen'):\n"
        "        sys._seen = True\n        pytest.skip('first pass')\n",
    ))
    out = pytester.path / "ab.json"
    r = pytester.runpytest_subprocess(*AB, "--mgpu-json", str(out), "--mgpu-ab-min-rounds", "3", "--mgpu-ab-rounds", "3")
    r.assert_outcomes(passed=3)
    doc = json.loads(out.read_text())
    starts = sorted((len(g["items"]), g["starts"]) for g in doc["ab"]["groups"])
    assert starts == [(1, 6), (2, 6)]
    r.stdout.fnmatch_lines(["  total * 12 *"])
