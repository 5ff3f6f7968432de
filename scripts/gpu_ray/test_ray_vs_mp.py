"""Real vLLM at TP=2 (and PP=2) through the plugin: run by scripts/gpu_ray.sh on a lent 2-GPU machine.

``MGPU_NODES=2`` puts the layout on two Ray nodes (vLLM's Ray executor, ``--mgpu-ray-address``);
``MGPU_NODES=1`` runs the same layout on this host with vLLM's multiprocessing executor.
``MGPU_RAY_LAYOUTS`` picks the layouts (``tp2``, ``pp2`` or ``tp2,pp2``), ``MGPU_RAY_MODEL`` the model
(default tiny-llama: config only, dummy weights), ``MGPU_RAY_REQUESTS`` the batch (default 32).
"""

import math
import os

import pytest

NODES = int(os.environ.get("MGPU_NODES", "1"))
MODEL = os.environ.get("MGPU_RAY_MODEL", "tiny-llama")
WANT = {x.strip() for x in os.environ.get("MGPU_RAY_LAYOUTS", "tp2").split(",") if x.strip()}
REQUESTS = int(os.environ.get("MGPU_RAY_REQUESTS", "32"))
LAYOUTS = [pytest.mark.layout(tp=2, pp=1, gpu_mem_gb=8, nodes=NODES)] if "tp2" in WANT else []
LAYOUTS += [pytest.mark.layout(tp=1, pp=2, gpu_mem_gb=8, nodes=NODES)] if "pp2" in WANT else []

pytestmark = [pytest.mark.gpu, pytest.mark.model(MODEL)]


def test_batch(mgpu_bench, mgpu_engine):
    """One all-at-once batch on the layout's engine (Ray or multiprocessing, by the options)."""
    r = mgpu_bench.run(input_len=128, output_len=64, num_requests=REQUESTS, request_rate=math.inf, warmup_requests=2)
    assert r.valid, r.invalid
    print(mgpu_engine.describe(), f"{r.median['output_throughput_per_gpu']:.1f} tok/s/GPU")


for _mark in LAYOUTS:
    test_batch = _mark(test_batch)
