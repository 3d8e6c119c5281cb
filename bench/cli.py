"""``adasde bench ...``: benchmark sub-commands.  Each module below exposes ``register(bench_subparsers)`` and writes
its report to ``bench/results/<name>.md`` (machine and date included)."""

from __future__ import annotations

import argparse
import importlib

_BENCHES = (".overhead", ".solvers", ".distill", ".fid", ".builtin", ".guidance")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and write bench/results/<name>.md")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for name in _BENCHES:
        try:
            module = importlib.import_module(name, __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__):
                continue
            raise
        module.register(sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
