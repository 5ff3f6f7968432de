"""What a run shows and writes: the terminal summary (:mod:`.summary`), rendering (:mod:`.render`), the
analysis sections (:mod:`.analysis` with :mod:`.regime`: the roofline, and :mod:`.sweep`: the knee),
plots (:mod:`.plots`), the output files (:mod:`.outputs`), merging a sharded run (:mod:`.merge`), the
pytest-benchmark export (:mod:`.benchmark_export`), and :mod:`.extension`, the interface through which
a mode (the same-job A/B) adds its own part.

Computes lines and documents from results and verdicts, and writes files; decides nothing.

May import: ``judge``, ``measure`` and the root's shared modules (errors, layout, cards, models).
Never ``run``, ``cli`` or ``plugin``: the session it is handed is named for types only
(``if TYPE_CHECKING:``), and what the A/B adds it registers as a :class:`.extension.ReportExtension`.
"""
