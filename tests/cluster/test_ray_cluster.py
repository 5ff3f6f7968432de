"""The plugin on a real two-node Ray cluster (loopback, this host) with the sim engine: inventory and
fingerprint from the cluster, layouts over two nodes, placement, and teardown after normal, hung,
leaking and interrupted engines. Needs ray (``nox -s ray``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_helpers import H100, NEEDS_RAY, Cluster

pytest.importorskip("ray", reason=NEEDS_RAY)

pytest_plugins = ["pytester"]

SIM = ["--mgpu-engine", "sim", "--mgpu-sim-gpu", "h100-80gb", "-p", "no:cacheprovider", "--mgpu-repeats", "1", "-rs"]

PERF_TEST = """
import math, os, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("llama-2-7b")]

@pytest.mark.layout(tp=2, nodes=2)
@pytest.mark.layout(tp=1, pp=2, nodes=2)
@pytest.mark.layout(tp=2)
@pytest.mark.layout(tp=1)
def test_serve(mgpu_bench, mgpu_engine):
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{mgpu_engine.layout.id} {mgpu_engine.pid} {mgpu_engine.log_path}\\n")
    r = mgpu_bench.run(input_len=64, output_len=8, num_requests=8, request_rate=math.inf, warmup_requests=1)
    assert r.valid
"""


@pytest.fixture
def pid_log(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = pytester.path / "pids.txt"
    monkeypatch.setenv("PID_LOG", str(path))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _engines(pid_log: Path) -> list[tuple[str, int, Path]]:
    return [(a, int(b), Path(c)) for a, b, c in (line.split() for line in pid_log.read_text().splitlines())]


def _assert_cluster_clean(cluster: Cluster, wait_s: float = 10.0) -> None:
    """No sim worker alive and both GPUs free (Ray ends a killed actor within a moment: poll briefly)."""
    deadline = time.monotonic() + wait_s
    while True:
        actors, free = cluster.alive_actors()
        left = [a["name"] for a in actors if a["name"].startswith("mgpu_sim_")]  # workers and the leak
        if (not left and free == 2.0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == [] and free == 2.0


def test_inventory_and_fingerprint_come_from_the_cluster(on_cluster: Cluster, pytester: pytest.Pytester,
                                                        pid_log: Path) -> None:
    """NVML is read on each node by a Ray task: one H100 per node (each raylet's CUDA_VISIBLE_DEVICES)."""
    pytester.makepyfile(test_perf=PERF_TEST)
    # RAY_ADDRESS alone is enough; vLLM need not be installed to collect.
    r = pytester.runpytest_subprocess("--mgpu-engine", "vllm", "-p", "no:cacheprovider", "--collect-only", "-rs")
    r.stdout.fnmatch_lines([
        f"mgpu: engine=vllm, Ray cluster {on_cluster.address} (ray 2.60.0), 2 nodes: 127.0.0.2 (head): 1 GPU {H100}; "
        f"127.0.0.3: 1 GPU {H100}, repeats=3, baselines=*/baselines/nvidia-h100-80gb-hbm3-x1-n2",
    ])
    out = pytester.path / "r.json"
    r = pytester.runpytest_subprocess(*SIM, "--mgpu-ray-address", on_cluster.address, "-k", "tp1-pp1",
                                      "--mgpu-json", str(out))
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*baselines=*/baselines/sim-h100-80gb-x1-n2"])
    cluster = json.loads(out.read_text())["env"]["cluster"]
    assert cluster["address"] == on_cluster.address and cluster["raylets_per_host"] == 2
    nodes = {n["ip"]: n for n in cluster["nodes"]}
    assert set(nodes) == {"127.0.0.2", "127.0.0.3"}
    assert all(n["gpus"] == [H100] and n["gpu_memory_total_mb"] == [81559] and n["ray_gpus"] == 1 for n in nodes.values())
    assert "RAY_AUTH_TOKEN" not in out.read_text() and on_cluster.env()["RAY_AUTH_TOKEN"] not in out.read_text()


def test_layouts_over_two_nodes_run_there_and_leave_nothing(on_cluster: Cluster, pytester: pytest.Pytester,
                                                            pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    out = pytester.path / "r.json"
    r = pytester.runpytest_subprocess(*SIM, "--mgpu-json", str(out))
    r.assert_outcomes(passed=3, skipped=1)
    r.stdout.fnmatch_lines(["*SKIPPED*needs 2 GPUs on one node; the Ray cluster at * has 2 GPUs on 2 nodes*"])
    engines = _engines(pid_log)
    assert sorted(lay for lay, _, _ in engines) == ["tp1-pp1", "tp1-pp2-n2", "tp2-pp1-n2"]
    for lay, pid, log in engines:
        assert not _alive(pid)
        placed = json.loads(log.read_text().split("[pytest-mgpu] Ray workers: ")[1].splitlines()[0])
        want = 2 if lay.endswith("-n2") else 1
        assert len(placed) == want and len(set(placed.values())) == want, placed  # one worker per node
    doc = json.loads(out.read_text())
    assert {r["layout"].get("nodes", 1) for r in doc["results"]} == {1, 2}
    _assert_cluster_clean(on_cluster)


def test_leaked_actor_is_found_killed_and_fails_the_session(on_cluster: Cluster, pytester: pytest.Pytester,
                                                            pid_log: Path) -> None:
    """An engine that leaves an actor in the cluster fails the session, as GPU memory that stays does locally."""
    pytester.makepyfile(test_perf=PERF_TEST)
    r = pytester.runpytest_subprocess(*SIM, "-k", "tp1-pp1", "--mgpu-engine-opt", "ray_leak=1")
    r.assert_outcomes(passed=1)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines([
        "ERROR at engine teardown: stopping sim*tp1-pp1*: 1 Ray actor(s) outlived sim tp1-pp1 by 15s: "
        "mgpu_sim_leak_* (killed mgpu_sim_leak_*)*",
    ])
    _assert_cluster_clean(on_cluster)


def test_hung_engine_is_stopped_and_its_workers_go(on_cluster: Cluster, pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    r = pytester.runpytest_subprocess(*SIM, "-k", "tp2-pp1-n2", "--mgpu-engine-opt", "hang_after=3",
                                      "--mgpu-request-timeout", "3")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*INVALID test_serve[[]tp2-pp1-n2[]]::*timeout after 3*"])
    assert r.ret == pytest.ExitCode.TESTS_FAILED and "ERROR at engine teardown" not in r.stdout.str()
    ((_, pid, _),) = _engines(pid_log)
    assert not _alive(pid)
    _assert_cluster_clean(on_cluster)


def test_too_few_free_gpus_fail_the_start_naming_who_holds_them(on_cluster: Cluster, pytester: pytest.Pytester,
                                                                 pid_log: Path) -> None:
    holder = r"""
import sys, time, ray
ray.init(address=sys.argv[1], namespace="holder", logging_level="ERROR", log_to_driver=False)
@ray.remote(num_gpus=1, num_cpus=0)
class GpuHolder:
    def ok(self): return 1
h = GpuHolder.options(name="gpu_holder").remote(); ray.get(h.ok.remote())
print("holding", flush=True); time.sleep(300)
"""
    env = {**os.environ, **on_cluster.env()}
    proc = subprocess.Popen([sys.executable, "-c", holder, on_cluster.address], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        pytester.makepyfile(test_perf=PERF_TEST)
        r = pytester.runpytest_subprocess(*SIM, "-k", "tp2-pp1-n2")
        r.assert_outcomes(errors=1)
        r.stdout.fnmatch_lines(["*the Ray cluster at * has 1 free GPU(s), tp2-pp1-n2 needs 2; alive actors: gpu_holder*"])
        assert not pid_log.exists()  # no engine was started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _assert_cluster_clean(on_cluster, wait_s=30)


def test_sigterm_to_pytest_on_a_cluster_still_stops_the_engine_and_its_workers(
        on_cluster: Cluster, pytester: pytest.Pytester, pid_log: Path) -> None:
    """Ray's driver makes SIGTERM exit at once; the plugin keeps its own handler, so teardown still runs."""
    pytester.makepyfile(test_hang="""
import os, time, pytest

@pytest.mark.model("llama-2-7b")
@pytest.mark.layout(tp=2, nodes=2)
def test_slow(mgpu_engine):
    with open(os.environ["PID_LOG"], "a") as fh:
        fh.write(f"{mgpu_engine.layout.id} {mgpu_engine.pid} {mgpu_engine.log_path}\\n")
    time.sleep(120)
""")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *SIM, str(pytester.path)], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not pid_log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pid_log.exists(), proc.communicate()[0].decode()
    ((_, engine_pid, _),) = _engines(pid_log)
    assert len([a for a in on_cluster.alive_actors()[0] if a["name"].startswith("mgpu_sim_Worker_")]) == 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    assert not _alive(engine_pid)
    _assert_cluster_clean(on_cluster)


def test_unreachable_cluster_is_a_usage_error_before_anything_starts(pytester: pytest.Pytester, pid_log: Path) -> None:
    pytester.makepyfile(test_perf=PERF_TEST)
    t0 = time.monotonic()
    r = pytester.runpytest_subprocess(*SIM, "--mgpu-ray-address", "127.0.0.2:1")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and time.monotonic() - t0 < 60
    r.stderr.fnmatch_lines(["*the Ray cluster at 127.0.0.2:1 (from --mgpu-ray-address) cannot be reached: nothing "
                            "answers at 127.0.0.2:1*Start it first*"])
    r = pytester.runpytest_subprocess(*SIM, "--mgpu-ray-address", "ray://127.0.0.2:10001")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*is a Ray Client address; give the cluster's GCS address host:port*"])
    assert not pid_log.exists()
