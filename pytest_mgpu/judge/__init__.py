"""Records and decisions: a result and its identity, the baseline store with its history, the gate's
verdicts, the same-job A/B decision.

Nothing printed and nothing of pytest: rendering is ``report``'s, the wiring into a test is ``run``'s.

May import: ``measure`` and the root's shared modules. Nothing of ``engines``, ``report``, ``run``
or ``cli``.
"""
