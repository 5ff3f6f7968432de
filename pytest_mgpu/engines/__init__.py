"""Adapter registry: ``--mgpu-engine NAME`` picks the adapter that launches that kind of engine."""

from __future__ import annotations

import importlib

from .base import EngineAdapter, EngineSpec, RunningEngine

#: Engine name -> ``module:class`` of its adapter, imported only when that engine is chosen.
ADAPTERS: dict[str, str] = {
    "sim": "pytest_mgpu.engines.sim:SimAdapter",
    "vllm": "pytest_mgpu.engines.vllm:VllmAdapter",
    "trtllm": "pytest_mgpu.engines.trtllm:TrtllmAdapter",
}


def get_adapter(name: str) -> EngineAdapter:
    """Instantiate the adapter for engine ``name``; adapters are imported lazily."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ADAPTERS))}") from None
    module, _, cls = target.partition(":")
    adapter: EngineAdapter = getattr(importlib.import_module(module), cls)()
    return adapter


__all__ = ["ADAPTERS", "EngineAdapter", "EngineSpec", "RunningEngine", "get_adapter"]
