"""A two-node Ray cluster on loopback for the cluster tests (``nox -s ray``); they skip where Ray is not installed.

The nodes declare one GPU each (Ray accepts a count on a machine without GPUs) and see a fake
``pynvml`` (``fake_nvml/``) that reports one H100 per node, as two raylets on a 2-GPU host would:
both nodes see the same two cards, and each raylet's ``CUDA_VISIBLE_DEVICES`` picks its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from cluster_helpers import FAKE_NVML, H100, Cluster

from pytest_mgpu.cluster.local import LocalRayCluster


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Cluster]:
    """Two loopback nodes with one (declared) GPU each, started for the session and stopped after it."""
    d = tmp_path_factory.mktemp("ray")
    used = d / "used"
    used.mkdir()
    conf = d / "nvml.json"
    conf.write_text(json.dumps({
        "driver": "580.00", "used_dir": str(used),
        "gpus": [{"name": H100, "memory_total_mb": 81559, "uuid": f"GPU-fake-{i}"} for i in range(2)],
    }))
    pythonpath = os.pathsep.join(p for p in (str(FAKE_NVML), os.environ.get("PYTHONPATH", "")) if p)
    local = LocalRayCluster(
        nodes=2, num_gpus=1, num_cpus=2, cuda_visible_devices=["0", "1"], workdir=d / "nodes",
        env={"PYTHONPATH": pythonpath, "MGPU_FAKE_NVML": str(conf)},
    )
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capman = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:  # past the capture: CI logs show the cluster's up and down times
        if reporter is None or capman is None:
            return
        with capman.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)

    local.start()
    say(f"ray cluster: 2 nodes up in {local.started_s:.1f}s at {local.address}")
    try:
        yield Cluster(local, used)
    finally:
        took = local.stop()
        say(f"ray cluster stopped in {took:.1f}s; processes left: {len(local.pids())}")


@pytest.fixture
def on_cluster(ray_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The cluster's address and token in this test's environment (pytester's runs inherit them)."""
    for k, v in ray_cluster.env().items():
        monkeypatch.setenv(k, v)
    for name in os.listdir(ray_cluster.used_dir):
        (ray_cluster.used_dir / name).unlink()
    return ray_cluster
