"""Rendering, apart from the decision: tables and numbers (:mod:`.table`), terminal text
(:mod:`.text`: the gate table and the side-by-side FAIL message), Markdown for a PR comment
(:mod:`.markdown`), and the same-job A/B's views (:mod:`.ab`). Nothing here decides a verdict; it
only shows what :mod:`pytest_mgpu.judge` decided.

May import: ``judge``, ``measure`` and the root's shared modules; nothing else of ``report``.
"""
