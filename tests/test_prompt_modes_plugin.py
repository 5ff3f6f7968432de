"""Prompt modes through the whole plugin on the sim: text by default, token ids on request, both recorded."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "1"]

TEST = """
import math, pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    r = mgpu_bench.run(input_len=48, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
    assert r.valid, r.invalid
"""

BOTH = """
import math, pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
def test_both(mgpu_bench):
    kw = dict(input_len=48, output_len=8, num_requests=16, request_rate=math.inf, warmup_requests=1)
    a = mgpu_bench.run(prompt="text", **kw)
    b = mgpu_bench.run(prompt="token-ids", **kw)
    assert a.workload.prompt == "text" and b.workload.prompt == "token-ids"
"""


def _results(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, list[dict]]:
    out = pytester.path / "r.json"
    r = pytester.runpytest(*SIM, "--mgpu-json", str(out), "--mgpu-json-records", *args)
    return r, (json.loads(out.read_text())["results"] if out.exists() else [])


def test_text_is_the_default_and_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    r, res = _results(pytester)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["test_serve[[]tp1-pp1[]]::in48-out8-n16-qpsinf-text*ok"])
    (one,) = res
    assert one["workload"]["prompt"] == "text" and one["entry_id"].endswith("-text")
    # The sim counted the words of each text prompt: the server's usage.prompt_tokens is input_len.
    assert {rec["prompt_len"] for rec in one["repeats"][0]["records"]} == {48}


def test_token_ids_on_request_and_both_in_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    r, res = _results(pytester, "--mgpu-prompt", "token-ids")
    r.assert_outcomes(passed=1)
    assert [x["workload"]["prompt"] for x in res] == ["token-ids"]
    assert res[0]["entry_id"] == "test_serve[tp1-pp1]::in48-out8-n16-qpsinf"
    pytester.makepyfile(test_perf=BOTH)
    r, res = _results(pytester, "--mgpu-prompt", "token-ids")  # run(prompt=...) overrides the option
    r.assert_outcomes(passed=1)
    assert sorted(x["entry_id"] for x in res) == [
        "test_both[tp1-pp1]::in48-out8-n16-qpsinf", "test_both[tp1-pp1]::in48-out8-n16-qpsinf-text"]


def test_a_token_id_baseline_is_not_compared_with_a_text_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    pytester.runpytest(*SIM, "--mgpu-prompt", "token-ids", "--mgpu-update-baselines").assert_outcomes(passed=1)
    r = pytester.runpytest(*SIM, "--mgpu-prompt", "token-ids")  # compared (any verdict but NEW)
    r.stdout.fnmatch_lines(["mgpu gate: *"])
    assert "NEW" not in r.stdout.str()
    r = pytester.runpytest(*SIM)  # text by default: another result, never judged against token ids
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["test_serve[[]tp1-pp1[]]::in48-out8-n16-qpsinf-text*NEW*", "mgpu gate: 1 new"])


def test_text_from_an_engine_without_tokenizer_names_the_fix(pytester: pytest.Pytester) -> None:
    from pytest_mgpu.engines.sim import SimAdapter  # imported here, the inner runs patch this very class

    tokenizer = SimAdapter.tokenizer
    pytester.makepyfile(
        # The inner run shares this process (runpytest is in-process): put the sim's tokenizer back
        # when it ends, or every later sim run in the suite would fall back to token-id prompts.
        conftest="""
from pytest_mgpu.engines.sim import SimAdapter
_tokenizer = SimAdapter.tokenizer
SimAdapter.tokenizer = lambda self, spec, work_dir: None

def pytest_unconfigure(config):
    SimAdapter.tokenizer = _tokenizer
""",
        test_perf=TEST,
    )
    r = pytester.runpytest(*SIM, "--mgpu-prompt", "text")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*sim was started without a tokenizer*use --mgpu-prompt token-ids*"])
    # Without the option the engine falls back to token ids.
    r = pytester.runpytest(*SIM)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["test_serve[[]tp1-pp1[]]::in48-out8-n16-qpsinf *ok"])
    # Nothing of the patch outlives the inner runs: a later sim run in this process takes text again.
    pytester.makepyfile(conftest="")
    r = pytester.runpytest(*SIM)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["test_serve[[]tp1-pp1[]]::in48-out8-n16-qpsinf-text *"])
    assert SimAdapter.tokenizer is tokenizer


def test_bad_prompt_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_perf=TEST)
    r = pytester.runpytest(*SIM, "--mgpu-prompt", "words")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--mgpu-prompt: invalid choice: 'words'*"])
