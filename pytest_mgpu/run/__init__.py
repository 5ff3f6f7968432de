"""The pytest side: the session, options and settings, markers, collection, the engine manager,
the fixtures and the bench, the gate's wiring, the same-job A/B runner, shards, live progress.

May import every layer below it: ``report``, ``judge``, ``engines``, ``cluster``, ``measure``,
``sim`` and the root's shared modules. Never ``cli`` or ``plugin``; the session and the report know
the A/B only through the interface it registers (no import of ``run.ab`` from the session).
"""
