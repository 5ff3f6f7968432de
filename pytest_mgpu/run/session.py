"""The plugin's state for one pytest session: :class:`MgpuSession`, kept in ``config.stash``.

Installing the plugin must not change the test runs of a project without mgpu tests, so the
session is built in two stages. At configure only the options are parsed and checked (pure
Python, no subprocess, no NVML). The heavy parts come when they are first needed:

* :attr:`MgpuSession.devices` (NVML, the engine choice, the fingerprint) when the first mgpu
  test function is collected; with a Ray address (``--mgpu-ray-address`` or ``RAY_ADDRESS``) it
  connects to the cluster instead and reads the cluster's GPUs (an unreachable cluster is a usage
  error before any engine starts);
* :meth:`MgpuSession.start` (the SIGTERM handler, the sweep for engines left by a dead run, the
  engine manager) when collection ends with mgpu items in it;
* :attr:`MgpuSession.env_info` (two ``git`` subprocesses) when the first result is recorded or
  an output file is written.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from ..cluster import ray_address
from ..engines import supervisor
from ..errors import EngineError
from ..gpus import GpuInventory, query_inventory
from ..machine import collect_env
from ..models import resolve_model as find_model
from .ab_settings import AbSettings, ab_settings
from .keys import ITEM_RESULTS_KEY as ITEM_RESULTS_KEY
from .keys import MGPU_FIXTURES as MGPU_FIXTURES
from .keys import SESSION_KEY as SESSION_KEY
from .keys import SPEC_KEY as SPEC_KEY
from .keys import is_mgpu_function as is_mgpu_function
from .keys import is_mgpu_item as is_mgpu_item
from .markers import TestMarks, register_markers
from .settings import Settings, build_settings, choose_engine, engine_names, engine_optional, gate_config

if TYPE_CHECKING:  # pragma: no cover - imported when the session starts, not at plugin load
    from ..cluster import ClusterInventory
    from ..cluster.ray_client import RayCluster
    from ..engines.cluster_spec import ClusterSpec
    from ..judge.ab_results import AbResult
    from ..judge.results import BenchResult
    from ..judge.verdicts import Comparison, GateConfig
    from ..models import Model
    from ..report.extension import ReportExtension
    from .engine_manager import EngineManager

#: What ``signal.getsignal`` returns: a handler, SIG_DFL/SIG_IGN, or None.
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@dataclass(frozen=True)
class Devices:
    """What the session runs on: the GPU inventory, the engine's fingerprint and visible devices."""

    inventory: GpuInventory
    fingerprint: str  # baseline key: sim-v100-16gb-x4, nvidia-h200-x4, cpu
    visible: int
    word: str  # "GPUs" or "CPU workers" or "sim GPUs"
    #: With a Ray address: the connected cluster, what it holds, and what an engine start needs of it.
    cluster: RayCluster | None = None
    cluster_inventory: ClusterInventory | None = None
    cluster_spec: ClusterSpec | None = None


@dataclass
class MgpuSession:
    """Everything the plugin keeps for one session, and what the hooks ask of it."""

    config: pytest.Config
    settings: Settings
    gate: GateConfig  # from the options, built once per session
    results: list[BenchResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)  # --mgpu-plot files written at session end
    updated: list[str] = field(default_factory=list)  # baseline entries written this session
    #: Lines printed under the ``mgpu:`` header line (e.g. engines of a dead run that were ended).
    notes: list[str] = field(default_factory=list)
    update_notes: list[str] = field(default_factory=list)  # entries replaced or at a new level on update
    #: Each gated result's comparison, by (module, entry id), for the reports.
    result_comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)
    prev_sigterm: SignalHandler = None
    #: Resolved models by directory: each model's config.json is read once per session.
    models: dict[Path, Model] = field(default_factory=dict)
    #: Parsed marks by test-function node id, from generation to item preparation.
    marks: dict[str, TestMarks] = field(default_factory=dict)
    #: Decode floors by running engine (pid, url), computed once per engine (:mod:`pytest_mgpu.report.regime`).
    rooflines: dict[tuple[int, str], dict[str, Any] | None] = field(default_factory=dict)
    #: Compact telemetry of the baseline entries the gate compared with, by entry id.
    base_telemetry: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Same-job A/B (``--mgpu-ab``): the old side and the rule; None for the stored-baseline gate.
    ab: AbSettings | None = None
    ab_results: list[AbResult] = field(default_factory=list)
    #: What modes add to the header, the summary and the output files (the A/B registers one).
    extensions: list[ReportExtension] = field(default_factory=list)
    #: The Ray cluster's address (``--mgpu-ray-address``, else ``RAY_ADDRESS``) and which of the two gave it.
    ray_address: str | None = None
    ray_source: str = ""

    #: Whether collection ended with mgpu items (set by :meth:`start`).
    started: bool = False
    #: Node ids of the selected items that use ``mgpu_bench`` (they are meant to measure).
    measuring: set[str] = field(default_factory=set)
    #: How each of those ended: node id -> (outcome, skip reason or '').
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: This run's identity, recorded with every result and baseline recording (``env.run_id``): accepting
    #: the same run twice is then a no-op, and each run writes its own results file.
    run_id: str = field(default_factory=lambda: new_run_id())
    #: ``--mgpu-shard I/N``: ``{"index", "count", "collected": every node id, "items": this shard's}``.
    shard: dict[str, Any] | None = None
    _devices: Devices | None = field(default=None, repr=False)
    _manager: EngineManager | None = field(default=None, repr=False)
    _env_info: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def configure(cls, config: pytest.Config) -> MgpuSession:
        """Parse and check the options (no NVML, no subprocess); store the session in ``config.stash``."""
        settings = build_settings(config)
        gate = gate_config(config)  # built now: a bad tolerance is a usage error, not a test failure
        address, source = ray_address(config.getoption("mgpu_ray_address", None))
        if address and settings.engine_named and settings.engine == "trtllm":
            raise pytest.UsageError(
                f"{source}={address}: the TensorRT-LLM adapter does not run on Ray clusters "
                f"(multi-node layouts use vLLM's Ray executor); drop {source} or use --mgpu-engine vllm"
            )
        sess = cls(
            config=config, settings=settings, gate=gate, ab=ab_settings(config), ray_address=address, ray_source=source
        )
        config.stash[SESSION_KEY] = sess
        return sess

    # --- the heavy parts, built on first use ---------------------------------------------------
    @property
    def devices(self) -> Devices:
        """NVML's inventory, the engine choice (sim without GPUs) and the fingerprint; read once.

        With a Ray address, the cluster's: connected here, a usage error when it cannot be reached.
        """
        if self._devices is None and self.ray_address:
            self._devices = self._cluster_devices(self.ray_address)
        if self._devices is None:
            inventory = query_inventory()
            s = choose_engine(self.settings, inventory.count, inventory.error)
            if all(name == "sim" for name in engine_names(s)):
                # The sim never touches real GPUs; its inventory is empty so nothing waits on NVML.
                self._devices = Devices(GpuInventory(error=inventory.error), self._sim_fingerprint(None), s.sim_gpus,
                                        "sim GPUs")
            elif inventory.count:
                self._devices = Devices(inventory, inventory.fingerprint(), inventory.count, "GPUs")
            else:
                self._devices = Devices(inventory, "cpu", cpu_workers(), "CPU workers")
        return self._devices


    def fingerprint_for(self, engine: str) -> str:
        """The baseline key of ``engine``'s results: the sim's is its own (``sim-v100-16gb-x4``; on a Ray
        cluster ``sim-h100-80gb-x1-n2``), every other engine's the machine's or the cluster's; one session
        may hold both (``--mgpu-engine sim,vllm``)."""
        if engine == "sim":
            return self._sim_fingerprint(self.cluster_inventory)
        return self.devices.fingerprint

    def _sim_fingerprint(self, cinv: ClusterInventory | None) -> str:
        """The sim's baseline key: its GPU and count (``sim-v100-16gb-x4``), or the cluster's shape."""
        shape = cinv.shape() if cinv is not None else f"x{self.settings.sim_gpus}"
        return f"sim-{self.settings.sim_gpu}-{shape}"

    def visible_for(self, engine: str) -> tuple[int, str]:
        """(devices ``engine``'s layouts may use, what they are called in skips)."""
        if engine == "sim" and self.cluster_inventory is None:
            return self.settings.sim_gpus, "sim GPUs"
        return self.devices.visible, self.devices.word

    def _cluster_devices(self, address: str) -> Devices:
        """Connect to the Ray cluster and read its nodes and GPUs (docs/multinode.md)."""
        from ..cluster.connect import connect  # lazy: Ray only for a session with an address

        cluster, cinv = connect(address, self.ray_source)
        try:
            inventory = cinv.as_gpu_inventory()
            s = choose_engine(self.settings, inventory.count, inventory.error)
            only_sim = all(name == "sim" for name in engine_names(s))
            fingerprint = self._sim_fingerprint(cinv) if only_sim else cinv.fingerprint()
            spec = cluster.spec(cinv, os.environ)
        except BaseException:
            cluster.close()
            raise
        return Devices(inventory, fingerprint, cinv.count, "GPUs", cluster, cinv, spec)

    @property
    def cluster(self) -> RayCluster | None:
        """The connected Ray cluster every engine runs on; None without a Ray address."""
        return self.devices.cluster if self.ray_address else None

    @property
    def cluster_inventory(self) -> ClusterInventory | None:
        """The cluster's nodes and GPUs as read at connect; None without a Ray address."""
        return self.devices.cluster_inventory if self.ray_address else None

    @property
    def cluster_spec(self) -> ClusterSpec | None:
        """What an engine start needs of the cluster (address, variables, raylets per host); None without one."""
        return self.devices.cluster_spec if self.ray_address else None

    @property
    def inventory(self) -> GpuInventory:
        """The GPUs this session may use (empty for the sim)."""
        return self.devices.inventory

    @property
    def fingerprint(self) -> str:
        """The hardware key of baselines: ``sim-v100-16gb-x4``, ``nvidia-h200-x4``, ``cpu``."""
        return self.devices.fingerprint

    @property
    def visible_devices(self) -> int:
        """Devices a layout may use: GPUs, sim GPUs or CPU workers."""
        return self.devices.visible

    @property
    def manager(self) -> EngineManager:
        """The engine manager (created on first use)."""
        if self._manager is None:
            from .engine_manager import EngineManager  # lazy: engine code waits for mgpu items (plugin.py)

            self._manager = EngineManager(self.settings, self.inventory, self.cluster)
        return self._manager

    @property
    def env_info(self) -> dict[str, Any]:
        """The machine and commit recorded with every result (``git`` runs on first use)."""
        if self._env_info is None:
            s = self.settings
            self._env_info = collect_env(
                self.fingerprint, self.inventory, cwd=self.config.rootpath, engine=s.engine, sim_gpu=s.sim_gpu
            )
            if self.cluster_inventory is not None:
                self._env_info["cluster"] = self.cluster_inventory.to_dict()
            self._env_info["run_id"] = self.run_id
        return self._env_info

    def start(self) -> None:
        """Collection found mgpu items: take over SIGTERM and make sure engines are stopped at exit."""
        if self.started:
            return
        self.started = True
        if self.ray_address:
            self.devices  # noqa: B018 - connect now: an unreachable cluster is a usage error before anything runs
        self.prev_sigterm = install_sigterm_handler()
        atexit.register(self.close)  # last resort: never leave an engine running
        self.notes.extend(end_orphaned_engines())

    # --- what the hooks ask --------------------------------------------------------------------
    def resolve_model(self, ref: str, test_path: Path | None) -> Model:
        """The model ``ref`` names, searched beside the test file, then in the rootdir and the built-ins."""
        dirs = [Path(self.config.rootpath)]
        if test_path is not None:
            dirs.insert(0, test_path.parent)
        model = find_model(ref, dirs)
        return self.models.setdefault(model.path, model)

    def header_lines(self) -> list[str]:
        """The ``mgpu:`` line (engine and why, devices, baselines) and notes; none without mgpu items."""
        if not self.started:
            return []
        s = self.settings
        names = engine_names(s)
        if len(names) > 1:
            return [self.multi_engine_header(names), *self.notes]
        line = f"mgpu: engine={s.engine}"
        if s.fallback_reason:
            line += f" ({s.fallback_reason})"
        if self.cluster_inventory is not None:
            sim = ""
            if s.engine == "sim":
                sim = f"sim GPU {s.sim_gpu}, time scale {s.sim_time_scale:g}x (modelled clock), on "
            line += f", {sim}{self.cluster_inventory.describe()}"
        elif s.engine == "sim":
            line += f", sim GPU {s.sim_gpu} x{s.sim_gpus}, time scale {s.sim_time_scale:g}x (modelled clock)"
        elif self.inventory.count:
            names = sorted({g.name for g in self.inventory.gpus})
            line += f", {self.inventory.count} GPU(s): {', '.join(names)}, driver {self.inventory.driver}"
        else:
            line += f", no GPU: {self.visible_devices} CPU worker(s)"
        line += f", repeats={s.repeats}, baselines={s.baseline_dir}/{self.fingerprint}"
        return [line, *(extra for ext in self.extensions for extra in ext.header_lines()), *self.notes]

    def multi_engine_header(self, names: list[str]) -> str:
        """The ``mgpu:`` line of a session with several engines: each with its devices and baselines."""
        s = self.settings
        parts = []
        for name in names:
            where = self.fingerprint_for(name)
            if name == "sim":
                what = f"sim GPU {s.sim_gpu} x{s.sim_gpus}, time scale {s.sim_time_scale:g}x"
            elif self.inventory.count:
                what = f"{self.inventory.count} GPU(s)"
            else:
                what = f"{self.visible_devices} CPU worker(s)"
            opt = "?" if engine_optional(s, name) else ""
            parts.append(f"{name}{opt} ({what}; baselines={s.baseline_dir}/{where})")
        return f"mgpu: engines side by side: {', '.join(parts)}; repeats={s.repeats}"

    def baseline_telemetry(self, result: BenchResult) -> dict[str, float] | None:
        """The compact GPU telemetry stored with ``result``'s baseline entry, if any (for clock warnings)."""
        return self.base_telemetry.get(result.entry_id)

    def record(self, item: pytest.Item, result: BenchResult) -> None:
        """Keep a measured result for the session's reports and for the item's gate."""
        self.results.append(result)
        item.stash.setdefault(ITEM_RESULTS_KEY, []).append(result)

    def finish(self, session: pytest.Session) -> None:
        """Stop engines and write the session's output files; a failed teardown fails the session."""
        if self._manager is not None:
            try:
                self._manager.close()
            except EngineError as exc:
                self.errors.append(f"ERROR at engine teardown: {exc}")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.check_something_measured(session)
        empty_shard = self.shard is not None and not self.shard["items"]
        if empty_shard and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # a shard with no items passes: a CI matrix must not fail on it
        self.check_gate_checked_something(session)
        s = self.settings
        if s.json_path or s.report_md or s.benchmark_json or self.results:
            from ..report.outputs import write_outputs  # lazy: the report imports the results, and numpy

            if write_outputs(self):  # each file on its own; a failed one is a session error
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if s.plot_dir is not None and self.results:
            self.write_plots(s.plot_dir)

    def write_plots(self, out_dir: Path) -> None:
        """``--mgpu-plot``: draw the charts; a failure is reported, and loses no other output."""
        from ..report.plots import write_plots  # lazy: the report imports numpy (matplotlib: only in there)

        try:
            paths = write_plots(self.results, out_dir)
        except Exception as exc:  # a broken matplotlib must not lose the run's other outputs
            self.errors.append(f"ERROR writing plots to {out_dir}: {type(exc).__name__}: {exc}")
            return
        self.plots = paths

    def note_outcome(self, report: pytest.TestReport) -> None:
        """Remember how a measuring item ended (for :meth:`check_something_measured`)."""
        if report.nodeid not in self.measuring:
            return
        if report.skipped:
            self.outcomes[report.nodeid] = ("skipped", skip_reason(report))
        elif report.failed:
            self.outcomes[report.nodeid] = ("failed" if report.when == "call" else "error", "")
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, ("passed", ""))

    def check_something_measured(self, session: pytest.Session) -> None:
        """Nothing measured must not pass: a session whose ``mgpu_bench`` tests measured no result fails.

        Skips the user asked for (layouts larger than the machine, an optional engine) stay skips,
        but when every measuring test was skipped or measured nothing, the session fails, saying so.
        """
        if not self.measuring or self.results or not self.outcomes or self.config.option.collectonly:
            return
        counts: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for outcome, reason in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
        n = len(self.outcomes)
        how = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        line = f"mgpu: no result was measured: {n} test{'s use' if n != 1 else ' uses'} mgpu_bench ({how})"
        if reasons:
            line += "; skipped because: " + "; ".join(f"{r} ({c}x)" for r, c in sorted(reasons.items()))
        line += ". A perf run that measures nothing fails; select tests this machine can run"
        self.errors.append(line)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def check_gate_checked_something(self, session: pytest.Session) -> None:
        """A gate whose every result is NEW checked nothing: under CI that fails, elsewhere it warns.

        A mistyped baseline directory or a new GPU type makes every result NEW, and a green CI job
        would then have gated nothing. ``--mgpu-allow-new`` lets a first run on new hardware pass.
        """
        if self.ab is not None or self.settings.update_baselines or self.config.option.collectonly:
            return
        from ..judge.verdicts import Verdict  # lazy: loaded with the gate, only once results exist

        if not self.comparisons or any(c.verdict is not Verdict.NEW for c in self.comparisons):
            return
        fails = running_in_ci() and not self.settings.allow_new
        self.errors.extend(nothing_checked_lines(self, fails=fails))
        if fails and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def write_summary(self, tr: pytest.TerminalReporter) -> None:
        """Write the per-item table, the per-layout table and the gate summary to the terminal."""
        if not (self.results or self.comparisons or self.errors):
            return  # nothing to say: and no import of the report's numpy for a run without mgpu tests
        from ..report.summary import summary_lines  # lazy: numpy, see above

        for sep, text in summary_lines(self, self.config.invocation_params.args):
            if sep:
                tr.write_sep(sep, text)
            else:
                tr.write_line(text)

    def close(self) -> None:
        """Stop any engine still running, disconnect from the Ray cluster, give SIGTERM back its previous handler."""
        try:
            if self._manager is not None:
                self._manager.close()
        finally:
            if self._devices is not None and self._devices.cluster is not None:
                self._devices.cluster.close()
            restore_sigterm_handler(self.prev_sigterm)
            self.prev_sigterm = None


#: Values of the ``CI`` variable that mean "running in CI" (GitHub Actions and GitLab set ``true``).
CI_TRUE = ("1", "true", "yes", "on")


def running_in_ci() -> bool:
    """Whether the ``CI`` environment variable is set to a true value."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def skip_reason(report: pytest.TestReport) -> str:
    """Why a test was skipped, in one line: the skip's reason, or ``xfailed: <reason>`` (an xfailed
    test's report holds the whole traceback of its expected failure, which is no reason)."""
    if hasattr(report, "wasxfail"):
        why = str(report.wasxfail or "").removeprefix("reason: ")
        return f"xfailed: {why}" if why else "xfailed"
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    lines = reason.removeprefix("Skipped: ").strip().splitlines()
    return lines[0] if lines else "skipped"


def new_run_id() -> str:
    """A run's identity: its start (UTC), its host and a random part, safe in a file name.

    ``20261205T190518Z-gpu-node-3-1a2b3c4d``: sorted by start time, unique across hosts and runs.
    """
    import re
    import socket
    import uuid
    from datetime import datetime, timezone

    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.")[:40] or "host"
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{host}-{uuid.uuid4().hex[:8]}"


def nothing_checked_lines(sess: MgpuSession, *, fails: bool) -> list[str]:
    """The block that says the gate checked nothing, why, and how to record baselines."""
    from ..report.summary import accept_command, relative  # lazy: the report module, only for this message

    s = sess.settings
    n = len(sess.comparisons)
    engines = sorted({c.engine or s.engine for c in sess.comparisons})
    dirs = [Path(s.baseline_dir) / sess.fingerprint_for(e) for e in engines]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        why = "no baseline for this hardware: " + ", ".join(f"{d} does not exist" for d in missing)
    else:
        why = "no baseline entry for these tests in " + ", ".join(str(d) for d in dirs)
    others = [fp for fp in _subdirs(Path(s.baseline_dir)) if fp not in {d.name for d in dirs}]
    if others:
        why += f" (baselines exist for: {', '.join(others)})"
    what = f"the gate checked nothing: all {n} result{'s are' if n != 1 else ' is'} NEW"
    if not fails:
        allowed = " (allowed by --mgpu-allow-new)" if s.allow_new and running_in_ci() else ""
        return [f"mgpu gate WARNING: {what}{allowed}; {why}"]
    return [
        f"mgpu gate FAILED: {what}",
        f"  why: {why}",
        f"  record this run's results as baselines (no re-run): {accept_command(sess)}",
        f"  (or re-run with --mgpu-update-baselines), then commit {relative(Path(s.baseline_dir))}",
        "  CI=true: a run that checked nothing fails; a first run on new hardware may pass with --mgpu-allow-new",
    ]


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def configure(config: pytest.Config) -> MgpuSession:
    """Register the markers and parse the options (the heavy parts wait for mgpu items)."""
    register_markers(config)
    return MgpuSession.configure(config)


def session_of(config: pytest.Config) -> MgpuSession:
    """The session of ``config``, built on first use.

    The plugin builds it at configure when an mgpu option is given (a bad value is a usage error
    before collection), else when collection meets the first mgpu test: a project without mgpu
    tests never imports this module.
    """
    sess = config.stash.get(SESSION_KEY, None)
    return sess if sess is not None else MgpuSession.configure(config)


def unconfigure(config: pytest.Config) -> None:
    """Last resort at unconfigure: never leave an engine running (no-op when configure failed)."""
    sess = config.stash.get(SESSION_KEY, None)
    if sess is not None:
        sess.close()


def install_sigterm_handler() -> SignalHandler:
    """Turn SIGTERM into KeyboardInterrupt, so pytest still runs session teardown and stops engines.

    Engines live in their own process groups, so a CI runner's SIGTERM to pytest never reaches
    them. Returns the previous handler (for :func:`restore_sigterm_handler`), or None when another
    handler is already installed or this is not the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    prev = signal.getsignal(signal.SIGTERM)
    if prev is not signal.SIG_DFL:
        return None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM received: stopping engines")

    signal.signal(signal.SIGTERM, on_term)
    return prev


def restore_sigterm_handler(prev: SignalHandler) -> None:
    """Undo :func:`install_sigterm_handler`."""
    if prev is not None:
        signal.signal(signal.SIGTERM, prev)


def end_orphaned_engines() -> list[str]:
    """End engine processes left by a pytest run that died (their ``MGPU_OWNER`` is gone); say which."""
    ended = supervisor.sweep_orphans()
    if not ended:
        return []
    owners = sorted({owner.partition(":")[0] for _, owner, _ in ended})
    lines = [
        f"mgpu: ended {len(ended)} engine process{'es' if len(ended) != 1 else ''} left by a dead pytest run "
        f"(pid {', '.join(owners)}):"
    ]
    lines += [f"mgpu:   {pid} {cmd[:160] or '?'}" for pid, _, cmd in ended]
    return lines


def cpu_workers() -> int:
    """Cores this process may use: how many CPU workers a CPU engine layout may have."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
