"""The cluster client against the real test cluster, in this process: NVML through a task per node,
and the teardown and placement checks failing when they must."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_helpers import H100, NEEDS_RAY, Cluster

pytest.importorskip("ray", reason=NEEDS_RAY)

from pytest_mgpu.cluster.ray_client import RayCluster, Snapshot
from pytest_mgpu.errors import ClusterError, ClusterTeardownError
from pytest_mgpu.layout import Layout


@pytest.fixture
def client(on_cluster: Cluster) -> Iterator[RayCluster]:
    # This process imported ray at collection, before the token was in its environment; Ray reads
    # RAY_AUTH_MODE into its config once, so refresh it (a pytest run gets the variables at its start).
    from ray._raylet import Config

    Config.initialize("")
    c = RayCluster.connect(on_cluster.address)
    try:
        yield c
    finally:
        c.close()


def test_each_node_reports_its_own_gpu_through_nvml(client: RayCluster, on_cluster: Cluster) -> None:
    inv = client.inventory()
    assert [(n.ip, [(g.index, g.name) for g in n.gpus], n.is_head) for n in inv.nodes] == [
        ("127.0.0.2", [(0, H100)], True), ("127.0.0.3", [(1, H100)], False)]
    assert inv.raylets_per_host() == 2 and inv.fingerprint() == "nvidia-h100-80gb-hbm3-x1-n2"
    on_cluster.hold_memory(1, 4000)
    assert client.gpu_memory() == {("127.0.0.2", 0): 0, ("127.0.0.3", 1): 4000}


def test_memory_that_does_not_come_back_is_named_by_node_and_gpu(client: RayCluster, on_cluster: Cluster) -> None:
    client.inventory()
    snap = client.snapshot(Layout(tp=2, nodes=2))
    assert snap.memory_mb == {("127.0.0.2", 0): 0, ("127.0.0.3", 1): 0} and snap.free_gpus == 2
    on_cluster.hold_memory(1, 4000)
    with pytest.raises(ClusterTeardownError, match=r"GPU memory did not come back within 1s after x stopped "
                                                   r"\(node 127\.0\.0\.3 GPU 1: \+4000 MiB\)"):
        client.teardown(snap, "x", actor_timeout_s=0.5, memory_timeout_s=1)
    on_cluster.hold_memory(1, 300)  # within the slack: back
    client.teardown(snap, "x", actor_timeout_s=0.5, memory_timeout_s=1)


def test_placement_on_fewer_nodes_than_the_layout_is_an_error(client: RayCluster) -> None:
    client.inventory()
    snap = Snapshot(Layout(tp=2, nodes=2), set(), 2.0, {})
    node = next(iter(client._nodes))
    workers = {f"a{i}": {"Name": f"vllm_Worker_x_TP{i}", "ActorClassName": "RayWorkerProc", "State": "ALIVE",
                         "Address": {"NodeID": node}} for i in range(2)}
    client.actors = lambda: workers  # type: ignore[method-assign]
    with pytest.raises(ClusterError, match=r"vllm tp2-pp1-n2 placed its 2 workers on 1 node\(s\) \(127\.0\.0\.2: 2\); "
                                           r"layout tp2-pp1-n2 asks for 2 node\(s\) with 1 GPU\(s\) each"):
        client.check_placement(snap, ("vllm_Worker_",), "vllm tp2-pp1-n2")
    one = Snapshot(Layout(tp=2), set(), 2.0, {})
    assert client.check_placement(one, ("RayWorkerProc",), "vllm tp2-pp1") == {
        "vllm_Worker_x_TP0": "127.0.0.2", "vllm_Worker_x_TP1": "127.0.0.2"}
