"""The same-job A/B's part of the session's report: the header line, the terminal-summary section, the
``ab`` block of the results document and the Markdown report (a
:class:`~pytest_mgpu.report.extension.ReportExtension`).

The plugin registers it at configure when ``--mgpu-ab`` is given, so that the ``ab`` block and the
A/B's Markdown are written even by a session whose mgpu tests were all deselected. This module is
light for that reason: the A/B's views (:mod:`pytest_mgpu.report.render.ab`) import the results,
and numpy with them, only when a report is rendered (lazy imports below), as the runner
(:mod:`.ab`) is imported only when an A/B item runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ..engines import get_adapter
from ..errors import EngineUnavailable
from .session import MgpuSession


def new_side_describe(sess: MgpuSession) -> str:
    """``python3 KEY=VALUE``: the new side's interpreter and its engine env."""
    s = sess.settings
    return " ".join([s.engine_python, *(f"{k}={v}" for k, v in sorted(s.engine_env.items()))])


def header_line(sess: MgpuSession) -> str:
    """The report header's A/B line: both sides with their versions, and the rule."""
    assert sess.ab is not None
    s, ab = sess.settings, sess.ab

    def version(python: str, env: dict[str, str]) -> str:
        try:
            return get_adapter(s.engine).version(python, env)
        except EngineUnavailable:
            return "not installed"

    new_env = dict(s.engine_env)
    old_env = ab.old_env_over(new_env)
    new = new_side_describe(sess)
    return (
        f"mgpu A/B: old = {s.engine} {version(ab.old_python, old_env)} ({ab.describe_old()}), "
        f"new = {s.engine} {version(s.engine_python, new_env)} ({new}); "
        f"rounds {ab.rule.min_rounds}..{ab.rule.max_rounds}, {s.repeats} repeat(s) per engine start"
    )




def ab_title(sess: MgpuSession) -> str:
    """``pytest-mgpu A/B: vllm 0.25.1 → 0.26.0 on nvidia-h100-80gb-hbm3-x2``."""
    pairs = sorted({f"{r.engine} {r.old_version} → {r.engine_version}" for r in sess.ab_results})
    return f"pytest-mgpu A/B: {'; '.join(pairs) or sess.settings.engine} on {sess.fingerprint}"


def ab_markdown(sess: MgpuSession) -> str:
    """The Markdown report of an A/B session (``--mgpu-report-md``)."""
    from ..report.render.ab import markdown  # lazy: see the module's docstring

    assert sess.ab is not None
    return markdown(sess.ab_results, sess.ab.rule, ab_title(sess))


def ab_summary_lines(sess: MgpuSession) -> Iterator[tuple[str | None, str]]:
    """The A/B section of the terminal summary (none before a result): each pair, the verdicts, the rule."""
    from ..report.render.ab import terminal_lines  # lazy: see the module's docstring

    assert sess.ab is not None
    if not sess.ab_results:
        return
    yield "-", ab_title(sess).removeprefix("pytest-mgpu ").replace("→", "->")
    for line in terminal_lines(sess.ab_results, sess.ab.rule):
        yield None, line
    if sess.settings.update_baselines:
        n = len(sess.updated)
        yield None, (f"recorded the new side as {n} baseline entr{'y' if n == 1 else 'ies'} under "
                     f"{sess.settings.baseline_dir}/{sess.fingerprint}")


def ab_document(sess: MgpuSession) -> dict[str, Any]:
    """The ``ab`` block of ``--mgpu-json``: both sides, the rule, the verdict counts and the GPU time."""
    from ..judge.ab_results import groups_in  # lazy: see the module's docstring
    from ..report.render.ab import summary  # lazy: see the module's docstring

    assert sess.ab is not None
    counts: dict[str, int] = {}
    for r in sess.ab_results:
        counts[str(r.verdict)] = counts.get(str(r.verdict), 0) + 1
    rule = sess.ab.rule
    return {
        "old_side": sess.ab.describe_old(),
        "new_side": new_side_describe(sess),
        "old_versions": sorted({r.old_version for r in sess.ab_results}),
        "new_versions": sorted({r.engine_version for r in sess.ab_results}),
        "rule": {**asdict(rule), "repeats_per_start": sess.settings.repeats},
        "verdicts": counts,
        "summary": summary(sess.ab_results),
        "gpu_minutes": sum(r.gpu_seconds for r in sess.ab_results) / 60.0,
        "groups": [g.to_dict() for g in groups_in(sess.ab_results)],
    }


@dataclass
class AbReport:
    """The A/B's part of the session's report (a :class:`~pytest_mgpu.report.extension.ReportExtension`)."""

    sess: MgpuSession

    def header_lines(self) -> list[str]:
        """Both sides with their versions (read from the engines' interpreters), and the rule."""
        return [header_line(self.sess)]

    def summary_lines(self) -> Iterator[tuple[str | None, str]]:
        """The A/B section of the terminal summary."""
        return ab_summary_lines(self.sess)

    def json_sections(self) -> dict[str, Any]:
        """The ``ab`` block of the results document."""
        return {"ab": ab_document(self.sess)}

    def markdown(self) -> str | None:
        """The A/B's Markdown report, in place of the gate's."""
        return ab_markdown(self.sess)


def register(sess: MgpuSession) -> None:
    """Plug the A/B into the session's report: its header line, summary section, JSON block and Markdown."""
    sess.extensions.append(AbReport(sess))
