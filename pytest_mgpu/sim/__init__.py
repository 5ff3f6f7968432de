"""The simulated engine: a roofline-timed, continuously batching LLM server that needs no GPU.

A product of its own, usable without pytest: :mod:`.model` (GPU profiles, options, the roofline
:class:`~.model.PerfModel`), :mod:`.scheduler` (continuous batching, offline :func:`~.scheduler.simulate`),
:mod:`.server` (the OpenAI-compatible HTTP server; ``python -m pytest_mgpu.sim`` starts it).
The pytest plugin launches it through the adapter in :mod:`pytest_mgpu.engines.sim`.

May import: ``models``, ``cards``, ``errors`` and the package's version, nothing else of the plugin
(it runs as its own process). Imported by ``engines.sim`` and, for its options and GPU profiles, by
``run``.
"""
