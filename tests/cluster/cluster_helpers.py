"""What the cluster tests share: the fake NVML's location, the test cluster's handle, and a reader of its actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pytest_mgpu.cluster.local import LocalRayCluster

#: Each test module here starts with ``pytest.importorskip("ray", reason=NEEDS_RAY)``.
NEEDS_RAY = "the cluster tests need ray (pip install 'pytest-mgpu[ray]'; nox -s ray)"

FAKE_NVML = Path(__file__).parent / "fake_nvml"
H100 = "NVIDIA H100 80GB HBM3"

#: Alive actors in the cluster, as JSON lines, read by a driver of its own in a subprocess.
LIST_ACTORS = r"""
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
for a in ray._private.state.actors().values():
    if a["State"] != "DEAD":
        print(json.dumps({"name": a["Name"], "class": a["ActorClassName"], "node": a["Address"]["NodeID"]}))
print(json.dumps({"free_gpus": ray.available_resources().get("GPU", 0)}))
"""


@dataclass
class Cluster:
    """The running test cluster and what a test needs to use it."""

    local: LocalRayCluster
    used_dir: Path

    @property
    def address(self) -> str:
        return self.local.address

    def env(self) -> dict[str, str]:
        return self.local.connection_env()

    def alive_actors(self) -> tuple[list[dict[str, str]], float]:
        """(alive actors, free GPUs) as the GCS sees them now."""
        env = {**os.environ, **self.env()}
        out = subprocess.run([sys.executable, "-c", LIST_ACTORS, self.address], capture_output=True, text=True,
                             timeout=120, env=env, check=True)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        free = next(r["free_gpus"] for r in rows if "free_gpus" in r)
        return [r for r in rows if "name" in r], float(free)

    def hold_memory(self, gpu: int, mb: int) -> None:
        """Make the fake NVML report ``mb`` MiB in use on GPU ``gpu`` (0: release it)."""
        (self.used_dir / f"gpu{gpu}").write_text(str(mb))
