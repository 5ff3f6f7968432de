"""``pytest-mgpu bisect``: the builds file, the search, and a run on the sim naming the first slow build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pytest_mgpu.cli import main as cli
from pytest_mgpu.cli.bisect import Build, bisect, load_builds

PERF = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b"),
              pytest.mark.perf_tolerance(output_throughput_per_gpu="10%", tpot_p50="10%", ttft_p50="20%")]

@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=32, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=1)
"""

SPEEDS = ["1.0", "1.0", "1.0", "0.85", "0.85", "0.85"]  # b3 is the first slow build


def _builds_toml(path: Path, speeds: list[str]) -> Path:
    text = "".join(f'[[build]]\nname = "b{i}"\nengine_opts = {{ speed = "{s}" }}\n\n' for i, s in enumerate(speeds))
    path.write_text(text)
    return path


def test_bisect_names_the_first_slow_build_among_six_on_the_sim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_perf.py").write_text(PERF)
    toml = _builds_toml(tmp_path / "builds.toml", SPEEDS)
    rc = cli(["bisect", str(toml), "--", "test_perf.py", "-p", "no:cacheprovider", "--mgpu-engine", "sim",
              "--mgpu-sim-gpu", "h100-80gb", "--mgpu-engine-opt", "noise=0", "--mgpu-repeats", "1",
              "--mgpu-ab-rounds", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    # 6 builds: good b0, bad b5; candidates b2 (PASS), b3 (FAIL), then the search ends at b3.
    assert steps[0].startswith("step 1: b2 vs b0: PASS") and steps[0].endswith("-> good")
    assert steps[1].startswith("step 2: b3 vs b0: FAIL") and steps[1].endswith("-> bad")
    assert len(steps) == 2 and all("GPU-min" in s for s in steps)
    assert "first bad build: b3" in lines


def _fake(verdicts: dict[str, str], calls: list[str]):  # type: ignore[no-untyped-def]
    """A pytest stand-in: writes the --mgpu-json file with the verdict of the candidate's speed."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        speed = next(a.split("speed=")[1] for a in args if a.startswith("--mgpu-engine-opt=speed="))
        out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--mgpu-json=")))
        calls.append(speed)
        v = verdicts[speed]
        if v == "CRASH":
            return subprocess.CompletedProcess(args, 4, "", "ERROR: usage: something is wrong")
        out.write_text(json.dumps({"ab": {"verdicts": {v: 1}, "gpu_minutes": 0.5}}))
        return subprocess.CompletedProcess(args, 1 if v in ("FAIL", "INVALID") else 0, "", "")

    return run


@pytest.mark.parametrize("first_bad", range(1, 9))
def test_the_search_finds_any_first_bad_build(first_bad: int, tmp_path: Path) -> None:
    builds = [Build(f"b{i}", "python3", engine_opts=(("speed", str(i)),)) for i in range(9)]
    verdicts = {str(i): ("FAIL" if i >= first_bad else "PASS") for i in range(9)}
    calls: list[str] = []
    lines: list[str] = []
    assert bisect(builds, [], print_=lines.append, runner=_fake(verdicts, calls), workdir=tmp_path) == 0
    assert f"first bad build: b{first_bad}" in lines[-2]
    assert len(calls) <= 3  # log2(8)


@pytest.mark.parametrize("bad_step", ["CRASH", "INVALID"])
def test_a_step_that_errors_stops_the_search_and_is_never_taken_as_good(bad_step: str, tmp_path: Path) -> None:
    builds = [Build(f"b{i}", "python3", engine_opts=(("speed", str(i)),)) for i in range(6)]
    verdicts = {"2": bad_step}
    lines: list[str] = []
    assert bisect(builds, [], print_=lines.append, runner=_fake(verdicts, []), workdir=tmp_path) == 1
    assert lines[1].startswith("step 1: b2 vs b0: ERROR")
    assert lines[2].startswith("bisect stopped: step 1 (b2) errored")
    assert not any(ln.startswith("first bad build") for ln in lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[build]] tables"),
        ("[[build]]\nname = 'a'\n", "1 build(s); a bisect needs at least two"),
        ("[[build]]\nname = 'a'\n[[build]]\nname = 'a'\n", "two builds are named 'a'"),
        ("[[build]]\nname = 'a'\n[[build]]\nnam = 'b'\n", "build 2: unknown key(s) nam"),
        ("[[build]]\nname = 'a'\n[[build]]\npython = 'x'\n", "build 2: needs name"),
        ("[[build]]\nname = 'a'\n[[build]]\nname = 'b'\nengine_opts = 3\n", "'engine_opts' must be a table"),
        ("[[build]]\nname = 'a'\n[[build]]\nname = 'b'\nengine_opts = { speed = '0.9' }\n",
         "build 'b' sets engine_opts speed but the first build ('a') does not"),
        ("[[build]\nname = 'a'\n", "not valid TOML"),
        ("builds = 1\n", "unknown top-level key(s) builds"),
    ],
)
def test_a_bad_builds_file_is_exit_2_naming_the_problem(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "builds.toml"
    toml.write_text(text)
    assert cli(["bisect", str(toml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pytest-mgpu: error: ") and message in err, err


def test_missing_file_and_reserved_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["bisect", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    toml = _builds_toml(tmp_path / "b.toml", ["1", "0.9"])
    assert cli(["bisect", str(toml), "--", "--mgpu-ab=python3"]) == 2
    assert "bisect sets --mgpu-ab itself" in capsys.readouterr().err
    assert [b.engine_opts for b in load_builds(toml)] == [(("speed", "1"),), (("speed", "0.9"),)]
