"""The sim on a Ray cluster: stand-in workers placed the way vLLM's Ray executor places its own.

``python -m pytest_mgpu.sim.ray_workers <the sim server's arguments>`` connects to the cluster in
``RAY_ADDRESS``, reserves ``tp * pp`` GPUs in one placement group (``PACK``, one GPU per bundle, as
vLLM 0.26's ``RayExecutorV2`` does), starts one idle worker actor per bundle
(``mgpu_sim_Worker_<id>_TP<t>_PP<p>``), logs the node of each, and then serves exactly as
``python -m pytest_mgpu.sim``: the timing still comes from the roofline model (``--opt nodes=N``).
Like vLLM's driver, this process owns the actors: when it exits or is killed, Ray ends them and
frees the GPUs. So the plugin's cluster checks (inventory, placement, teardown) run on CI without
a GPU.

Options read here (``--opt KEY=VALUE``; :class:`~pytest_mgpu.sim.model.SimOptions` knows them, the
server ignores them):

* ``ray_leak=1`` - also start one detached actor, which outlives this process: a fault for the
  plugin's teardown check to find;
* ``ray_timeout=S`` - seconds to wait for the GPUs and the workers (default 60).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid

from ..errors import SimError
from .model import SimOptions

#: Actor name prefix, matched by the sim adapter's ``ray_worker_match``.
PREFIX = "mgpu_sim_Worker_"
NAMESPACE = "pytest-mgpu-sim"


class SimWorker:
    """An idle stand-in for one of vLLM's GPU workers: it only says where it runs."""

    def where(self) -> tuple[str, str, int]:
        """(node id, node ip, pid) of this actor."""
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), os.getpid()


def sim_options(argv: list[str]) -> SimOptions:
    """The server's ``--opt KEY=VALUE`` options, parsed as the server parses them."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--opt", action="append", default=[])
    known, _ = ap.parse_known_args(argv)
    return SimOptions.parse(dict(o.partition("=")[::2] for o in known.opt))


def log(msg: str) -> None:
    """One line to the engine log, as the sim server writes them."""
    print(f"[sim {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_workers(tp: int, pp: int, timeout_s: float, leak: bool) -> list[object]:
    """Reserve ``tp * pp`` GPUs and start one stand-in worker per GPU; returns the actor handles."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # This module is run as __main__ or imported; either way ship the class by value, so nodes need
    # not import pytest-mgpu.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    prev = signal.getsignal(signal.SIGTERM)
    ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)  # die on SIGTERM, as the sim does
    n = tp * pp
    pg = placement_group([{"GPU": 1}] * n, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except Exception:
        raise SystemExit(f"sim: error: the Ray cluster did not give {n} GPU(s) within {timeout_s:g}s") from None
    remote = ray.remote(SimWorker)
    uid = uuid.uuid4().hex[:8]
    workers = []
    for rank in range(n):
        name = f"{PREFIX}{uid}_TP{rank % tp}_PP{rank // tp}"
        workers.append(remote.options(
            name=name, num_cpus=0, num_gpus=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=rank),
        ).remote())
    where = ray.get([w.where.remote() for w in workers], timeout=timeout_s)
    log("ray: " + ", ".join(f"TP{r % tp}/PP{r // tp} on {ip}" for r, (_, ip, _) in enumerate(where)))
    if leak:
        stray = remote.options(name=f"mgpu_sim_leak_{uid}", num_cpus=0, lifetime="detached").remote()
        ray.get(stray.where.remote(), timeout=timeout_s)
        workers.append(stray)
        log("FAULT ray_leak=1: started a detached actor that outlives this process")
    return workers


def main(argv: list[str] | None = None) -> int:
    """Start the stand-in workers, then serve as ``python -m pytest_mgpu.sim``."""
    args = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    known, _ = ap.parse_known_args(args)
    try:
        opts = sim_options(args)
    except SimError as exc:  # the server reports it, with its exit code
        opts = None
        print(f"sim: error: {exc}", file=sys.stderr, flush=True)
    if "RAY_ADDRESS" not in os.environ:
        print("sim: error: RAY_ADDRESS is not set (the plugin sets it on a Ray cluster)", file=sys.stderr)
        return 2
    from .server import main as serve

    if opts is None or opts.fail_start:
        return serve(args)
    workers = start_workers(known.tp, known.pp, opts.ray_timeout, opts.ray_leak)
    try:
        return serve(args)
    finally:
        del workers


if __name__ == "__main__":
    sys.exit(main())
