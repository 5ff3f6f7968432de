"""Pre-start check of a multi-GPU layout: a small NCCL all-reduce in a subprocess, with a timeout.

A layout whose GPUs cannot all-reduce (broken P2P, NVLink multicast trouble, leftover processes)
otherwise shows up as an engine that hangs for minutes at start-up. This check runs the engine's
own interpreter (its torch), spawns ``world_size`` ranks over the GPUs in ``CUDA_VISIBLE_DEVICES``,
all-reduces a few MiB, and checks the sum. It never hangs: on timeout the whole process group is
killed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import EngineError
from .base import free_port, kill_group

DEFAULT_TIMEOUT_S = 120.0

#: Seen to help when NCCL hangs or crashes on a host (P2P over PCIe/NVLink broken or disabled).
FIX_HINT = (
    "try `--mgpu-engine-env NCCL_P2P_DISABLE=1` (and check that no leftover process holds the GPUs: "
    "nvidia-smi); NCCL_DEBUG=INFO in --mgpu-engine-env shows more"
)

SCRIPT = r'''
import os, sys, datetime
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def rank_main(rank, world, port, numel):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    x = torch.ones(numel, device="cuda")
    for _ in range(3):
        dist.all_reduce(x)
        x.fill_(1.0)
    dist.all_reduce(x)
    torch.cuda.synchronize()
    got = float(x[0].item())
    if got != world:
        raise SystemExit(f"rank {rank}: all-reduce gave {got}, expected {world}")
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    world, port, numel = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if torch.cuda.device_count() < world:
        raise SystemExit(f"only {torch.cuda.device_count()} CUDA devices visible, need {world}")
    mp.spawn(rank_main, args=(world, port, numel), nprocs=world, join=True)
    print(f"MGPU_PREFLIGHT_OK world={world} nccl={torch.cuda.nccl.version()}", flush=True)
'''

#: (python, gpu ids, relevant env) combinations that passed in this process.
_passed: set[tuple[str, tuple[int, ...], tuple[tuple[str, str], ...]]] = set()


def _env_key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(("NCCL_", "CUDA_"))))


def nccl_allreduce_check(
    python: str,
    gpu_ids: Sequence[int],
    env: Mapping[str, str],
    log_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    numel: int = 1 << 20,
    cache: bool = True,
) -> float:
    """Run the all-reduce over ``gpu_ids`` with ``python``; return its wall time in seconds.

    ``env`` is the engine's environment (its ``CUDA_VISIBLE_DEVICES`` selects the GPUs). Raises
    :class:`EngineError` with the output tail and a fix hint when the check fails or exceeds
    ``timeout_s``. A combination that passed once is not checked again (``cache``).
    """
    world = len(gpu_ids)
    key = (python, tuple(gpu_ids), _env_key(env))
    if cache and key in _passed:
        return 0.0
    log_dir.mkdir(parents=True, exist_ok=True)
    gpus = "-".join(map(str, gpu_ids)) or "none"
    script = log_dir / "mgpu_preflight_allreduce.py"
    script.write_text(SCRIPT)
    log_path = log_dir / f"preflight-nccl-gpus{gpus}.log"
    argv = [python, str(script), str(world), str(free_port()), str(numel)]
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), start_new_session=True,
        )
    try:
        rc: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        kill_group(proc, grace_s=5.0)  # also ends spawned ranks left behind by a normal exit
    elapsed = time.monotonic() - t0
    what = f"NCCL all-reduce preflight on GPUs {','.join(map(str, gpu_ids))} (world size {world})"
    if rc is None:
        raise EngineError(f"{what} did not finish within {timeout_s:.0f}s and was killed; {FIX_HINT}", log_path)
    ok = "MGPU_PREFLIGHT_OK" in log_path.read_text(errors="replace")
    if rc != 0 or not ok:
        raise EngineError(f"{what} failed with exit code {rc}; {FIX_HINT}", log_path)
    _passed.add(key)
    return elapsed
