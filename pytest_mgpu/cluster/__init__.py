"""Multi-node layouts on a Ray cluster: what the plugin knows about the cluster, without importing Ray.

A session given ``--mgpu-ray-address`` (or ``RAY_ADDRESS``) runs every engine through Ray on that
cluster (vLLM's ``--distributed-executor-backend ray``; the sim's stand-in workers). Its GPU
inventory, fingerprint and memory checks come from the cluster, not from the pytest host:

* :class:`ClusterInventory` - the alive nodes, their GPUs (Ray's ``GPU`` resource, and NVML read on
  each node by a Ray task), the fingerprint (``nvidia-h100-80gb-hbm3-x8-n2``) and why a layout
  cannot run here;
* :class:`~pytest_mgpu.engines.cluster_spec.ClusterSpec` - what an engine start needs to know (the address and
  the variables that reach the cluster, how many raylets share a host): the engines' own data type,
  which the cluster fills in.

The Ray client itself (:mod:`.ray_client`) is imported only when an address is given, by
:func:`.connect.connect`; Ray is an optional dependency (``pip install 'pytest-mgpu[ray]'``).
:mod:`.local` starts a loopback cluster for CI and single-host trials; the plugin never starts one
itself. See docs/multinode.md.

May import: ``engines`` (the adapters it wraps, :mod:`~pytest_mgpu.engines.cluster_spec`) and the
root's shared modules; ``ray`` only in :mod:`.ray_client`, :mod:`.probe` and :mod:`.local`. Imported
by ``run`` only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engines.cluster_spec import VLLM_CPU_RAY_UNSUPPORTED
from ..gpus import GpuInfo, GpuInventory, normalise_name
from ..layout import Layout

#: Variables a Ray driver needs to reach a cluster, passed on to engines explicitly (the engine
#: environment's whitelist drops ``RAY_*``): the address, and token authentication if it is on.
RAY_CONNECTION_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

def ray_address(option: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The cluster address (``--mgpu-ray-address`` first, then ``RAY_ADDRESS``) and where it came from."""
    if option:
        return option, "--mgpu-ray-address"
    env = environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env, "RAY_ADDRESS"
    return None, ""


@dataclass(frozen=True)
class NodeInfo:
    """One alive node of the cluster."""

    node_id: str
    ip: str
    ray_gpus: int  # Ray's ``GPU`` resource on the node
    gpus: tuple[GpuInfo, ...] = ()  # NVML on the node (only those its raylet may use)
    accelerator: str | None = None  # Ray's ``accelerator_type:...`` resource, e.g. "H100"
    host: str = ""  # host identity from the probe (hostname + boot id); "" if the probe failed
    hostname: str = ""
    is_head: bool = False
    nvml_error: str | None = None
    driver: str | None = None

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of the node id, as Ray's logs show it."""
        return self.node_id[:8]

    def gpu_name(self) -> str:
        """The node's GPU model for the fingerprint: NVML's name, else Ray's accelerator type, else ``gpu``."""
        names = sorted({normalise_name(g.name) for g in self.gpus})
        if names:
            return "+".join(names)
        if self.accelerator:
            return normalise_name(self.accelerator)
        return "gpu"


@dataclass
class ClusterInventory:
    """The cluster's alive nodes and their GPUs, as the session saw them at its start."""

    address: str
    nodes: list[NodeInfo] = field(default_factory=list)
    ray_version: str = ""

    @property
    def gpu_nodes(self) -> list[NodeInfo]:
        """Nodes with at least one GPU (a CPU-only head does not count)."""
        return [n for n in self.nodes if n.ray_gpus > 0]

    @property
    def count(self) -> int:
        """GPUs in the whole cluster (Ray's ``GPU`` resource)."""
        return sum(n.ray_gpus for n in self.nodes)

    def shape(self) -> str:
        """GPUs per node and nodes, ``x8-n2``; ``x8+4-n2`` when nodes differ; ``x0-n2`` without GPUs."""
        nodes = self.gpu_nodes
        if not nodes:
            return f"x0-n{len(self.nodes)}"
        counts = sorted((n.ray_gpus for n in nodes), reverse=True)
        per = str(counts[0]) if len(set(counts)) == 1 else "+".join(map(str, counts))
        return f"x{per}-n{len(nodes)}"

    def fingerprint(self) -> str:
        """Hardware key for baselines: GPU model, GPUs per node, nodes, e.g. ``nvidia-h100-80gb-hbm3-x8-n2``.

        The model is NVML's name as on a single host (so a node's baselines and the cluster's read
        alike); Ray's accelerator type where NVML could not be read. ``cpu-n2`` without GPUs.
        """
        nodes = self.gpu_nodes
        if not nodes:
            return f"cpu-n{len(self.nodes)}"
        names = sorted({n.gpu_name() for n in nodes})
        return f"{'+'.join(names)}-{self.shape()}"

    def raylets_per_host(self) -> int:
        """The most Ray nodes on one host (nodes whose probe failed count as hosts of their own)."""
        hosts = Counter(n.host or n.node_id for n in self.nodes)
        return max(hosts.values(), default=1)

    def skip_reason(self, layout: Layout, engine: str = "") -> str | None:
        """Why ``layout`` cannot run on this cluster (not enough nodes with enough GPUs), or None."""
        if engine == "vllm" and not self.gpu_nodes:
            return VLLM_CPU_RAY_UNSUPPORTED
        per, want = layout.gpus_per_node, layout.nodes
        fit = [n for n in self.gpu_nodes if n.ray_gpus >= per]
        if len(fit) >= want:
            return None
        counts = ", ".join(str(n.ray_gpus) for n in self.gpu_nodes) or "none"
        where = f"{want} nodes ({per} per node)" if want > 1 else "one node"
        return (
            f"needs {layout.num_gpus} GPU{'s' if layout.num_gpus != 1 else ''} on {where}; the Ray cluster at "
            f"{self.address} has {self.count} GPU{'s' if self.count != 1 else ''} on {len(self.gpu_nodes)} "
            f"node{'s' if len(self.gpu_nodes) != 1 else ''} (GPUs per node: {counts})"
        )

    def as_gpu_inventory(self) -> GpuInventory:
        """Every GPU of the cluster as one :class:`GpuInventory`, for the adapters' per-card decisions.

        Nodes whose NVML could not be read contribute Ray's count of unnamed GPUs (0 MiB).
        """
        gpus: list[GpuInfo] = []
        drivers = sorted({n.driver for n in self.nodes if n.driver})
        for n in self.nodes:
            if n.gpus:
                gpus.extend(n.gpus)
            else:
                name = f"NVIDIA {n.accelerator}" if n.accelerator else "unknown GPU"
                gpus.extend(GpuInfo(i, name, 0) for i in range(n.ray_gpus))
        errors = sorted({f"{n.ip}: {n.nvml_error}" for n in self.nodes if n.nvml_error and n.ray_gpus})
        return GpuInventory(gpus=gpus, driver="/".join(drivers) or None, error="; ".join(errors) or None)

    def describe(self) -> str:
        """One line for the report header."""
        parts = []
        for n in self.nodes:
            what = f"{n.ray_gpus} GPU" + ("s" if n.ray_gpus != 1 else "")
            if n.gpus:
                what += " " + "/".join(sorted({g.name for g in n.gpus}))
            parts.append(f"{n.ip}{' (head)' if n.is_head else ''}: {what}")
        return f"Ray cluster {self.address} (ray {self.ray_version}), {len(self.nodes)} nodes: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, recorded with every result of the session."""
        return {
            "address": self.address,
            "ray_version": self.ray_version,
            "fingerprint": self.fingerprint(),
            "raylets_per_host": self.raylets_per_host(),
            "nodes": [
                {"node_id": n.node_id, "ip": n.ip, "hostname": n.hostname, "head": n.is_head, "ray_gpus": n.ray_gpus,
                 "gpus": [g.name for g in n.gpus], "gpu_memory_total_mb": [g.memory_total_mb for g in n.gpus],
                 "accelerator": n.accelerator, "nvml_error": n.nvml_error}
                for n in self.nodes
            ],
        }


__all__ = ["RAY_CONNECTION_ENV", "ClusterInventory", "NodeInfo", "ray_address"]
