"""Engine registry: ``--mgpu-engine NAME`` picks one of these adapters."""

from __future__ import annotations

import importlib

from .base import EngineError, EngineSpec, EngineUnavailable, RunningEngine, SubprocessEngine

ENGINES: dict[str, str] = {
    "sim": "pytest_mgpu.engines.sim:SimEngine",
    "vllm": "pytest_mgpu.engines.vllm:VllmEngine",
    "trtllm": "pytest_mgpu.engines.trtllm:TrtllmEngine",
}


def get_engine(name: str) -> SubprocessEngine:
    """Instantiate the adapter for ``name``; adapters are imported lazily."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return]


__all__ = ["ENGINES", "EngineError", "EngineSpec", "EngineUnavailable", "RunningEngine", "SubprocessEngine", "get_engine"]
