"""Rendering, apart from the decision: tables and numbers (:mod:`.table`), terminal text
(:mod:`.text`: the gate table and the side-by-side FAIL message), Markdown for a PR comment
(:mod:`.markdown`). Nothing here decides a verdict; it only shows what :mod:`pytest_mgpu.judge.verdicts` decided.
"""
