"""The engine's process-group leader: it ends the engine, and everything the engine started, when pytest dies.

Every adapter starts its server through this script (:meth:`EngineAdapter.start`)::

    python -I supervisor.py --owner PYTEST_PID --grace SECONDS -- ENGINE ARGV...

in a new session, so that the supervisor leads the engine's process group. It

* asks the kernel for a signal when pytest dies (``PR_SET_PDEATHSIG``) and also watches its parent
  id, so a ``kill -9`` of pytest is noticed at once;
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): the engine's descendants that leave its
  process group (TensorRT-LLM's MPI ranks, a worker that calls ``setsid``) are re-parented to it
  when their parent dies, so it still finds them;
* starts the engine with ``PR_SET_PDEATHSIG=SIGKILL``, so the engine dies if the supervisor does;
* when pytest dies, or the engine exits, or it is told to stop (SIGTERM), ends what is left:
  its process group and session, its descendants and every process carrying this engine's tag
  in its environment (``MGPU_ENGINE``): SIGTERM, ``--grace`` seconds, then SIGKILL;
* exits as the engine did (same code, or killed by the same signal), so pytest reads the engine's
  own exit status.

Engines are tagged ``MGPU_OWNER=<pid>:<start time>`` (the pytest process) and
``MGPU_ENGINE=<id>``; :func:`sweep_orphans` lets a new pytest run end engines whose owner is gone.
A tag can vanish from ``/proc/PID/environ`` (vLLM's ``setproctitle`` overwrites that memory in its
engine-core and worker processes), so the session the supervisor created counts too.
Linux only (``/proc``, ``prctl``). Standard library only, no package imports: this file runs by
path in isolated mode (``-I``) with whichever interpreter runs pytest.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

#: Environment tag of every engine process: ``<pid>:<start time>`` of the pytest process that started it.
OWNER_ENV = "MGPU_OWNER"
#: Environment tag of every process of one engine start (a random id).
ENGINE_ENV = "MGPU_ENGINE"

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: The signal the kernel sends the supervisor when its parent (pytest) dies.
PARENT_DEATH_SIGNAL = signal.SIGUSR1
#: How often the supervisor looks at the engine and its parent, in seconds.
POLL_S = 0.1


def log(msg: str) -> None:
    """One line in the engine's log (the supervisor's stderr is the log file)."""
    print(f"[mgpu-supervisor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)``; False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


# --- /proc ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, pgrp, ... (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, ``/proc/PID/stat`` field 22); None if it is gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def owner_token(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of ``pid`` (default: this process): an id that a reused pid cannot fake."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{start_time(pid) or '?'}"


def owner_alive(token: str) -> bool:
    """Whether the process named by an :func:`owner_token` still runs."""
    pid, _, started = token.partition(":")
    try:
        return start_time(int(pid)) == started
    except ValueError:
        return False


def _pids() -> list[int]:
    try:
        return [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:  # pragma: no cover - no /proc
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with ({} if unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' if unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tagged(key: str, value: str | None = None) -> dict[int, str]:
    """Live processes of this user whose environment has ``key`` (``=value`` if given): pid -> value."""
    me = os.getpid()
    found: dict[int, str] = {}
    for pid in _pids():
        if pid == me:
            continue
        env = environ(pid)
        if key in env and (value is None or env[key] == value) and alive(pid):
            found[pid] = env[key]
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    out = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(pid)
    return out


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (an engine's session is its supervisor's pid)."""
    out = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            out.append(pid)
    return out


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (None if it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(pid)
    out: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def first_child(pid: int, wait_s: float = 2.0) -> int:
    """The first child of ``pid`` (the engine under its supervisor), waiting up to ``wait_s`` for it; 0 if none."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                kids = fh.read().split()
        except OSError:
            kids = []
            if not alive(pid):
                return 0
        if kids:
            return int(kids[0])
        if time.monotonic() >= deadline:
            return 0
        time.sleep(0.005)


def reap() -> list[tuple[int, int]]:
    """Collect exited children (the engine, and orphans re-parented to this subreaper): (pid, status)."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        done.append((pid, status))
    return done


def end_processes(pids: Iterable[int], grace_s: float, reap_children: bool = False) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them, SIGKILL the rest; the pids signalled.

    ``reap_children`` (the supervisor only) also collects exited children with ``waitpid(-1)``;
    pytest must not, or it would steal the exit status of its own ``Popen`` objects.
    """
    me = os.getpid()
    targets = [p for p in set(pids) if p != me and alive(p)]
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = [p for p in targets if alive(p)]
        if not left:
            break
        for p in left:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(alive(p) for p in left):
            if reap_children:
                reap()
            time.sleep(0.05)
    if reap_children:
        reap()
    return targets


def sweep_orphans(grace_s: float = 5.0) -> list[tuple[int, str, str]]:
    """End engine processes whose owning pytest process is gone: [(pid, owner token, command line)].

    Processes whose owner still runs (this session, or another live pytest run) are left alone.
    """
    orphans = {pid: owner for pid, owner in tagged(OWNER_ENV).items() if not owner_alive(owner)}
    if not orphans:
        return []
    # An engine's processes may have lost their tag from /proc/PID/environ (vLLM's setproctitle
    # writes the process title over that memory). They still share the session the supervisor
    # created: take its other members too, where that session's leader (the supervisor) is gone.
    own_session = session_of(os.getpid())
    for pid, owner in list(orphans.items()):
        sid = session_of(pid)
        if sid is None or sid == own_session or alive(sid):
            continue
        for member in session_members(sid):
            orphans.setdefault(member, owner)
    found = [(pid, owner, cmdline(pid)) for pid, owner in sorted(orphans.items())]
    end_processes(orphans, grace_s)
    return found


# --- the supervisor ------------------------------------------------------------------------------


class Supervisor:
    """Runs one engine under this process and ends it, and what it started, when told or when pytest dies."""

    def __init__(self, argv: list[str], owner: int, grace_s: float) -> None:
        self.argv, self.owner, self.grace_s = argv, owner, grace_s
        self.engine_tag = os.environ.get(ENGINE_ENV)
        self.stop_reason: str | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT/SIGHUP: stop; the parent-death signal: stop if pytest is really gone."""
        if signum == PARENT_DEATH_SIGNAL:
            if os.getppid() != self.owner:
                self.stop_reason = self.stop_reason or f"pytest (pid {self.owner}) died"
        else:
            self.stop_reason = self.stop_reason or f"received {signal.Signals(signum).name}"

    def leftovers(self) -> list[int]:
        """Everything of this engine still running: its group, descendants and tagged processes."""
        me = os.getpid()
        pids = set(group_members(os.getpgrp())) | set(session_members(os.getsid(0))) | set(descendants(me))
        if self.engine_tag:
            pids |= set(tagged(ENGINE_ENV, self.engine_tag))
        pids.discard(me)
        return sorted(p for p in pids if alive(p))

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process of the engine (not to this one)."""
        for p in self.leftovers():
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def run(self) -> int:
        """Start the engine, watch it and pytest, clean up, and exit as the engine did."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, PARENT_DEATH_SIGNAL):
            signal.signal(sig, self.on_signal)
        prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
        if os.getppid() != self.owner:  # pytest died before the signal was armed
            log(f"pytest (pid {self.owner}) is gone; not starting the engine")
            return 1
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            self.child = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, preexec_fn=lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            )
        except OSError as exc:
            log(f"cannot start the engine: {exc}")
            return 127
        status: int | None = None
        kill_at: float | None = None  # when stopping: SIGKILL what is left at this time
        while status is None:
            for pid, st in reap():
                if pid == self.child.pid:
                    status = st
            if status is not None:
                break
            if self.stop_reason is None and os.getppid() != self.owner:
                self.stop_reason = f"pytest (pid {self.owner}) died"
            if self.stop_reason is not None and kill_at is None:
                kill_at = time.monotonic() + self.grace_s
                if "died" in self.stop_reason:
                    # Nobody else will stop the engine: SIGTERM it (a SIGTERM from pytest's own
                    # stop reached the whole group already; a second one could cut vLLM's cleanup short).
                    log(f"{self.stop_reason}; stopping the engine")
                    self.signal_all(signal.SIGTERM)
            elif kill_at is not None and time.monotonic() > kill_at:
                log(f"engine still running {self.grace_s:g}s after {self.stop_reason}; killing it")
                self.signal_all(signal.SIGKILL)
                kill_at = time.monotonic() + 5.0
            time.sleep(POLL_S)
        self.child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        left = self.leftovers()
        if left:
            ended = end_processes(left, self.grace_s, reap_children=True)
            log(f"engine exited ({self.describe(status)}); ended {len(ended)} process(es) it left: "
                + ", ".join(map(str, ended)))
        elif os.WIFSIGNALED(status) and self.stop_reason is None:
            log(f"engine {self.describe(status)}")
        return self.mirror(status)

    @staticmethod
    def describe(status: int) -> str:
        """``exit code 3`` or ``killed by SIGKILL``."""
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit code {os.waitstatus_to_exitcode(status)}"

    @staticmethod
    def mirror(status: int) -> int:
        """Exit like the engine: the same code, or killed by the same signal."""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            sys.stderr.flush()
            os.kill(os.getpid(), sig)
            time.sleep(1.0)  # pragma: no cover - the signal ends the process
            return 128 + sig  # pragma: no cover
        return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    """``supervisor.py --owner PID --grace S -- ENGINE ARGV...``; returns the engine's exit code."""
    p = argparse.ArgumentParser(prog="supervisor.py", description=__doc__.splitlines()[0])
    p.add_argument("--owner", type=int, required=True, help="pid of the pytest process that owns the engine")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("engine", nargs=argparse.REMAINDER, help="-- and the engine's command line")
    args = p.parse_args(argv)
    engine = args.engine[1:] if args.engine[:1] == ["--"] else args.engine
    if not engine:
        p.error("no engine command line after --")
    return Supervisor(engine, args.owner, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
