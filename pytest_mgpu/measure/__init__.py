"""What a run measures: the workload, the prompts it sends, the streaming client, the metrics, GPU telemetry.

Pure measurement: no pytest, no files written, no engine code; a workload in, numbers out.

May import: the root's shared modules (errors, layout, cards, gpus, ...) and ``models``. Nothing of
``engines``, ``judge``, ``report``, ``run`` or ``cli``.
"""
