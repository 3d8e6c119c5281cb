"""The ``adasde`` command line.  Each subsystem registers its own sub-commands (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import AdasdeError

# (module relative to this package, exposing register(subparsers))
_SUBSYSTEMS = (
    ".demo.cli",
    ".distill.cli",
    ".evaluation.cli",
    ".bench.cli",
    ".builtin.cli",
    ".loaders.cli",
    ".coefficients.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adasde",
        description="Few-step diffusion sampling with learned coefficients (AdaSDE, AMED): "
        "demo, distil, sample, score.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"adasde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBSYSTEMS:
        try:
            module = importlib.import_module(name, __package__)
        except ModuleNotFoundError as exc:  # subsystem not built in this checkout
            if exc.name and exc.name.startswith(__package__ or "adasde"):
                continue
            raise
        module.register(sub)
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
