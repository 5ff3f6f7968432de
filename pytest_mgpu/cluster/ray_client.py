"""The Ray client of a cluster session: connect, read the cluster, check it around every engine start and stop.

Imported only when the session has a Ray address (``--mgpu-ray-address`` or ``RAY_ADDRESS``), so
``ray`` is imported by the pytest process only then; it is a client library there, the engines run
as subprocesses as always. What it does:

* :meth:`RayCluster.connect` - a TCP check and a ``ray.init`` in a subprocess with a deadline (an
  unreachable address makes ``ray.init`` retry for minutes), then the session's own driver;
* :meth:`RayCluster.inventory` - the alive nodes (``ray.nodes()``) and one probe task per node,
  pinned to it (:func:`.probe.probe_node`: NVML, host identity);
* :class:`OnCluster` - wraps an engine adapter: before a start, enough free GPUs in Ray and a
  snapshot of the actors and of every node's GPU memory; after the engine is ready, its workers
  are on as many nodes as the layout asks; after a stop, no actor it made is left, Ray's GPUs and
  every node's GPU memory are back.

The cluster is assumed to be the session's, as local GPUs are: an actor or GPU memory that someone
else takes during a run is reported as left behind by the engine.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..engines.base import EngineAdapter, EngineSpec, RunningEngine
from ..engines.cluster_spec import ClusterSpec
from ..errors import ClusterError, ClusterTeardownError, EngineError
from ..gpus import GpuInfo, GpuInventory
from ..layout import Layout
from . import RAY_CONNECTION_ENV, ClusterInventory, NodeInfo, probe

log = logging.getLogger("pytest_mgpu.cluster")

#: The session's driver runs in its own namespace, apart from the engines' actors.
NAMESPACE = "pytest-mgpu"
#: Seconds for the subprocess that checks the address answers as a Ray cluster.
CONNECT_TIMEOUT_S = 60.0
#: Seconds for one round of probe tasks (the first one starts a worker per node).
PROBE_TIMEOUT_S = 60.0
#: Seconds a stopped engine's actors and GPUs get to go away (Ray ends a dead driver's actors).
ACTOR_TIMEOUT_S = 15.0
#: Seconds every node's GPU memory gets to come back, and the slack allowed per GPU.
MEMORY_TIMEOUT_S = 120.0
MEMORY_SLACK_MB = 512

#: ``ray.init`` in a subprocess: does the address answer as a Ray cluster, and how many nodes are alive?
CONNECT_CHECK = r"""
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps({"nodes": len([n for n in ray.nodes() if n["Alive"]]), "ray": ray.__version__}))
"""

# The probe imports nothing from the plugin; ship it by value so nodes need not have pytest-mgpu.
ray.cloudpickle.register_pickle_by_value(probe)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` of a GCS address; a ray:// (Ray Client) or malformed address is a ClusterError."""
    if "://" in address:
        raise ClusterError(
            f"Ray address {address!r} is a Ray Client address; give the cluster's GCS address host:port "
            f"(the head's `ray start --head --port`), and run pytest on a node of the cluster"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port, e.g. 10.0.0.1:6379")
    return host, int(port)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (ClusterError) when nothing listens at the address."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"nothing answers at {host}:{port} ({exc})") from None


@dataclass
class Snapshot:
    """The cluster just before an engine starts: what its stop must give back."""

    layout: Layout
    actors: set[str]  # alive actor ids
    free_gpus: float
    memory_mb: dict[tuple[str, int], int]  # (node ip, GPU index) -> used MiB
    workers: dict[str, str] = field(default_factory=dict)  # engine worker actor name -> node ip (after ready)


class RayCluster:
    """The session's connection to one Ray cluster."""

    def __init__(self, address: str, source: str = "--mgpu-ray-address") -> None:
        self.address = address
        self.source = source
        self._nodes: dict[str, str] = {}  # node id -> ip, from the last inventory
        self._probe_task: Any = None

    # --- connecting and reading --------------------------------------------------------------
    @classmethod
    def connect(
        cls, address: str, source: str = "--mgpu-ray-address", timeout_s: float = CONNECT_TIMEOUT_S
    ) -> RayCluster:
        """Check the address and start this process's driver; ClusterError says why it cannot."""
        check_reachable(address)
        try:
            out = subprocess.run(
                [sys.executable, "-c", CONNECT_CHECK, address], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"{address} accepts connections but no Ray cluster answered within {timeout_s:.0f}s"
            ) from None
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
            cause = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
            auth = "Authentication" in out.stderr
            hint = (" (token authentication is on: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH as for the cluster)"
                    if auth else "")
            raise ClusterError(f"ray.init({address!r}) failed{hint}: {cause[-500:]}")
        prev = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
        finally:
            # ray.init makes SIGTERM exit at once; the plugin's handler must still stop the engines.
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
        return cls(address, source)

    def close(self) -> None:
        """Disconnect this process's driver."""
        if ray.is_initialized():
            ray.shutdown()

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in ray.nodes() if n.get("Alive")]

    def probe(self, node_ids: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Run :func:`.probe.probe_node` once on each node (pinned there); a failed node gets an ``error``."""
        if self._probe_task is None:
            self._probe_task = ray.remote(num_cpus=0, max_retries=0)(probe.probe_node)
        task = self._probe_task
        refs = {
            nid: task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
                runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}},
            ).remote()
            for nid in node_ids
        }
        out: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        for nid, ref in refs.items():
            try:
                out[nid] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                ray.cancel(ref, force=True)
                out[nid] = {"gpus": [], "error": f"probe task failed: {type(exc).__name__}: {exc}"[:300]}
        return out

    def inventory(self) -> ClusterInventory:
        """The alive nodes with Ray's GPU counts and, from a probe per node, NVML's view of them."""
        alive = self._alive_nodes()
        probes = self.probe([n["NodeID"] for n in alive])
        nodes = []
        for n in alive:
            res = n.get("Resources", {})
            p = probes.get(n["NodeID"], {})
            gpus = tuple(
                GpuInfo(g["index"], g["name"], g["memory_total_mb"], g.get("uuid", ""),
                        tuple(g["compute_capability"]) if g.get("compute_capability") else None)
                for g in p.get("gpus", [])
            )
            accel = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
            nodes.append(NodeInfo(
                node_id=n["NodeID"], ip=n["NodeManagerAddress"], ray_gpus=int(res.get("GPU", 0)), gpus=gpus,
                accelerator=accel, host=p.get("host", ""), hostname=p.get("hostname", ""),
                is_head="node:__internal_head__" in res, nvml_error=p.get("error"), driver=p.get("driver"),
            ))
        nodes.sort(key=lambda x: (not x.is_head, x.ip, x.node_id))
        self._nodes = {x.node_id: x.ip for x in nodes}
        return ClusterInventory(self.address, nodes, ray.__version__)

    def spec(self, inv: ClusterInventory, environ: Mapping[str, str]) -> ClusterSpec:
        """The :class:`ClusterSpec` engines get: the address and connection variables, raylets per host."""
        env = {"RAY_ADDRESS": self.address, "RAY_USAGE_STATS_ENABLED": "0"}
        env.update({k: environ[k] for k in RAY_CONNECTION_ENV if k in environ})
        return ClusterSpec(self.address, tuple(sorted(env.items())), inv.raylets_per_host(), len(inv.nodes))

    def gpu_memory(self) -> dict[tuple[str, int], int]:
        """Used MiB of every GPU NVML can read on every node, by (node ip, GPU index)."""
        ids = list(self._nodes) or [n["NodeID"] for n in self._alive_nodes()]
        out = {}
        for nid, p in self.probe(ids).items():
            for g in p.get("gpus", []):
                out[(self._nodes.get(nid, nid[:8]), int(g["index"]))] = int(g["memory_used_mb"])
        return out

    def actors(self) -> dict[str, dict[str, Any]]:
        """Alive actors by id, from the GCS actor table (``ray._private.state``: no dashboard needed)."""
        table = ray._private.state.actors()
        return {aid: a for aid, a in table.items() if a.get("State") != "DEAD"}

    def free_gpus(self) -> float:
        """GPUs no actor or placement group holds now."""
        return float(ray.available_resources().get("GPU", 0.0))

    # --- around an engine --------------------------------------------------------------------
    def snapshot(self, layout: Layout) -> Snapshot:
        """Before a start: enough free GPUs (ClusterError otherwise), and what the stop must give back."""
        free = self.free_gpus()
        actors = self.actors()
        if free < layout.num_gpus:
            held = ", ".join(sorted(a.get("Name") or a.get("ActorClassName", "?") for a in actors.values()))
            raise ClusterError(
                f"the Ray cluster at {self.address} has {free:g} free GPU(s), {layout.id} needs {layout.num_gpus}; "
                f"alive actors: {held or 'none'} (another engine, or one left behind?)"
            )
        return Snapshot(layout, set(actors), free, self.gpu_memory())

    def check_placement(self, snap: Snapshot, match: Sequence[str], what: str) -> dict[str, str]:
        """After ready: the engine's worker actors are on ``layout.nodes`` nodes, ``gpus_per_node`` each.

        ``match`` holds actor name prefixes and class names of the engine's workers. Returns worker
        name -> node ip; ClusterError when the placement differs from the layout.
        """
        lay = snap.layout
        workers = {
            aid: a for aid, a in self.actors().items()
            if aid not in snap.actors and any((a.get("Name") or "").startswith(m) or a.get("ActorClassName") == m
                                              for m in match)
        }
        if not workers:
            log.warning("%s: no worker actor of the engine found in the cluster; placement not checked", what)
            return {}
        where = {(a.get("Name") or aid): self._nodes.get(a["Address"]["NodeID"], a["Address"]["NodeID"][:8])
                 for aid, a in workers.items()}
        per_node: dict[str, int] = {}
        for ip in where.values():
            per_node[ip] = per_node.get(ip, 0) + 1
        snap.workers = where
        if len(per_node) != lay.nodes or any(c != lay.gpus_per_node for c in per_node.values()):
            got = ", ".join(f"{ip}: {c}" for ip, c in sorted(per_node.items()))
            raise ClusterError(
                f"{what} placed its {len(where)} workers on {len(per_node)} node(s) ({got}); layout {lay.id} asks "
                f"for {lay.nodes} node(s) with {lay.gpus_per_node} GPU(s) each. Ray packs workers onto as few "
                f"nodes as it can: give each node exactly tp*pp/nodes GPUs (ray start --num-gpus), or change "
                f"the layout's nodes"
            )
        return where

    def teardown(
        self, snap: Snapshot, what: str, actor_timeout_s: float = ACTOR_TIMEOUT_S,
        memory_timeout_s: float = MEMORY_TIMEOUT_S, slack_mb: int = MEMORY_SLACK_MB,
    ) -> None:
        """After the engine's processes are gone: its actors, Ray's GPUs and every node's GPU memory are back.

        Actors still alive after ``actor_timeout_s`` are killed (named ones; Ray's API needs a name
        for that), and a :class:`ClusterTeardownError` names them; so do GPUs Ray still holds and GPU
        memory that does not come back within ``memory_timeout_s``.
        """
        deadline = time.monotonic() + actor_timeout_s
        while True:
            left = {aid: a for aid, a in self.actors().items() if aid not in snap.actors}
            free = self.free_gpus()
            if (not left and free >= snap.free_gpus) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        problems = []
        if left:
            names = sorted((a.get("Name") or f"{a.get('ActorClassName')} {aid[:8]}") for aid, a in left.items())
            killed = self._kill_named({a.get("Name") for a in left.values() if a.get("Name")})
            problems.append(
                f"{len(left)} Ray actor(s) outlived {what} by {actor_timeout_s:.0f}s: {', '.join(names)}"
                + (f" (killed {', '.join(sorted(killed))})" if killed else "")
            )
        elif free < snap.free_gpus:
            problems.append(
                f"Ray still holds {snap.free_gpus - free:g} GPU(s) {actor_timeout_s:.0f}s after {what} stopped "
                f"(a placement group left behind?)"
            )
        if snap.memory_mb:
            held = self._wait_memory(snap.memory_mb, memory_timeout_s, slack_mb)
            if held:
                detail = ", ".join(f"node {ip} GPU {i}: +{mb} MiB" for (ip, i), mb in sorted(held.items()))
                problems.append(
                    f"GPU memory did not come back within {memory_timeout_s:.0f}s after {what} stopped ({detail}); "
                    f"a process may still hold it (nvidia-smi on that node)"
                )
        if problems:
            raise ClusterTeardownError("; ".join(problems))

    def _wait_memory(
        self, before: dict[tuple[str, int], int], timeout_s: float, slack_mb: int
    ) -> dict[tuple[str, int], int]:
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.gpu_memory()
            held = {k: now[k] - v for k, v in before.items() if k in now and now[k] - v > slack_mb}
            if not held or time.monotonic() > deadline:
                return held
            time.sleep(1.0)

    def _kill_named(self, names: set[str | None]) -> list[str]:
        killed = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["name"] in names:
                try:
                    ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)
                    killed.append(entry["name"])
                except Exception as exc:  # gone meanwhile, or not ours to kill
                    log.warning("could not kill actor %s: %s", entry["name"], exc)
        return killed

    def wrap(self, adapter: EngineAdapter) -> OnCluster:
        """``adapter``, checked around every start and stop on this cluster."""
        return OnCluster(adapter, self)


class OnCluster(EngineAdapter):
    """An engine adapter whose engines run on the cluster: the checks of :class:`RayCluster` around it.

    The inner adapter starts and stops the engine's process group on this host as always (a hung
    engine is killed the same way); Ray then ends the actors that engine's driver owned, and
    :meth:`RayCluster.teardown` checks that it did.
    """

    def __init__(self, inner: EngineAdapter, cluster: RayCluster) -> None:
        self.inner = inner
        self.cluster = cluster
        self.name = inner.name
        self.snapshots: dict[int, Snapshot] = {}

    def version(self, python: str, env: Mapping[str, str] | None = None) -> str:
        """The inner adapter's engine version."""
        return self.inner.version(python, env)

    def health_problem(self, running: RunningEngine, timeout_s: float | None = None) -> str | None:
        """The inner adapter's health check (the server runs on this host)."""
        return self.inner.health_problem(running, timeout_s)

    def start(
        self,
        spec: EngineSpec,
        inventory: GpuInventory,
        gpu_ids: Sequence[int],
        log_dir: Path,
        start_timeout_s: float | None = None,
    ) -> RunningEngine:
        """Check the cluster, start the engine (no local GPUs: Ray places it), check where its workers went."""
        what = f"{spec.engine} {spec.layout.id}"
        snap = self.cluster.snapshot(spec.layout)
        try:
            running = self.inner.start(spec, inventory, [], log_dir, start_timeout_s)
        except BaseException as exc:
            try:
                self.cluster.teardown(snap, what)
            except ClusterTeardownError as tear:
                if isinstance(exc, EngineError):
                    raise EngineError(f"{exc}\nand after it: {tear}") from None
            raise
        try:
            match = getattr(self.inner, "ray_worker_match", ())
            if match:
                where = self.cluster.check_placement(snap, match, what)
                if where:
                    with open(running.log_path, "a") as fh:
                        fh.write(f"[pytest-mgpu] Ray workers: {json.dumps(where, sort_keys=True)}\n")
        except BaseException:
            self.inner.stop(running, check_memory=False)
            self.cluster.teardown(snap, what)
            raise
        self.snapshots[running.pid] = snap
        return running

    def stop(self, running: RunningEngine, check_memory: bool = True) -> None:
        """Stop the engine's process group as the inner adapter does, then check the cluster got everything back."""
        snap = self.snapshots.pop(running.pid, None)
        self.inner.stop(running, check_memory)
        if snap is not None:
            self.cluster.teardown(snap, f"{running.name} {running.layout.id}")
