"""Adapter registry: ``--mgpu-engine NAME`` picks the adapter that launches that kind of engine.

The adapters, and :mod:`.base` with its subprocess and HTTP machinery, are imported on first use,
so that registering the options (which needs only the engine names) stays cheap.

The engines layer: the adapters (:mod:`.sim`, :mod:`.vllm`, :mod:`.trtllm`), the subprocess and
HTTP machinery (:mod:`.base`), the process-group leader (:mod:`.supervisor`), the NCCL check
(:mod:`.preflight`), vLLM's known issues (:mod:`.known_issues`), and what a start needs of a Ray
cluster, as data (:mod:`.cluster_spec`).

May import: ``sim`` (the simulated engine's model and options), ``models`` and the root's shared
modules. Never ``cluster`` (it imports the engines to start them on its nodes), ``measure``,
``judge``, ``report``, ``run`` or ``cli``; the pytest process never imports an engine itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - resolved lazily by __getattr__ at run time
    from .base import EngineAdapter, EngineSpec, RunningEngine

#: Engine name -> ``module:class`` of its adapter, imported only when that engine is chosen.
ADAPTERS: dict[str, str] = {
    "sim": "pytest_mgpu.engines.sim:SimAdapter",
    "vllm": "pytest_mgpu.engines.vllm:VllmAdapter",
    "trtllm": "pytest_mgpu.engines.trtllm:TrtllmAdapter",
}

_BASE_NAMES = ("EngineAdapter", "EngineSpec", "RunningEngine")


def get_adapter(name: str) -> EngineAdapter:
    """Instantiate the adapter for engine ``name``; adapters are imported lazily."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ADAPTERS))}") from None
    module, _, cls = target.partition(":")
    adapter: EngineAdapter = getattr(importlib.import_module(module), cls)()
    return adapter


def check_engine_options(name: str, options: Mapping[str, str]) -> None:
    """Let the adapter reject engine options before any engine starts (EngineError).

    Adapters opt in with a static ``check_options(options)``; the others accept anything here.
    """
    target = ADAPTERS.get(name)
    if target is None or not options:
        return
    module, _, cls = target.partition(":")
    check = getattr(getattr(importlib.import_module(module), cls), "check_options", None)
    if check is not None:
        check(options)


def __getattr__(name: str) -> Any:
    """``EngineAdapter``, ``EngineSpec`` and ``RunningEngine`` from :mod:`.base`, imported on first use."""
    if name in _BASE_NAMES:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ADAPTERS", "EngineAdapter", "EngineSpec", "RunningEngine", "check_engine_options", "get_adapter"]
