"""The machine and commit a session runs on: the environment recorded with every result."""

from __future__ import annotations

import platform
import socket
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import METRIC_DEFINITION_VERSION, __version__
from .gpus import GpuInventory


def _git(args: Sequence[str], cwd: Path | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(cwd: str | Path | None = None) -> tuple[str | None, bool]:
    """(HEAD commit, dirty flag) of the git repo at ``cwd``; (None, False) outside a repo."""
    c = Path(cwd) if cwd is not None else None
    commit = _git(["rev-parse", "HEAD"], c)
    if commit is None:
        return None, False
    status = _git(["status", "--porcelain", "--untracked-files=no"], c)
    return commit, bool(status)


def collect_env(
    fingerprint: str,
    inventory: GpuInventory | None = None,
    cwd: str | Path | None = None,
    *,
    engine: str | None = None,
    sim_gpu: str | None = None,
) -> dict[str, Any]:
    """The environment recorded with every result of a session (call once per session).

    Hardware (fingerprint, GPUs, driver, CUDA), commit, date, host and versions, pytest-benchmark
    style; with ``engine`` also the engine, the sim's GPU profile and each GPU's memory.
    """
    commit, dirty = git_commit(cwd)
    env: dict[str, Any] = {
        "fingerprint": fingerprint,
        "gpus": [g.name for g in inventory.gpus] if inventory is not None else [],
        "driver": inventory.driver if inventory is not None else None,
        "cuda": inventory.cuda if inventory is not None else None,
        "commit": commit,
        "dirty": dirty,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "plugin_version": __version__,
        "metric_definition_version": METRIC_DEFINITION_VERSION,
    }
    if engine is not None:
        env["engine"] = engine
        env["sim_gpu"] = sim_gpu if engine == "sim" else None
        env["gpu_memory_total_mb"] = [g.memory_total_mb for g in inventory.gpus] if inventory is not None else []
    return env
