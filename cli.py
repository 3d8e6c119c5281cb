"""The ``adasde`` command line.  Each subsystem registers its own sub-commands (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__
from .bench import cli as bench_cli
from .builtin import cli as builtin_cli
from .coefficients import cli as coefficients_cli
from .demo import cli as demo_cli
from .distill import cli as distill_cli
from .errors import AdasdeError
from .evaluation import cli as evaluation_cli
from .generate import cli as generate_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adasde",
        description="Few-step diffusion sampling with learned coefficients (AdaSDE, AMED): "
        "demo, distil, sample, score.",
    )
    parser.add_argument("--version", action="version", version=f"adasde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # each register() only adds arguments: building the parser imports neither torch nor numpy, so --help is instant
    demo_cli.register(sub)
    generate_cli.register(sub, evaluation_cli.register(sub))  # fid ref|calc, then sample and fid sample
    distill_cli.register(sub)
    coefficients_cli.register(sub)
    bench_cli.register(sub)
    builtin_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AdasdeError as exc:  # the user's mistake: one line, no traceback
        print(f"adasde {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (newlines folded), as the CLI prints it."""
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
