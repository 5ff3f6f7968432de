"""The adapter protocol and the subprocess lifecycle every adapter shares.

An *adapter* (:class:`EngineAdapter`) knows how to launch one kind of engine; a *running engine*
(:class:`RunningEngine`) is one started server: an OpenAI-compatible HTTP server run as a
subprocess in its own process group (``start_new_session``), bound to 127.0.0.1 on a free port.
The group is led by :mod:`.supervisor`, which ends the engine and everything it started when
pytest dies (even by ``kill -9``). The pytest process never imports an engine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..gpus import GpuInventory, memory_used_mb, wait_memory_back
from ..layout import Layout
from ..models import Model
from ..models.tokenizer import TokenizerRef
from . import supervisor
from .cluster_spec import ClusterSpec

#: Environment variables always handed on to an engine (when set), in addition to its own.
#: NCCL's safety switches (NVLink multicast off, etc.) must survive into every subprocess.
PASSTHROUGH_ENV_PREFIXES = (
    "NCCL_", "CUDA_", "NVIDIA_", "LD_", "HF_", "TORCH", "VLLM_", "TLLM_", "OMPI_", "PMIX_", "UCX_",
)
PASSTHROUGH_ENV = (
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TERM",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EngineSpec:
    """Everything that defines one engine instance; its :attr:`key` decides reuse."""

    engine: str
    model: Model
    layout: Layout
    options: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    python: str = "python"
    #: Where the engine may keep compile caches between starts (per engine version); None: its default.
    cache_dir: Path | None = None
    #: The Ray cluster the engine runs on (``--mgpu-ray-address``); None: this host's GPUs.
    cluster: ClusterSpec | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Engine, model, layout, options, env and interpreter: tests sharing it share an engine."""
        return (self.engine, str(self.model.path), self.layout, self.options, self.env, self.python)

    @property
    def options_dict(self) -> dict[str, str]:
        """Engine options as a dict."""
        return dict(self.options)

    @property
    def env_dict(self) -> dict[str, str]:
        """The engine's own environment variables as a dict."""
        return dict(self.env)


@dataclass
class RunningEngine:
    """A started engine as the ``mgpu_engine`` fixture exposes it."""

    name: str
    version: str
    base_url: str
    layout: Layout
    model: Model
    log_path: Path
    gpu_ids: list[int] = field(default_factory=list)
    pid: int = 0
    command: list[str] = field(default_factory=list)
    spec: EngineSpec | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    memory_before_mb: dict[int, int] = field(default_factory=dict)
    started_s: float = 0.0  # seconds from launch to ready
    #: The tokenizer the engine serves with; None when it cannot tokenize text prompts.
    tokenizer: TokenizerRef | None = None
    #: ``MGPU_ENGINE`` in the environment of every process of this start (see :mod:`.supervisor`).
    tag: str = ""
    #: The engine's own process, a child of the supervisor whose pid is :attr:`pid` (0: unknown).
    engine_pid: int = 0

    @property
    def num_gpus(self) -> int:
        """GPUs (or CPU workers) the layout occupies: tp x pp."""
        return self.layout.num_gpus

    @property
    def alive(self) -> bool:
        """Whether the server is still running: its supervisor and the engine process under it."""
        if self.process is None or self.process.poll() is not None:
            return False
        return not self.engine_pid or supervisor.alive(self.engine_pid)

    def exit_code(self, wait_s: float = 2.0) -> int | None:
        """The engine's exit code (negative: killed by that signal), waiting up to ``wait_s`` for it."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None

    def describe(self) -> str:
        """One line for headers and errors."""
        gpus = ",".join(map(str, self.gpu_ids)) or "none"
        return f"{self.name} {self.version} {self.layout.id} model={self.model.name} gpus={gpus} url={self.base_url}"


class EngineAdapter:
    """Launches one kind of engine: run its server command, poll readiness, stop the whole process group.

    Subclasses (one per engine) provide :meth:`command`, :meth:`version` and may extend :meth:`environment`,
    :meth:`preflight` and :meth:`check_supported`.
    """

    name = "base"
    health_path = "/health"
    #: Called with the log path on every readiness poll (live progress); set by the engine manager.
    on_wait: Callable[[Path], None] | None = None
    start_timeout_s = 600.0
    stop_timeout_s = 30.0
    memory_timeout_s = 120.0
    #: Seconds an idle engine has to answer ``health_path`` before a test gets it.
    health_timeout_s = 5.0

    # --- to override -------------------------------------------------------------------------
    def version(self, python: str, env: Mapping[str, str] | None = None) -> str:
        """The engine's version as installed for ``python`` run with ``env`` over this process's
        environment (``PYTHONPATH`` may choose the install); raise EngineUnavailable if absent."""
        raise NotImplementedError

    def command(self, spec: EngineSpec, port: int, inventory: GpuInventory, gpu_ids: Sequence[int]) -> list[str]:
        """The argv that starts the server."""
        raise NotImplementedError

    def check_supported(self, spec: EngineSpec, inventory: GpuInventory, version: str) -> None:
        """Fail fast (EngineError) when this engine version cannot run on these cards."""

    def preflight(self, spec: EngineSpec, gpu_ids: Sequence[int], env: Mapping[str, str], log_dir: Path) -> None:
        """Checks to run before a start (e.g. an NCCL all-reduce); raise EngineError on failure."""

    def tokenizer(self, spec: EngineSpec, work_dir: Path) -> TokenizerRef | None:
        """The tokenizer this engine serves ``spec`` with (files go under ``work_dir``); None: token ids only."""
        return None

    def environment(self, spec: EngineSpec, gpu_ids: Sequence[int], inventory: GpuInventory) -> dict[str, str]:
        """The explicit environment for the engine process."""
        env = {k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_ENV_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        if inventory.count and gpu_ids:  # none on a Ray cluster: Ray places the workers
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        if spec.cluster is not None:  # RAY_* is not passed through: the cluster's address and token explicitly
            env.update(dict(spec.cluster.env))
        env.update(dict(spec.env))
        return env

    # --- shared lifecycle --------------------------------------------------------------------
    def start(
        self,
        spec: EngineSpec,
        inventory: GpuInventory,
        gpu_ids: Sequence[int],
        log_dir: Path,
        start_timeout_s: float | None = None,
    ) -> RunningEngine:
        """Start the server and wait until it answers ``health_path``; clean up on any failure."""
        version = self.version(spec.python, spec.env_dict)
        self.check_supported(spec, inventory, version)
        env = self.environment(spec, gpu_ids, inventory)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.preflight(spec, gpu_ids, env, log_dir)
        port = free_port()
        argv = self.command(spec, port, inventory, gpu_ids)
        log_path = log_dir / f"{spec.engine}-{spec.layout.id}-{port}.log"
        before = memory_used_mb(gpu_ids) if inventory.count else {}
        # Tags that every process of this engine inherits: who owns it (a later run ends the engines
        # of a dead one) and which start it belongs to (its stop ends exactly these).
        tag = uuid.uuid4().hex
        env[supervisor.OWNER_ENV] = supervisor.owner_token()
        env[supervisor.ENGINE_ENV] = tag
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(
                supervised(argv, self.stop_timeout_s), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        running = RunningEngine(
            name=spec.engine, version=version, base_url=f"http://127.0.0.1:{port}", layout=spec.layout,
            model=spec.model, log_path=log_path, gpu_ids=list(gpu_ids), pid=proc.pid, command=argv,
            spec=spec, process=proc, memory_before_mb=before, tokenizer=self.tokenizer(spec, log_dir),
            tag=tag, engine_pid=supervisor.first_child(proc.pid),
        )
        t0 = time.monotonic()
        try:
            self.wait_ready(running, start_timeout_s or self.start_timeout_s)
        except BaseException:
            self.stop(running, check_memory=False)
            raise
        running.started_s = time.monotonic() - t0
        return running

    def wait_ready(self, running: RunningEngine, timeout_s: float) -> None:
        """Poll the health endpoint until 200; raise EngineError if the process dies or time runs out.

        Any other answer (e.g. 503 from a server that listens while it loads the model) or no
        connection at all means "not ready yet"; the last one is named if time runs out.
        """
        url = running.base_url + self.health_path
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        last = "none (nothing listening yet)"
        while True:
            assert running.process is not None
            rc = running.process.poll()
            if rc is not None:
                raise EngineError(
                    f"{running.name} exited with code {rc} before it became ready ({running.layout.id})",
                    running.log_path,
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = http_error_summary(exc)
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError) as exc:
                last = f"no answer ({getattr(exc, 'reason', exc)})"
            if self.on_wait is not None:
                self.on_wait(running.log_path)
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{running.name} did not become ready within {timeout_s:.0f}s ({running.layout.id}); "
                    f"last answer to {self.health_path}: {last}; raise --mgpu-start-timeout if it is only slow",
                    running.log_path,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def health_problem(self, running: RunningEngine, timeout_s: float | None = None) -> str | None:
        """Why ``running`` cannot be handed to a test (dead, or no 200 from ``health_path`` in time), or None."""
        if running.process is None:
            return "it has no process"
        if not running.alive:
            return f"it exited with code {running.exit_code()}"
        deadline = self.health_timeout_s if timeout_s is None else timeout_s
        try:
            with urllib.request.urlopen(running.base_url + self.health_path, timeout=deadline) as resp:
                if resp.status == 200:
                    return None
                return f"GET {self.health_path} answered {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"GET {self.health_path} answered {exc.code}"
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                return f"no answer to GET {self.health_path} within {deadline:g}s"
            return f"GET {self.health_path} failed ({reason})"

    def stop(self, running: RunningEngine, check_memory: bool = True) -> None:
        """Stop the process group (TERM, then KILL) and every process tagged with this start, then wait for GPU memory.

        The group is led by the engine's supervisor, which stops the engine's descendants that
        left the group too; processes carrying the start's tag are ended here in case the
        supervisor itself was killed.
        """
        proc = running.process
        if proc is not None:
            kill_group(proc, self.stop_timeout_s)
        if running.tag:
            left = set(supervisor.tagged(supervisor.ENGINE_ENV, running.tag))
            if running.pid and not supervisor.alive(running.pid):  # its session, once its leader is gone
                left |= set(supervisor.session_members(running.pid))
            supervisor.end_processes(left, self.stop_timeout_s)
        if check_memory and running.memory_before_mb:
            wait_memory_back(running.memory_before_mb, timeout_s=self.memory_timeout_s)


def supervised(argv: Sequence[str], grace_s: float) -> list[str]:
    """``argv`` run under :mod:`.supervisor` (by this interpreter, isolated), which ends it when pytest dies."""
    return [
        sys.executable, "-I", supervisor.__file__, "--owner", str(os.getpid()), "--grace", f"{grace_s:g}", "--", *argv,
    ]


def http_error_summary(exc: urllib.error.HTTPError, limit: int = 240) -> str:
    """``HTTP <code> <body start>`` of an error answer, on one line; closes the response."""
    try:
        body = exc.read(limit).decode("utf-8", "replace")
    except OSError:
        body = ""
    finally:
        exc.close()
    return " ".join(f"HTTP {exc.code} {body}".split())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after ``grace_s``, and reap."""
    pgid = proc.pid  # start_new_session makes the leader's pid the group id
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
        pass


def python_dist_version(python: str, dists: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """Version of the first installed distribution in ``dists`` for interpreter ``python``.

    Runs in a subprocess (so that the engine is never imported here), with ``env`` over this
    process's environment: two installs told apart by ``PYTHONPATH`` report their own versions.
    """
    code = (
        "import json,sys\nfrom importlib import metadata\n"
        "for d in json.loads(sys.argv[1]):\n"
        "    try:\n        print(metadata.version(d)); break\n"
        "    except metadata.PackageNotFoundError: pass\n"
    )
    try:
        out = subprocess.run(
            [python, "-c", code, json.dumps(list(dists))], capture_output=True, text=True, timeout=60,
            env={**os.environ, **env} if env else None,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    v = out.stdout.strip()
    return v or None
