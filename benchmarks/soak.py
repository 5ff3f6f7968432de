"""Soak: many start / measure / stop cycles of the sim engine, with faults, and nothing may leak.

    python benchmarks/soak.py                    # 200 cycles, every 4th with a fault
    python benchmarks/soak.py --cycles 50 --fault-every 2

Each cycle goes through the plugin's own machinery (:class:`~pytest_mgpu.run.engine_manager.EngineManager`
with the sim adapter, the streaming client): acquire an engine, measure a small workload, inject
the cycle's fault, acquire again (the health check must restart a broken engine and must reuse a
healthy one), measure again, stop. The faults rotate:

* ``crash``  -- the sim exits abruptly in the middle of the workload (``crash_after``);
* ``hang``   -- the sim stops answering anything (``hang_after``); the run times out;
* ``kill9``  -- ``kill -9`` of the engine process (the server under its supervisor);
* ``kill9-supervisor`` -- ``kill -9`` of the supervisor: the engine must die with it;
* ``fail-start`` -- the engine refuses to start (``fail_start``): an EngineError, nothing left.

Every engine starts two child processes first, one of them outside the engine's process group
(``setsid``), as vLLM's workers and TensorRT-LLM's MPI ranks are children of the server; they
must go with it (``--no-children`` leaves them out).

Before and after, it prints the processes of this process tree and those tagged with this
process as their owner, this process's open file descriptors, the TCP ports listening in that
tree (and whether any port an engine used still listens), and the files in the soak's private
temporary directory (the engines' ``TMPDIR``) and in ``/dev/shm``. All must be unchanged; the exit
code is 1 otherwise, or when a fault was not detected or a healthy engine was restarted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_mgpu.engines import EngineAdapter, EngineSpec, RunningEngine, supervisor  # noqa: E402
from pytest_mgpu.errors import EngineError, EngineRestartWarning  # noqa: E402
from pytest_mgpu.gpus import GpuInventory  # noqa: E402
from pytest_mgpu.layout import Layout  # noqa: E402
from pytest_mgpu.measure.client import run_workload  # noqa: E402
from pytest_mgpu.measure.workload import Workload  # noqa: E402
from pytest_mgpu.models import resolve_model  # noqa: E402
from pytest_mgpu.run.engine_manager import EngineManager  # noqa: E402
from pytest_mgpu.run.settings import Settings  # noqa: E402

FAULTS = ("crash", "hang", "kill9", "kill9-supervisor", "fail-start")
WORKLOAD = Workload(input_len=16, output_len=8, num_requests=8, request_rate=float("inf"), warmup_requests=0,
                    vocab_size=32000)


# --- what must not leak --------------------------------------------------------------------------


def tree_pids() -> set[int]:
    """This process's descendants and every process tagged with this process as its owner."""
    me = os.getpid()
    pids = set(supervisor.descendants(me))
    token = supervisor.owner_token()
    pids |= {p for p, owner in supervisor.tagged(supervisor.OWNER_ENV).items() if owner == token}
    pids.discard(me)
    return pids


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports in LISTEN state whose socket is open in one of ``pids``."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def port_listens(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def files_under(path: Path) -> int:
    """Files and directories under ``path``."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(path)) if path.exists() else 0


def snapshot(tmp: Path) -> dict[str, int]:
    """The four things a soak must leave as it found them."""
    pids = tree_pids()
    return {
        "processes (this tree + tagged as ours)": len(pids),
        "open file descriptors (this process)": len(os.listdir("/proc/self/fd")),
        "listening TCP ports (this tree)": len(listening_ports(pids | {os.getpid()})),
        f"temp files (engines' TMPDIR {tmp})": files_under(tmp),
        "entries in /dev/shm (machine-wide)": len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0,
    }


# --- one cycle -----------------------------------------------------------------------------------


#: The engines' interpreter: starts two children, one in the engine's process group and one that
#: leaves it (as vLLM's workers and TensorRT-LLM's MPI ranks do), then becomes the sim server.
WRAPPER = """#!/bin/sh
sleep 600 </dev/null >/dev/null 2>&1 &
setsid sleep 601 </dev/null >/dev/null 2>&1 &
exec {python} "$@"
"""
ENGINE_PYTHON = sys.executable


def spec_for(fault: str | None) -> EngineSpec:
    """The sim engine for a cycle: instant mode, with the fault's option."""
    opts = {"zero": "1"}
    if fault == "crash":
        opts["crash_after"] = "3"
    elif fault == "hang":
        opts["hang_after"] = "3"
    elif fault == "fail-start":
        opts["fail_start"] = "1"
    return EngineSpec(engine="sim", model=resolve_model("tiny-llama"), layout=Layout(),
                      options=tuple(sorted(opts.items())), python=ENGINE_PYTHON)


def measure(engine: RunningEngine, timeout_s: float) -> int:
    """Requests that succeeded in one small workload."""
    outcome = run_workload(engine.base_url, engine.model.name, WORKLOAD, timeout_s=timeout_s)
    return sum(1 for r in outcome.records if r.success)


def cycle(manager: EngineManager, fault: str | None, used_ports: set[int]) -> tuple[bool, str]:
    """One start / measure / fault / re-acquire / measure / stop; (as expected, what happened)."""
    spec = spec_for(fault)
    manager.failed.clear()  # each cycle is its own trial
    if fault == "fail-start":
        try:
            manager.acquire(spec)
        except EngineError:
            return True, "start failed as injected"
        return False, "fail_start engine started"
    engine = manager.acquire(spec)
    used_ports.add(int(engine.base_url.rsplit(":", 1)[1]))
    ok = measure(engine, timeout_s=2.0)
    if fault in ("kill9", "kill9-supervisor"):
        # A fault between tests: the process is gone before the next test asks for the engine.
        victim = engine.engine_pid if fault == "kill9" else engine.pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while supervisor.alive(victim) and time.monotonic() < deadline:
            time.sleep(0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = manager.acquire(spec)
    restarted = again is not engine
    warned = any(issubclass(w.category, EngineRestartWarning) for w in caught)
    used_ports.add(int(again.base_url.rsplit(":", 1)[1]))
    if fault is None:
        expected = ok == WORKLOAD.num_requests and not restarted and not warned
    elif fault in ("crash", "hang"):
        expected = ok < WORKLOAD.num_requests and restarted and warned
    else:
        expected = restarted and warned
    if fault in ("crash", "hang"):
        # The restarted engine has the same fault armed: measure only what it serves before it.
        measure(again, timeout_s=2.0)
    else:
        measure(again, timeout_s=10.0)
    manager.stop_current()
    if fault is not None:
        engine_gone = not supervisor.alive(engine.pid) and not supervisor.alive(engine.engine_pid)
        expected = expected and engine_gone
    return expected, f"first run {ok}/{WORKLOAD.num_requests} ok, restarted={restarted}, warned={warned}"


def main() -> int:
    """Run the soak, print before/after, exit 1 on any leak or unexpected behaviour."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--fault-every", type=int, default=4, help="every Nth cycle injects the next fault")
    ap.add_argument("--no-children", action="store_true", help="engines without the two extra child processes")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mgpu-soak-tmp-"))
    logs = Path(tempfile.mkdtemp(prefix="mgpu-soak-logs-"))
    os.environ["TMPDIR"] = str(tmp)  # the engines' temporary files land here (PASSTHROUGH_ENV)
    tempfile.tempdir = None
    if not args.no_children:
        global ENGINE_PYTHON
        wrapper = logs / "engine-python"
        wrapper.write_text(WRAPPER.format(python=sys.executable))
        wrapper.chmod(0o755)
        ENGINE_PYTHON = str(wrapper)
    settings = Settings(
        engine="sim", engine_named=True, engine_options={}, engine_env={}, engine_python=sys.executable,
        model="tiny-llama", sim_gpu="v100-16gb", sim_gpus=4, start_timeout_s=60, request_timeout_s=60,
        log_dir=logs, json_path=None, json_records=False, repeats=1, baseline_dir=logs / "baselines",
        update_baselines=False, confirm=False, report_md=None, benchmark_json=None,
    )
    # A hung engine is found by the health check before reuse; 1 s instead of 5 s keeps hang cycles short.
    EngineAdapter.health_timeout_s = 1.0
    manager = EngineManager(settings, GpuInventory())
    # Warm the client (aiohttp import, event loop) so that the "before" snapshot is its steady state.
    warm = manager.acquire(spec_for(None))
    measure(warm, 10.0)
    manager.stop_current()
    before = snapshot(tmp)

    t0 = time.monotonic()
    used_ports: set[int] = set()
    tally: Counter[str] = Counter()
    unexpected: list[str] = []
    fault_i = 0
    for i in range(args.cycles):
        fault = None
        if args.fault_every and (i + 1) % args.fault_every == 0:
            fault = FAULTS[fault_i % len(FAULTS)]
            fault_i += 1
        try:
            ok, what = cycle(manager, fault, used_ports)
        except Exception as exc:  # a soak reports every surprise and goes on
            ok, what = False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            manager.stop_current()
        tally[fault or "clean"] += 1
        if not ok:
            unexpected.append(f"cycle {i + 1} ({fault or 'clean'}): {what}")
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} cycles, {time.monotonic() - t0:.0f}s", flush=True)
    manager.close()
    time.sleep(0.5)
    after = snapshot(tmp)
    still = sorted(p for p in used_ports if port_listens(p))

    kids = "" if args.no_children else " (each engine with 2 child processes, one outside its group)"
    print(f"\nsoak: {args.cycles} cycles{kids} in {time.monotonic() - t0:.0f}s on {os.cpu_count()} CPUs; "
          + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    print(f"engine logs written: {len(list(logs.glob('*.log')))} (in {logs})")
    width = max(len(k) for k in before)
    print(f"{'':<{width}}  {'before':>7}  {'after':>7}")
    changed = []
    for k in before:
        mark = "" if before[k] == after[k] else "   CHANGED"
        if mark and not k.endswith("(machine-wide)"):
            changed.append(k)
        print(f"{k:<{width}}  {before[k]:>7}  {after[k]:>7}{mark}")
    print(f"ports used by the soak's engines: {len(used_ports)}; still listening: {len(still)} {still or ''}")
    for line in unexpected:
        print(f"UNEXPECTED {line}")
    verdict = not changed and not still and not unexpected
    print("soak: " + ("all unchanged, every fault detected" if verdict else "FAILED"))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
