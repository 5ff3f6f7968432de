"""A Ray cluster of several nodes on this host, on loopback, for CI and single-host trials.

The plugin itself never starts a cluster (it is given one with ``--mgpu-ray-address``); this module
is what CI (``nox -s ray``), the tests and ``scripts/gpu_ray.sh`` use to get one. Each
node is a ``ray start --block`` in its own session (``start_new_session``), on its own loopback
address (127.0.0.2, 127.0.0.3, ...: Ray rewrites 127.0.0.1 to the host's routable address), with
usage stats and the dashboard off, and with token authentication (a fresh token per cluster: Ray's
gRPC ports listen on every interface, so loopback addresses alone do not keep others out; and a
token left in ``~/.ray/auth_token`` by any earlier ``ray.init()`` would otherwise switch it on
half-way). Drivers need :meth:`LocalRayCluster.connection_env` in their environment.
:meth:`LocalRayCluster.stop` ends exactly those sessions: first
SIGTERM to each node's process group, then SIGKILL to every process left in the session (Ray's
workers leave the process group but not the session). It never runs ``ray stop``, which kills
every Ray process on the machine.

Command line (the GPU script uses it)::

    python -m pytest_mgpu.cluster.local start --state DIR --nodes 2 --num-gpus 1 --cuda-visible-devices 0 1
    python -m pytest_mgpu.cluster.local stop --state DIR

``start`` prints the address (``127.0.0.2:PORT``), writes ``DIR/ray.env`` (``export RAY_ADDRESS=...``
and the token variables, for ``source``) and returns while the nodes keep running; ``stop`` reads
the sessions from ``DIR/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engines.supervisor import session_members

#: ``python -c`` program that runs Ray's CLI with this interpreter (the ``ray`` script may be elsewhere).
RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"

#: Waits until ``n`` nodes are alive; prints one JSON line per node (run in a subprocess, so the
#: caller's process never connects a Ray driver).
WAIT_NODES = r"""
import json, sys, time, ray
address, n, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while True:
    alive = [x for x in ray.nodes() if x["Alive"]]
    if len(alive) >= n or time.monotonic() > deadline:
        break
    time.sleep(0.2)
for x in alive:
    print(json.dumps({"ip": x["NodeManagerAddress"], "gpus": x["Resources"].get("GPU", 0)}))
sys.exit(0 if len(alive) >= n else 3)
"""

BASE_IP = "127.0.0."
FIRST_HOST = 2


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: Every live process (zombies excluded) whose session id is ``sid``: the supervisor's /proc scan.
session_pids = session_members


@dataclass
class NodeProc:
    """One started node: its address, session id (the ``ray start`` pid) and log."""

    ip: str
    sid: int
    log: str
    num_gpus: int
    cuda_visible_devices: str | None = None


@dataclass
class LocalRayCluster:
    """``nodes`` Ray nodes on this host; ``start()`` then ``stop()`` (or use it as a context manager).

    ``num_gpus`` GPUs are declared per node (Ray accepts a count on a machine without GPUs, which
    CI uses); ``cuda_visible_devices`` gives each node its own GPUs on a real multi-GPU host.
    ``env`` is added to every node's environment and ``node_env[i]`` to node ``i``'s (a node's Ray
    workers inherit it: ``PYTHONPATH`` decides what they can import).
    """

    nodes: int = 2
    num_gpus: int = 0
    num_cpus: int = 1
    cuda_visible_devices: Sequence[str] = ()
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)
    node_env: Sequence[Mapping[str, str]] = ()
    workdir: Path | None = None
    object_store_mb: int = 100
    port: int = 0
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    procs: list[NodeProc] = field(default_factory=list)
    started_s: float = 0.0
    _own_workdir: bool = False

    @property
    def address(self) -> str:
        """The GCS address to give ``--mgpu-ray-address`` / ``RAY_ADDRESS``."""
        return f"{BASE_IP}{FIRST_HOST}:{self.port}"

    def connection_env(self) -> dict[str, str]:
        """What a driver (the plugin, an engine) needs in its environment to use this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token}

    def _node_env(self, i: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token})
        env.update(self.env)
        if i < len(self.cuda_visible_devices):
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices[i]
        if i < len(self.node_env):
            env.update(self.node_env[i])
        return env

    def _launch(self, i: int, args: list[str]) -> NodeProc:
        assert self.workdir is not None
        log = str(self.workdir / f"node{i}.log")
        common = [
            "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus),
            "--object-store-memory", str(self.object_store_mb * 2**20),
            "--disable-usage-stats", "--block",
        ]
        env = self._node_env(i)
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [self.python, "-c", RAY_CLI, "start", *args, *common],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        return NodeProc(f"{BASE_IP}{FIRST_HOST + i}", proc.pid, log, self.num_gpus, env.get("CUDA_VISIBLE_DEVICES"))

    def start(self, timeout_s: float = 120.0) -> LocalRayCluster:
        """Start the head, then the other nodes; return once every node is alive (RuntimeError otherwise)."""
        t0 = time.monotonic()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="mgpu-ray-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        head_ip = f"{BASE_IP}{FIRST_HOST}"
        self.port = self.port or free_port(head_ip)
        # Ray's sockets live under the temp dir: keep the path short (a unix socket path has 107 bytes).
        temp = f"/tmp/mgpu-ray-{self.port}"
        try:
            self.procs.append(self._launch(0, [
                "--head", "--node-ip-address", head_ip, "--port", str(self.port), "--temp-dir", temp,
                "--include-dashboard", "false", "--dashboard-port", str(free_port()),
            ]))
            self._wait_port(head_ip, self.port, t0 + timeout_s)
            for i in range(1, self.nodes):
                self.procs.append(self._launch(i, [
                    "--address", self.address, "--node-ip-address", f"{BASE_IP}{FIRST_HOST + i}",
                ]))
            left = max(5.0, timeout_s - (time.monotonic() - t0))
            out = subprocess.run(
                [self.python, "-c", WAIT_NODES, self.address, str(self.nodes), str(left)],
                capture_output=True, text=True, timeout=left + 30, env=self._node_env(0),
            )
            if out.returncode != 0:
                raise RuntimeError(
                    f"the local Ray cluster did not get {self.nodes} nodes alive within {timeout_s:.0f}s:\n"
                    f"{out.stdout}{out.stderr[-3000:]}\n{self.logs_tail()}"
                )
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        return self

    def _wait_port(self, host: str, port: int, deadline: float) -> None:
        while True:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                pass
            head = self.procs[0]
            if not session_pids(head.sid):
                raise RuntimeError(f"the Ray head exited before it listened:\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not listen on {host}:{port} in time:\n{self.logs_tail()}")
            time.sleep(0.2)

    def logs_tail(self, lines: int = 20) -> str:
        """The last lines of every node's ``ray start`` log."""
        out = []
        for p in self.procs:
            try:
                text = Path(p.log).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- {p.log} ---\n" + "\n".join(text))
        return "\n".join(out)

    def pids(self) -> list[int]:
        """Every live process of this cluster (all of its nodes' sessions)."""
        return [pid for p in self.procs for pid in session_pids(p.sid)]

    def stop(self, grace_s: float = 3.0) -> float:
        """End this cluster's processes (its sessions only) and remove its temp dir; returns the seconds taken."""
        t0 = time.monotonic()
        for p in reversed(self.procs):  # worker nodes first, the head (GCS) last
            try:
                os.killpg(p.sid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for p in self.procs:  # reap our own children (the `ray start` processes), if they are ours
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(p.sid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.05)
        if self.port:
            shutil.rmtree(f"/tmp/mgpu-ray-{self.port}", ignore_errors=True)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return time.monotonic() - t0

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- a state file, for the command line ---------------------------------------------------
    def save(self, path: Path) -> None:
        """Write what :func:`load` needs to stop this cluster from another process."""
        doc = {"port": self.port, "address": self.address, "workdir": str(self.workdir),
               "nodes": [vars(p) for p in self.procs], "started_s": round(self.started_s, 2)}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        env = path.parent / "ray.env"
        env.touch(mode=0o600)
        env.write_text("".join(f"export {k}={v}\n" for k, v in self.connection_env().items()))

    @classmethod
    def load(cls, path: Path) -> LocalRayCluster:
        """The cluster a ``start`` command saved in ``path``."""
        doc = json.loads(path.read_text())
        procs = [NodeProc(**p) for p in doc["nodes"]]
        return cls(nodes=len(procs), port=int(doc["port"]), workdir=Path(doc["workdir"]), procs=procs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_mgpu.cluster.local start|stop --state DIR ...``."""
    ap = argparse.ArgumentParser(prog="python -m pytest_mgpu.cluster.local", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="Start the nodes, print the address, leave them running")
    st.add_argument("--state", required=True, type=Path, help="Folder for the state file and the node logs")
    st.add_argument("--nodes", type=int, default=2)
    st.add_argument("--num-gpus", type=int, default=0, help="GPUs each node declares to Ray")
    st.add_argument("--num-cpus", type=int, default=1, help="CPUs each node declares to Ray")
    st.add_argument("--cuda-visible-devices", nargs="*", default=[], metavar="DEVICES",
                    help="CUDA_VISIBLE_DEVICES of each node, in order (e.g. 0 1)")
    st.add_argument("--timeout", type=float, default=120.0)
    sp = sub.add_parser("stop", help="Stop the nodes a start left running")
    sp.add_argument("--state", required=True, type=Path)
    args = ap.parse_args(argv)
    state = args.state / "cluster.json"
    if args.cmd == "start":
        c = LocalRayCluster(nodes=args.nodes, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                            cuda_visible_devices=args.cuda_visible_devices, workdir=args.state)
        try:
            c.start(args.timeout)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        c.save(state)
        print(c.address)
        print(f"{c.nodes} nodes up in {c.started_s:.1f}s; stop with: python -m pytest_mgpu.cluster.local stop "
              f"--state {args.state}", file=sys.stderr)
        return 0
    c = LocalRayCluster.load(state)
    took = c.stop()
    print(f"stopped in {took:.1f}s; processes left: {len(c.pids())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
