"""Slow drift since a baseline entry's anchor recording (issue 20): the arithmetic, the store, the plugin."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.cli import main as cli
from pytest_mgpu.judge.baseline import BaselineEntry, Recording, add_recording, parse_baseline_data
from pytest_mgpu.judge.drift import check_drift, with_drift
from pytest_mgpu.judge.results import Identity
from pytest_mgpu.judge.verdicts import Comparison, GateConfig, Verdict
from pytest_mgpu.report.render.text import trend

pytest_plugins = ["pytester"]

TPUT = "output_throughput_per_gpu"


def _rec(value: float, version: str = "1", anchor: bool = False) -> Recording:
    return Recording({TPUT: (value, value, value)}, version, {"date": f"v{version}"}, 3, {}, anchor=anchor)


def _entry(values: list[float], anchor_at: int | None = None) -> BaselineEntry:
    ident = Identity.from_mapping({"test": "t", "workload": {}, "layout": {}, "model": "m", "engine": "sim"})
    recs = tuple(_rec(v, str(i), anchor=i == anchor_at) for i, v in enumerate(values))
    return BaselineEntry("t::w", ident, recs)


class _Now:
    entry_id, engine_version, invalid = "t::w", "9", None

    def __init__(self, value: float) -> None:
        self.value = value

    def samples(self, metric: str) -> list[float]:
        return [self.value] * 3 if metric == TPUT else []


@given(n=st.integers(1, 30), history=st.integers(1, 10), pin=st.integers(0, 40))
def test_trimming_keeps_the_last_recordings_and_never_drops_the_anchor(n: int, history: int, pin: int) -> None:
    """Add n recordings one by one (the pin-th pinned, if any): the history is the last `history`, as before,
    and the anchor (the pinned one, else the first) is still there, beside the history when older."""
    recs = [_rec(float(i + 1), str(i), anchor=i == pin) for i in range(n)]
    e = BaselineEntry("t::w", _entry([0.5]).identity, (recs[0],))
    for rec in recs[1:]:
        e = add_recording(e, rec, history, "t::w")
    assert [r.metrics for r in e.recordings] == [r.metrics for r in recs[-history:]]
    want = pin if pin < n else 0
    assert e.anchor.metrics == recs[want].metrics
    assert (e.kept_anchor is not None) == (want < n - history)
    # Round trip through the file format keeps both.
    data = {"schema_version": 2, "fingerprint": "fp", "module": "m.py", "entries": {"t::w": e.to_dict()}}
    (back,) = parse_baseline_data(json.loads(json.dumps(data)))[1].values()
    assert back.anchor.metrics == recs[want].metrics and len(back.recordings) == len(e.recordings)


@given(step=st.floats(0.0, 0.06), levels=st.integers(1, 8))
def test_cumulative_change_is_measured_from_the_anchor(step: float, levels: int) -> None:
    """Each level `step` slower than the last: the drift is the product of the steps, not the last step."""
    values = [1000.0 * (1 - step) ** i for i in range(levels)]
    now = _Now(1000.0 * (1 - step) ** levels)
    d = check_drift(now, _entry(values), GateConfig())
    (m,) = [m for m in d.metrics if m.metric == TPUT]
    assert m.delta_pct == pytest.approx(((1 - step) ** levels - 1) * 100, abs=1e-3)
    assert d.levels == levels - 1
    # Beyond the 5% tolerance and the (floored) noise: drift. Inside the tolerance: never.
    if (1 - step) ** levels < 0.94:
        assert d.verdict is Verdict.FAIL and d.drifted
    if (1 - step) ** levels > 0.955:
        assert d.verdict is Verdict.PASS


def test_pinned_anchor_and_warn_mode() -> None:
    e = _entry([1000.0, 900.0, 880.0], anchor_at=1)
    assert e.anchor_index == 1 and e.anchor.anchor
    d = check_drift(_Now(870.0), e, GateConfig(), mode="warn")
    assert d.verdict is Verdict.PASS  # -3.3% since the pinned anchor (900), though -13% since the first
    d = check_drift(_Now(800.0), e, GateConfig(), mode="warn")
    assert d.verdict is Verdict.WARN
    c = with_drift(Comparison("t::w", Verdict.PASS), d)
    assert c.verdict is Verdict.WARN and c.note.startswith("slow drift since the anchor (recording 2")
    assert c.to_dict()["drift"]["anchor"] == "recording 2, pinned"
    with pytest.raises(ValueError, match="drift mode 'maybe'"):
        check_drift(_Now(1.0), e, GateConfig(), mode="maybe")


def test_files_without_an_anchor_use_their_first_recording_and_round_trip() -> None:
    e = _entry([1000.0, 970.0])
    data = {"schema_version": 2, "fingerprint": "fp", "module": "m.py", "entries": {"t::w": e.to_dict()}}
    assert "anchor" not in json.dumps(data)  # nothing pinned: the format is unchanged
    (back,) = parse_baseline_data(data)[1].values()
    assert back.anchor_index == 0
    pinned = _entry([1000.0, 970.0], anchor_at=1)
    data["entries"]["t::w"] = pinned.to_dict()
    (back,) = parse_baseline_data(json.loads(json.dumps(data)))[1].values()
    assert back.anchor_index == 1


def test_trend_line() -> None:
    assert trend([100.0, 97.0, 94.09]) == "100.0 -> 97.00 -> 94.09 (-5.9%)"


# --- through the plugin, on the sim -------------------------------------------------------------

#: 10% tolerances: three steps of 3% (-8.7%) stay inside, the fourth (-11.5%) does not.
SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "2",
       "--mgpu-engine-opt", "noise=0",
       *(f"--mgpu-tolerance={m}=10%" for m in ("output_throughput_per_gpu", "tpot_p50", "ttft_p50"))]
ONE = """
import math, pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench):
    mgpu_bench.run(input_len=64, output_len=16, num_requests=16, request_rate=math.inf, warmup_requests=1)
"""


def _speed(level: int) -> str:
    return f"speed={0.97 ** level:.6f}"


@pytest.fixture
def four_levels(pytester: pytest.Pytester) -> pytest.Pytester:
    """Four accepted levels, each 3% slower than the one before (history 2: the anchor survives trimming)."""
    pytester.makepyfile(test_perf=ONE)
    for level in range(4):
        r = pytester.runpytest(*SIM, "--mgpu-engine-opt", _speed(level), "--mgpu-update-baselines",
                               "-o", "mgpu_baseline_history=2")
        r.assert_outcomes(passed=1)
        if level >= 2:  # the change since the anchor, where it is not the compared level; inside 10% so far
            r.stdout.fnmatch_lines([f"  since the anchor (*): output_throughput_per_gpu -{100 * (1 - 0.97**level):.1f}%*"])
    return pytester


def test_fourth_upgrade_fails_on_drift_while_the_level_gate_passes(four_levels: pytest.Pytester,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytester = four_levels
    js = pytester.path / "r.json"
    r = pytester.runpytest(*SIM, "--mgpu-engine-opt", _speed(4), f"--mgpu-json={js}")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*slow drift since the anchor (older than the history, kept beside it, *): output_throughput_per_gpu -11.*% (tolerance 10%*): FAIL*"])
    (res,) = json.loads(js.read_text())["results"]
    comp = res["comparison"]
    assert comp["verdict"] == "FAIL"
    # Against the latest level: 3% slower, inside the 5% tolerance.
    level = {m["metric"]: m for m in comp["metrics"]}[TPUT]
    assert level["verdict"] == "PASS" and -4.0 < level["delta_pct"] < -2.0
    # Against the anchor: four steps of 3%.
    drift = comp["drift"]["metrics"][TPUT]
    assert drift["verdict"] == "FAIL" and drift["delta_pct"] == pytest.approx((0.97**4 - 1) * 100, abs=1.0)

    r = pytester.runpytest(*SIM, "--mgpu-engine-opt", _speed(4), "--mgpu-anchor-drift=warn", f"--mgpu-json={js}")
    r.assert_outcomes(passed=1)
    assert json.loads(js.read_text())["results"][0]["comparison"]["verdict"] == "WARN"
    # pytest-mgpu compare against the baseline file judges the drift as the suite does.
    base = next((pytester.path / "baselines").rglob("*.json"))
    assert cli(["compare", str(base), str(js)]) == 1
    assert "slow drift since the anchor" in capsys.readouterr().out


def test_show_prints_the_trend_and_accept_anchor_pins(four_levels: pytest.Pytester,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytester = four_levels
    doc = json.loads(next((pytester.path / "baselines").rglob("*.json")).read_text())
    (entry,) = doc["entries"].values()
    assert len(entry["recordings"]) == 2 and entry["anchor"]["engine_options"]["speed"] == _speed(0).split("=")[1]
    assert cli(["show", str(pytester.path / "baselines")]) == 0
    out = capsys.readouterr().out
    assert "trend from the anchor (older than the history, kept beside it) to the latest:" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"{TPUT}:"))
    change = float(line.rsplit("(", 1)[1].rstrip("%)"))
    assert change == pytest.approx((0.97**3 - 1) * 100, abs=1.0) and line.count("->") == 2  # anchor, level 2, 3
    # Pin a new anchor: the drift is measured from the 4th run on.
    js = pytester.path / "r.json"
    pytester.runpytest(*SIM, "--mgpu-engine-opt", _speed(4), "--mgpu-anchor-drift=warn", f"--mgpu-json={js}")
    assert cli(["accept", str(js), "--baseline-dir", str(pytester.path / "baselines"), "--anchor",
                "--history", "2"]) == 0
    assert "new anchor" in capsys.readouterr().out
    r = pytester.runpytest(*SIM, "--mgpu-engine-opt", _speed(5))
    r.assert_outcomes(passed=1)
    assert cli(["show", str(pytester.path / "baselines")]) == 0
    # Pinned: the older recordings go by the history rule (2 kept), the pinned one is the newest.
    assert "trend from the anchor (recording 2, pinned) to the latest:" in capsys.readouterr().out
