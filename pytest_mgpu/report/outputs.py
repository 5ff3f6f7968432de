"""Files written at session end: ``--mgpu-json`` results, the Markdown report, the pytest-benchmark export,
and the run's own ``.mgpu/results-<run id>.json`` (what the printed ``pytest-mgpu accept`` command
records without a re-run), copied to ``.mgpu/last-results.json`` for convenience.

Each file is written on its own: one that fails is reported as a session error and never keeps
the others, or the terminal summary, from being written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..judge.baseline import atomic_write_text
from ..judge.results import RESULTS_SCHEMA_VERSION, json_text
from .benchmark_export import to_benchmark_json
from .merge import comparison_to_dict
from .render.markdown import render_markdown

if TYPE_CHECKING:  # pragma: no cover - types only: the session (run/) calls write_outputs
    from ..run.session import MgpuSession

#: Where every session with results leaves a copy of its own results file, under the rootdir: a
#: convenience only, since the next run replaces it; the accept command a run prints names its own file.
LAST_RESULTS = Path(".mgpu") / "last-results.json"


def results_document(sess: MgpuSession, with_records: bool) -> dict[str, Any]:
    """The ``--mgpu-json`` document: every result, with its comparison when it was gated."""
    results = []
    for r in sess.results:
        d = r.to_dict(with_records)
        c = sess.result_comparisons.get((r.module, r.entry_id))
        d["comparison"] = c.to_dict() if c is not None else None
        results.append(d)
    doc = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "fingerprint": sess.fingerprint,
        "env": sess.env_info,
        "results": results,
        # The gate's verdicts as this run decided them (also those without a result), so that
        # `pytest-mgpu merge` can report the shards of a run as one run.
        "comparisons": [comparison_to_dict(c) for c in sess.comparisons],
    }
    s = sess.settings
    # What the whole run was judged and measured with: merge warns when the shards' differ.
    doc["settings"] = {"gate": {**sess.gate.to_dict(), "strict": sess.gate.strict}, "engine": s.engine,
                       "engine_options": dict(s.engine_options), "repeats": s.repeats, "confirm": s.confirm,
                       "sim_time_scale": s.sim_time_scale}
    if sess.shard is not None:  # the collected items and this shard's share: merge checks the coverage
        doc["shard"] = sess.shard
    for ext in sess.extensions:
        doc.update(ext.json_sections())
    return doc


def _markdown(sess: MgpuSession) -> str:
    """The ``--mgpu-report-md`` text: an extension's own (the A/B's), else the gate's."""
    for ext in sess.extensions:
        text = ext.markdown()
        if text is not None:
            return text
    return render_markdown(sess.comparisons, title=f"pytest-mgpu: {sess.settings.engine} on {sess.fingerprint}")


def last_results_path(sess: MgpuSession) -> Path:
    """``<rootdir>/.mgpu/last-results.json``."""
    return Path(sess.config.rootpath) / LAST_RESULTS


def run_results_path(sess: MgpuSession) -> Path:
    """``<rootdir>/.mgpu/results-<run id>.json``: this run's results, which no other run overwrites."""
    return Path(sess.config.rootpath) / LAST_RESULTS.parent / f"results-{sess.run_id}.json"


def ignore_work_dir(work_dir: Path) -> None:
    """Put a ``.gitignore`` of ``*`` in the plugin's own folder (as pytest does in ``.pytest_cache``):
    results, logs and caches are never committed by accident; baselines live elsewhere."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        marker = work_dir / ".gitignore"
        if not marker.exists():
            marker.write_text("# Created by pytest-mgpu: its run files are not for commits.\n*\n")
    except OSError:
        pass  # a read-only checkout: the results file's own write reports the problem


def write_outputs(sess: MgpuSession) -> list[str]:
    """Write whichever output files were asked for, each independently; return one error line per failure.

    The errors are also appended to ``sess.errors`` (the summary prints them).
    """
    s = sess.settings
    jobs: list[tuple[str, Path, Callable[[], str]]] = []
    if sess.results:
        text = functools.cache(lambda: json_text(results_document(sess, False)))  # one document, two files
        jobs.append(("this run's results", run_results_path(sess), text))
        jobs.append(("last results", last_results_path(sess), text))
    if s.json_path is not None:
        jobs.append(("--mgpu-json", s.json_path, lambda: json_text(results_document(sess, s.json_records))))
    if s.report_md is not None:
        jobs.append(("--mgpu-report-md", s.report_md, lambda: _markdown(sess)))
    if s.benchmark_json is not None:
        jobs.append(("--mgpu-benchmark-json", s.benchmark_json, lambda: json_text(to_benchmark_json(sess.results))))
    errors = []
    if sess.results:
        ignore_work_dir(last_results_path(sess).parent)
    for what, path, render in jobs:
        try:
            atomic_write_text(path, render())
        except Exception as exc:  # any failure of one export must not lose the others
            errors.append(f"ERROR writing {what} {path}: {type(exc).__name__}: {exc}")
    sess.errors.extend(errors)
    return errors
