"""``adasde coefficients ...``: list, inspect and import coefficient files (docs/ARCHITECTURE.md, "Coefficients")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _list(args: argparse.Namespace) -> int:
    from .lookup import matching, search_dirs

    entries = matching(args.family, args.prediction, args.steps, args.nfe, args.dir, None if args.kind == "any"
                       else args.kind)
    print("searched: " + ", ".join(str(d) for d in search_dirs(args.dir)))
    if not entries:
        print("no coefficient files match")
        return 1
    for e in entries:
        print(f"{e.kind:12s} {e.family:16s} {e.prediction:8s} steps {e.steps!s:>3s}  NFE {e.nfe!s:>3s}  {e.path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .io import CoefficientFileError, load, to_metadata
    from .lookup import describe

    try:
        c = load(args.file)
    except CoefficientFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(describe(c))
    if args.json:
        meta = to_metadata(c)
        meta["sigmas"] = c.sigmas.tolist()
        meta.update({k: getattr(c, k).tolist() for k in ("r", "a", "c", "gamma", "w")})
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    print("sigmas: " + ", ".join(f"{v:.5g}" for v in c.sigmas.tolist()))
    print(f"{'step':>4s} {'r':>8s} {'a':>8s} {'c':>8s} {'gamma':>10s} {'w':>8s}")
    for n in range(c.steps):
        for k in range(c.K):
            print(f"{n:4d} {c.r[n, k]:8.4f} {c.a[n, k]:8.4f} {c.c[n, k]:8.4f} {c.gamma[n, k]:10.3e} {c.w[n, k]:8.4f}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .io import CoefficientFileError, save
    from .lookup import describe
    from .official import import_official

    try:
        c = import_official(args.pkl)
        out = Path(args.out) if args.out else Path(args.pkl).with_suffix(".safetensors")
        c.source = str(save(c, out))
    except CoefficientFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"wrote {out}: {describe(c)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """``adasde coefficients list | show | import-official``."""
    parser = subparsers.add_parser("coefficients", help="list, inspect and import coefficient files")
    sub = parser.add_subparsers(dest="coefficients_command", metavar="ACTION")
    p = sub.add_parser("list", help="coefficient files on the search path (headers only)")
    p.add_argument("--dir", action="append", default=None, help="extra folder to search first (repeatable)")
    p.add_argument("--family", default=None, help="model family, e.g. sd15, sdxl, builtin-fmnist")
    p.add_argument("--prediction", default=None)
    p.add_argument("--steps", type=int, default=None, help="student steps (grid points - 1)")
    p.add_argument("--nfe", type=int, default=None)
    p.add_argument("--kind", default="any", choices=["any", "adasde", "amed", "amed_plugin"])
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="print one file's grid and per-step coefficients")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="everything as JSON")
    p.set_defaults(func=_show)
    p = sub.add_parser("import-official", help="convert an official AdaSDE network-snapshot-*.pkl (never executed)")
    p.add_argument("pkl")
    p.add_argument("out", nargs="?", default=None, help="output .safetensors (default: next to the pickle)")
    p.set_defaults(func=_import)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
