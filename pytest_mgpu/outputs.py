"""Files written at session end: ``--mgpu-json`` results, the Markdown report, the pytest-benchmark export."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .baseline import atomic_write_text
from .benchmark_export import to_benchmark_json
from .render.markdown import render_markdown
from .results import RESULTS_SCHEMA_VERSION

if TYPE_CHECKING:  # pragma: no cover - import cycle: the session calls write_outputs
    from .session import MgpuSession


def results_document(sess: MgpuSession, with_records: bool) -> dict[str, Any]:
    """The ``--mgpu-json`` document (with an ``ab`` block in A/B mode)."""
    doc = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "fingerprint": sess.fingerprint,
        "env": sess.env_info,
        "results": [r.to_dict(with_records) for r in sess.results],
    }
    if sess.ab is not None:
        from .ab import ab_document  # lazy: the A/B module imports the session, which imports this one

        doc["ab"] = ab_document(sess)
    return doc


def write_outputs(sess: MgpuSession) -> None:
    """Write whichever output files were asked for."""
    s = sess.settings
    if s.json_path is not None:
        doc = results_document(sess, s.json_records)
        atomic_write_text(s.json_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if s.report_md is not None:
        if sess.ab is not None:
            from .ab import ab_markdown  # lazy, as above

            text = ab_markdown(sess)
        else:
            text = render_markdown(sess.comparisons, title=f"pytest-mgpu: {s.engine} on {sess.fingerprint}")
        atomic_write_text(s.report_md, text)
    if s.benchmark_json is not None:
        doc = to_benchmark_json(sess.results)
        atomic_write_text(s.benchmark_json, json.dumps(doc, indent=2, sort_keys=True) + "\n")
