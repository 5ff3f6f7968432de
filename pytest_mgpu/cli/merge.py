"""``pytest-mgpu merge SHARD.json...``: the ``--mgpu-json`` files of a sharded run as one report."""

from __future__ import annotations

from typing import Any

from ..judge.results import json_text
from ..judge.verdicts import STRICT_HELP, fails
from ..report.merge import (
    load_shard,
    merge_shards,
    merged_comparisons,
    settings_warnings,
)
from ..report.render.markdown import render_markdown
from ..report.render.text import render_table, summary_line
from .files import write_output


def run(args: Any) -> int:
    """``pytest-mgpu merge SHARD.json... [--json OUT] [--markdown OUT.md]``."""
    shards = [load_shard(p) for p in args.files]
    doc = merge_shards(shards, allow_missing=args.allow_missing)
    comps = merged_comparisons(doc)
    print(f"merged {len(shards)} file(s): {len(doc['results'])} results, fingerprint {doc['fingerprint']}")
    commits = {s["commit"] for s in doc["env"]["shards"] if s.get("commit")}
    if len(commits) > 1:
        print(f"warning: the shards ran different commits: {', '.join(sorted(c[:10] for c in commits))}")
    for line in settings_warnings(shards):
        print(line)
    print()
    if comps:
        print(render_table(comps))
        print()
    print(summary_line(comps))
    if args.json:
        write_output(args.json, json_text(doc))
        print(f"wrote {args.json}")
    if args.markdown:
        title = args.title or f"pytest-mgpu: {doc['fingerprint']} ({len(shards)} shards)"
        write_output(args.markdown, render_markdown(comps, title=title))
        print(f"wrote {args.markdown}")
    return 1 if any(fails(c.verdict, args.strict) for c in comps) else 0


def add_parser(sub: Any) -> None:
    """Register ``merge`` with the ``pytest-mgpu`` subcommands."""
    m = sub.add_parser("merge", help="Combine the --mgpu-json files of a sharded run into one report")
    m.add_argument("files", nargs="+", help="Every shard's --mgpu-json file")
    m.add_argument("--json", metavar="PATH", help="Write the merged --mgpu-json document")
    m.add_argument("--markdown", metavar="PATH", help="Write one Markdown report (for a PR comment)")
    m.add_argument("--title", default=None, help="Title of the Markdown report")
    m.add_argument("--strict", action="store_true", help=STRICT_HELP)
    m.add_argument("--allow-missing", action="store_true", help="Merge even if some shards' files are absent")
    m.set_defaults(func=run)
