"""``pytest-mgpu``: compare two baseline/results files, show the baseline store, accept a finished run,
export to pytest-benchmark, merge the results of a sharded run, bisect a list of builds.

Exit codes: 0 nothing fails, 1 a result fails (:func:`~pytest_mgpu.judge.verdicts.fails`: INVALID or
FAIL; with ``--strict`` also WARN, MISMATCH and NEW), 2 a usage or file error, 141 the reader of
the output went away (``pytest-mgpu show | head``), as a tool killed by SIGPIPE.

One module per command (:mod:`.compare`, :mod:`.show`, :mod:`.accept`, :mod:`.export_benchmark`,
:mod:`.merge`, :mod:`.bisect`), each with ``add_parser(sub)`` and ``run(args)``; :mod:`.files` reads
and writes what several of them share. The top layer beside ``plugin``: it may import every layer,
nothing imports it (``main`` is the ``pytest-mgpu`` console script).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import BaselineError, CliError
from . import accept, bisect, compare, export_benchmark, merge, show

#: One module per command, in the order ``--help`` lists them; each has ``add_parser(sub)``, which
#: registers its parser with ``func`` set to the module's ``run(args) -> exit code``.
COMMANDS = (compare, show, accept, export_benchmark, merge, bisect)


def build_parser() -> argparse.ArgumentParser:
    """The ``pytest-mgpu`` argument parser."""
    ap = argparse.ArgumentParser(prog="pytest-mgpu", description="Compare, inspect and record pytest-mgpu baselines")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytest-mgpu`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`pytest-mgpu show | head`): stop quietly, as a killed-by-SIGPIPE tool would.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except CliError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2
    except BaselineError as exc:
        print(f"pytest-mgpu: error: {exc}", file=sys.stderr)
        return 2
