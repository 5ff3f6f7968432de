"""Connecting the session to a Ray cluster: the one place that imports the Ray client, and only when asked.

:mod:`.ray_client` imports ``ray``, an optional dependency; this module imports it when the session
has an address (``--mgpu-ray-address`` or ``RAY_ADDRESS``), and turns a missing Ray or an
unreachable cluster into a usage error before any engine starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..errors import ClusterError
from . import ClusterInventory

if TYPE_CHECKING:  # pragma: no cover - ray is imported only when an address is given
    from .ray_client import RayCluster


def connect(address: str, source: str) -> tuple[RayCluster, ClusterInventory]:
    """Connect the session to the cluster at ``address`` and read it; a usage error when that fails.

    Raised before any engine starts: a cluster that cannot be reached, or Ray missing here.
    """
    try:
        from .ray_client import RayCluster  # lazy: the pytest process imports ray only with an address
    except ImportError as exc:
        raise pytest.UsageError(
            f"{source}={address} needs Ray in this interpreter ({exc}); install it with "
            f"pip install 'pytest-mgpu[ray]' (ray 2.60), or drop {source}"
        ) from None
    try:
        cluster = RayCluster.connect(address, source)
    except ClusterError as exc:
        raise pytest.UsageError(
            f"the Ray cluster at {address} (from {source}) cannot be reached: {exc}. Start it first "
            f"(ray start --head on its head node; docs/multinode.md), or fix the address"
        ) from None
    try:
        inv = cluster.inventory()
    except BaseException:
        cluster.close()
        raise
    if not inv.nodes:
        cluster.close()
        raise pytest.UsageError(f"the Ray cluster at {address} (from {source}) has no alive node")
    return cluster, inv
