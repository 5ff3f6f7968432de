"""What a run shows and writes: the terminal summary, rendering (``render/``), the analysis sections
(roofline, regime, sweep knee), plots, the output files, merging shards, the pytest-benchmark export.

Computes lines and files from results and verdicts; decides nothing.

May import: ``judge``, ``measure``, ``engines`` (types only), ``sim`` and the root's shared modules.
Nothing of ``run`` or ``cli``: what the A/B adds to a report it registers from ``run``.
"""
