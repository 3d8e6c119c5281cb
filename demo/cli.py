"""``adasde demo`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    import torch

    from .run import DemoConfig, DemoError, format_table, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DemoConfig(out=Path(args.out), quick=args.quick, nfe=args.nfe, samples=args.samples,
                     chart_samples=args.chart_samples, trajectories=args.trajectories, seed=args.seed,
                     refine_trajectories=args.refine_trajectories,
                     device=args.device, chart_nfes=tuple(args.chart_nfes), progress=not args.no_progress)
    try:
        res = run_demo(cfg)
    except DemoError as exc:
        print(f"adasde demo: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(res.rows, cfg.nfe))
    for s in res.skipped:
        print(f"not run: {s}")
    print(f"\nreport: {res.report}")
    if res.coefficients:
        print(f"distilled coefficients: {res.coefficients}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="distil, sample and score the built-in Fashion-MNIST model; writes an offline HTML report",
        description="Distils AdaSDE coefficients for the built-in model, samples with AdaSDE, AMED, ipndm, dpmpp_3m, "
        "unipc and euler at equal NFE, scores each with FD-FMNIST and writes OUT/report.html.",
    )
    p.add_argument("--out", default="adasde-demo", help="report folder (default: adasde-demo)")
    p.add_argument("--quick", action="store_true", help="reuse the shipped AdaSDE coefficients instead of distilling")
    p.add_argument("--nfe", type=int, default=5, help="headline number of network calls per image (default 5)")
    p.add_argument("--chart-nfes", type=int, nargs="+", default=[3, 5, 7, 9], help="NFEs of the chart")
    p.add_argument("--samples", type=int, default=1000, help="images per solver at the headline NFE")
    p.add_argument("--chart-samples", type=int, default=250, help="images per solver at the other NFEs")
    p.add_argument("--trajectories", type=int, default=1600, help="distillation trajectories")
    p.add_argument("--refine-trajectories", type=int, default=640,
                   help="trajectories of the grid refinement after distilling (0 = off; docs/ALGORITHMS.md "
                   "section 3.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
