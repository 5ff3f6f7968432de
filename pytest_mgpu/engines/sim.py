"""Adapter for the built-in simulated engine (``--mgpu-engine sim``): no GPUs needed."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import __version__
from ..gpus import GpuInventory
from ..models.tokenizer import SYNTHETIC, TokenizerRef
from ..sim.model import DEFAULT_GPU
from .base import EngineAdapter, EngineSpec


class SimAdapter(EngineAdapter):
    """Runs ``python -m pytest_mgpu.sim`` timed by the roofline model.

    ``spec.options`` become ``--opt KEY=VALUE`` (see docs/sim.md); option ``gpu`` picks the GPU
    profile (default ``v100-16gb``). The sim occupies no real GPU, so ``gpu_ids`` is ignored. A
    layout over several nodes adds ``--opt nodes=N`` (the model's slower links between nodes). On a
    Ray cluster it runs :mod:`pytest_mgpu.sim.ray_workers`, which holds one stand-in worker actor per
    GPU in the cluster while it serves, as vLLM's Ray executor does.
    """

    name = "sim"
    #: Names of the stand-in worker actors in a Ray cluster (see :mod:`pytest_mgpu.sim.ray_workers`).
    ray_worker_match = ("mgpu_sim_Worker_",)
    start_timeout_s = 60.0
    stop_timeout_s = 5.0

    def version(self, python: str, env: Mapping[str, str] | None = None) -> str:
        """The plugin's version: the sim ships with it."""
        return __version__

    def tokenizer(self, spec: EngineSpec, work_dir: Path) -> TokenizerRef | None:
        """The sim counts a text prompt's whitespace-separated words, as the synthetic tokenizer does."""
        return TokenizerRef(SYNTHETIC)

    def environment(self, spec: EngineSpec, gpu_ids: Sequence[int], inventory: GpuInventory) -> dict[str, str]:
        """The base environment, with this package importable by ``spec.python`` from any cwd."""
        env = super().environment(spec, gpu_ids, inventory)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return env

    def command(self, spec: EngineSpec, port: int, inventory: GpuInventory, gpu_ids: Sequence[int]) -> list[str]:
        """``python -m pytest_mgpu.sim --model DIR --tp N --pp N ... --opt k=v``."""
        opts = dict(spec.options)
        gpu = opts.pop("gpu", DEFAULT_GPU)
        if spec.layout.nodes > 1:
            opts["nodes"] = str(spec.layout.nodes)  # the layout's, whatever an option says
        module = "pytest_mgpu.sim.ray_workers" if spec.cluster is not None else "pytest_mgpu.sim"
        argv = [
            spec.python, "-m", module,
            "--model", str(spec.model.path),
            "--served-model-name", spec.model.name,
            "--tp", str(spec.layout.tp), "--pp", str(spec.layout.pp),
            "--gpu", gpu,
            "--host", "127.0.0.1", "--port", str(port),
        ]
        if spec.layout.gpu_mem_gb is not None:
            argv += ["--gpu-mem-gb", f"{spec.layout.gpu_mem_gb:g}"]
        for key, value in opts.items():
            argv += ["--opt", f"{key}={value}"]
        return argv
