"""The loopback cluster helper's process handling, without Ray: it ends exactly its own sessions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from pytest_mgpu.cluster.local import LocalRayCluster, NodeProc, session_pids

#: A stand-in for `ray start --block`: a child that leaves the process group (as Ray's workers do)
#: but stays in the session, then both sleep.
NODE = r"""
import os, sys, time
if os.fork() == 0:
    os.setpgid(0, 0)
    print(os.getpid(), flush=True)
    time.sleep(300)
    sys.exit(0)
time.sleep(300)
"""


def _fake_node() -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([sys.executable, "-c", NODE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    return p, child


def test_stop_ends_every_process_of_its_sessions_and_nothing_else(tmp_path: Path) -> None:
    nodes = [_fake_node() for _ in range(2)]
    bystander, bystander_child = _fake_node()  # someone else's "cluster" on the same machine
    try:
        c = LocalRayCluster(nodes=2, workdir=tmp_path, port=1)
        c.procs = [NodeProc(f"127.0.0.{i + 2}", p.pid, str(tmp_path / f"n{i}.log"), 0) for i, (p, _) in enumerate(nodes)]
        pids = c.pids()
        assert {p.pid for p, _ in nodes} | {child for _, child in nodes} <= set(pids)
        assert os.getpgid(nodes[0][1]) != nodes[0][0].pid  # the child left its node's process group
        took = c.stop(grace_s=0.5)
        assert c.pids() == [] and took < 10
        for p, _ in nodes:
            p.wait(timeout=5)
        assert session_pids(bystander.pid) and bystander.poll() is None  # untouched
    finally:
        for pid in (bystander_child, bystander.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        bystander.wait()
        for p, child in nodes:
            for pid in (child, p.pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


def test_state_file_round_trip_and_private_env_file(tmp_path: Path) -> None:
    c = LocalRayCluster(nodes=2, workdir=tmp_path, port=6390)
    c.procs = [NodeProc("127.0.0.2", 11, "a.log", 1, "0"), NodeProc("127.0.0.3", 12, "b.log", 1, "1")]
    c.save(tmp_path / "cluster.json")
    back = LocalRayCluster.load(tmp_path / "cluster.json")
    assert back.address == "127.0.0.2:6390" and back.procs == c.procs
    env = tmp_path / "ray.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    assert "export RAY_ADDRESS=127.0.0.2:6390\n" in text and f"RAY_AUTH_TOKEN={c.auth_token}" in text
    assert c.auth_token not in repr(c)


def test_nodes_get_their_own_devices_and_no_inherited_ray_variables(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "someone-elses")
    c = LocalRayCluster(nodes=2, cuda_visible_devices=["0", "1"], env={"X": "1"}, node_env=[{}, {"Y": "2"}])
    a, b = c._node_env(0), c._node_env(1)
    assert (a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
    assert "RAY_ADDRESS" not in a and a["RAY_AUTH_TOKEN"] == c.auth_token and a["RAY_USAGE_STATS_ENABLED"] == "0"
    assert a["X"] == "1" and "Y" not in a and b["Y"] == "2"
