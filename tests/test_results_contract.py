"""The ``comparison`` block of ``--mgpu-json`` is a contract (docs/results-schema.md): CI scripts read
its keys. These tests pin every key and value of :meth:`Comparison.to_dict` and
:meth:`MetricComparison.to_dict`, so a renamed or dropped key fails here, not in a user's pipeline."""

from __future__ import annotations

from pytest_mgpu.judge.verdicts import Comparison, MetricComparison, Verdict


def metric(**kw: object) -> MetricComparison:
    """A FAIL on TPOT p50 from one recording; keyword arguments override fields."""
    base = dict(metric="tpot_p50", base=3.8, now=4.2, delta_pct=10.5, noise_pct=2.1, tolerance_pct=5.0,
                verdict=Verdict.FAIL, gated=True, log_ratio=0.1, noise_log=0.02, n_base=3, n_now=5, recordings=1)
    return MetricComparison(**{**base, **kw})  # type: ignore[arg-type]


def test_metric_comparison_json_has_the_documented_keys() -> None:
    assert metric().to_dict() == {
        "metric": "tpot_p50", "base": 3.8, "now": 4.2, "delta_pct": 10.5, "noise_pct": 2.1, "tolerance_pct": 5.0,
        "verdict": "FAIL", "gated": True, "noise_source": "repeats", "n_base": 3, "n_now": 5,
    }


def test_metric_comparison_json_names_its_noise_source_and_why() -> None:
    d = metric(recordings=3, verdict=Verdict.PASS, why="better, but one recording").to_dict()
    assert d["noise_source"] == "3 recordings" and d["verdict"] == "PASS"
    assert d["why"] == "better, but one recording"
    assert metric(recordings=2).to_dict()["noise_source"] == "2 recordings"


def test_comparison_json_without_options_or_drift() -> None:
    c = Comparison("e1", Verdict.FAIL, (metric(),), "slower", "0.25.1", "0.26.0", "vllm")
    assert c.to_dict() == {
        "verdict": "FAIL", "note": "slower", "measurement": "first",
        "base_engine_version": "0.25.1", "now_engine_version": "0.26.0",
        "engine_options": None, "base_engine_options": None,
        "metrics": [metric().to_dict()],
    }


def test_comparison_json_with_options_measurement_and_drift() -> None:
    drift = {"verdict": "PASS", "anchor": "recording 1, the first", "metrics": {}}
    c = Comparison("e1", Verdict.PASS, (), "", "0.26.0", "0.26.0", "vllm", options={"--max-num-seqs": "8"},
                   base_options={"--max-num-seqs": "16"}, measurement="re-measurement", drift=drift)
    d = c.to_dict()
    assert d["engine_options"] == {"--max-num-seqs": "8"} and d["base_engine_options"] == {"--max-num-seqs": "16"}
    assert d["measurement"] == "re-measurement" and d["drift"] == drift and d["metrics"] == []
    # Empty options are recorded as {}, not as "not recorded" (None).
    empty = Comparison("e1", Verdict.PASS, options={}, base_options={}).to_dict()
    assert empty["engine_options"] == {} and empty["base_engine_options"] == {}
    assert "drift" not in empty


def test_an_ab_metric_json_has_the_documented_keys() -> None:
    """The per-metric block of a result's ``ab`` (docs/results-schema.md, A/B results)."""
    from pytest_mgpu.judge.ab_verdicts import LookState, PairedMetric

    pm = PairedMetric(metric="tpot_p50", gated=True, verdict=Verdict.FAIL, state=LookState.REGRESSED, rounds=4,
                      tolerance_pct=5.0, threshold_pct=2.5, old=3.8, new=4.2, delta_pct=10.5, ci_low_pct=8.0,
                      ci_high_pct=13.0, p_worse=0.999, sd_pct=1.5, old_values=(3.8, 3.9), new_values=(4.2, 4.1),
                      note="regressed at rounds 3 and 4")
    assert pm.to_dict() == {
        "metric": "tpot_p50", "gated": True, "verdict": "FAIL", "state": str(LookState.REGRESSED), "rounds": 4,
        "tolerance_pct": 5.0, "threshold_pct": 2.5, "old": 3.8, "new": 4.2, "delta_pct": 10.5, "ci_low_pct": 8.0,
        "ci_high_pct": 13.0, "p_worse": 0.999, "sd_pct": 1.5, "old_values": [3.8, 3.9], "new_values": [4.2, 4.1],
        "note": "regressed at rounds 3 and 4",
    }
    assert str(LookState.REGRESSED) == "regressed"
