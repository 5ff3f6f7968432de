"""The pytest side: the session (:mod:`.session`, kept in ``config.stash``), options and settings,
markers, collection, the engine manager, the fixtures and the bench, the gate's wiring (:mod:`.gate`),
the same-job A/B runner (:mod:`.ab`, :mod:`.ab_settings`), shards, live progress.

May import every layer below it: ``report``, ``judge``, ``cluster``, ``engines``, ``measure``,
``sim`` and the root's shared modules. Never ``cli`` or ``plugin``. The session and the report know
the A/B only through the :class:`~pytest_mgpu.report.extension.ReportExtension` in :mod:`.ab_report`,
which the plugin registers at configure with ``--mgpu-ab``; the runner, :mod:`.ab`, is imported by
the fixtures and the plugin's hooks only.
"""
