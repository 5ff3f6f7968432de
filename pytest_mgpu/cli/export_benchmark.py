"""``pytest-mgpu export-benchmark RESULTS OUT``: a ``--mgpu-json`` results file as pytest-benchmark JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CliError
from ..judge.results import json_text
from ..report.benchmark_export import to_benchmark_json
from .files import load_json, read_results, write_output


def run(args: argparse.Namespace) -> int:
    """``pytest-mgpu export-benchmark RESULTS OUT``: write pytest-benchmark JSON."""
    p = Path(args.results)
    data = load_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise CliError(f"{args.results}: not a --mgpu-json results file (no 'results' list)")
    results = [r for r, _ in read_results(data, p)]
    write_output(args.out, json_text(to_benchmark_json(results), indent=4))
    print(f"wrote {args.out}; read it with: pytest-benchmark compare {args.out}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``export-benchmark`` with the ``pytest-mgpu`` subcommands."""
    e = sub.add_parser("export-benchmark", help="Convert a --mgpu-json results file to pytest-benchmark JSON")
    e.add_argument("results", help="A --mgpu-json results file")
    e.add_argument("out", help="Where to write the pytest-benchmark JSON")
    e.set_defaults(func=run)
