"""``adasde bench ...``: benchmark sub-commands.  Each writes a Markdown report (machine, date, command) to
``bench/results/<name>.md``; when that file already exists (a committed result) the report goes to
``bench/results/<name>-<date>.md`` instead, unless ``--out-dir`` names where to write (``bench/common.write_report``).

Only arguments are defined here; each command imports its benchmark module (torch) when it runs.
"""

from __future__ import annotations

import argparse
import os

_OUT_DIR_HELP = ("write <name>.md here, replacing it (default: bench/results/<name>.md if new, else "
                 "bench/results/<name>-<date>.md: a committed result is never overwritten)")


def _overhead(a: argparse.Namespace) -> int:
    from .overhead import run

    return run(a)


def _solvers(a: argparse.Namespace) -> int:
    from .solvers import NFES, run

    text = run(a.quick, a.samples, tuple(a.nfes or NFES), tuple(a.solvers) if a.solvers else None, a.ref_steps,
               tuple(a.specs) if a.specs else None, a.seed, a.out_dir, a.threads)
    print(text)
    return 0


def _distill(a: argparse.Namespace) -> int:
    from .distill import _main

    return _main(a)


def _fid(a: argparse.Namespace) -> int:
    import torch

    from .fid import run

    torch.set_num_threads(int(os.environ.get("ADASDE_BENCH_THREADS", torch.get_num_threads())))
    print(run(a.dim, a.repeat, not a.no_sqrtm, a.inception_batch, a.inception_res, a.fmnist_batch, a.device,
              a.out_dir))
    return 0


def _builtin(a: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..samplers import SAMPLERS
    from .builtin import NFES, TABLE_SOLVERS, run

    if a.samples < 2 or min(a.seeds, a.workers, a.batch, a.ref_nfe, *(a.nfes or NFES)) < 1:
        raise UsageError("bench builtin: --samples must be >= 2 (FD-FMNIST needs a covariance); --seeds, --workers, "
                         "--batch, --ref-nfe and --nfes must be >= 1")
    unknown = [s for s in a.solvers or () if s not in SAMPLERS]
    if unknown:
        raise UsageError(f"bench builtin: unknown --solvers {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(SAMPLERS))}")
    print(run(a.samples, a.seeds, tuple(a.nfes or NFES), tuple(a.solvers or TABLE_SOLVERS), a.headline,
              ref_nfe=a.ref_nfe, batch=a.batch, workers=a.workers, out_dir=a.out_dir, progress=not a.no_progress))
    return 0


def _recipes(a: argparse.Namespace) -> int:
    from .recipes import run

    run(a.model, tuple(a.nfe), a.seeds, a.trajectories, a.name, a.out_dir)
    return 0


def _refine(a: argparse.Namespace) -> int:
    from ..errors import UsageError
    from .refine import run

    if min(a.repeats, a.trajectories, a.threads, *a.nfe) < 1 or a.samples < 2:
        raise UsageError("bench refine: --nfe, --repeats, --trajectories and --threads must be >= 1, --samples >= 2")
    given = {k: v for k, v in (("trajectories", a.refine_trajectories), ("heldout", a.refine_heldout),
                               ("passes", a.refine_passes)) if v is not None}
    if any(v < 1 for v in given.values()):
        raise UsageError("bench refine: --refine-trajectories, --refine-heldout and --refine-passes must be >= 1")
    cmd = (f"adasde bench refine --nfe {' '.join(map(str, a.nfe))} --repeats {a.repeats} --trajectories "
           f"{a.trajectories} --samples {a.samples} --threads {a.threads}"
           + "".join(f" --refine-{k} {v}" for k, v in given.items())
           + (f" --builtin-dir {a.builtin_dir}" if a.builtin_dir else ""))
    run(a.model, tuple(a.nfe), a.repeats, a.trajectories, a.samples, given, a.builtin_dir, a.threads, a.out_dir,
        a.name, not a.no_progress, cmd)
    return 0


def _guidance(a: argparse.Namespace) -> int:
    import torch

    from ..errors import UsageError
    from .guidance import run

    if a.samples < 1 or a.batch < 1 or min(a.rates) <= 0:
        raise UsageError("bench guidance: --samples and --batch must be >= 1, --rates > 0")
    torch.set_num_threads(a.threads)
    print(run(a.samples, tuple(a.nfes), tuple(a.solvers), a.classes, tuple(a.rates), a.batch, out_dir=a.out_dir))
    return 0


def _policy(a: argparse.Namespace) -> int:
    import sys

    import torch

    from ..errors import UsageError
    from .policy import run

    if min(a.samples, a.blocks, a.nfe) < 1 or a.samples < 2:
        raise UsageError("bench policy: --nfe, --blocks must be >= 1 and --samples >= 2")
    torch.set_num_threads(a.threads)
    print(run(a.nfe, a.samples, a.blocks, a.distilled, a.batch, a.out_dir, not a.no_progress,
              "adasde " + " ".join(sys.argv[1:])))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-commands (overhead, solvers, distill, fid, builtin, recipes, refine, guidance,
    policy)."""
    parser = subparsers.add_parser("bench", help="run a benchmark and write bench/results/<name>.md",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")

    p = sub.add_parser("overhead", help="solver overhead per step vs a plain Euler loop (zero-cost model)")
    p.add_argument("--shape", default="1,4,128,128", help="latent shape B,C,H,W (default 1,4,128,128)")
    p.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per sampler (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per sampler (default 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--name", default="overhead", help="report name: bench/results/<name>.md (default overhead)")
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.set_defaults(func=_overhead)

    p = sub.add_parser("solvers", help="every solver at NFE 3..10 on the exact GMM testbeds -> "
                       "bench/results/solvers.md")
    p.add_argument("--quick", action="store_true", help="smoke run: synthetic d = 64 testbeds, 200 samples, NFE 3 5 6")
    p.add_argument("--samples", type=int, default=None, help="samples per run (default 2000; --quick 200)")
    p.add_argument("--nfes", type=int, nargs="+", default=None, help="default 3 4 ... 10")
    p.add_argument("--solvers", nargs="+", default=None, help="default: every sampler in samplers.SAMPLERS")
    p.add_argument("--ref-steps", type=int, default=None, help="Heun steps of the reference solve (default 200)")
    p.add_argument("--specs", nargs="+", default=None, help="testbed specs (default fmnist-gmm and fmnist-gmm-error)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.set_defaults(func=_solvers)

    p = sub.add_parser("distill", help="distilled AdaSDE / AMED vs training-free solvers on the GMM testbed",
                       description="Distilled AdaSDE and AMED-Solver vs training-free solvers on the controlled-error "
                       "Gaussian-mixture testbed, CPU, fixed seeds; writes bench/results/distill.md.")
    p.add_argument("--model", default="testbed:gmm-error")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7, 9])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trajectories", type=int, default=10_000,
                   help="per distillation (the paper's 10k; --trajectories 2000 for a busy machine)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--no-amed", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: NFE 5 only, 2 repeats, 256 trajectories")
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.add_argument("--name", default="distill", help="report name: bench/results/<name>.md")
    p.set_defaults(func=_distill)

    p = sub.add_parser("fid", help="Frechet-distance, statistics and feature-network speed -> bench/results/fid.md")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-sqrtm", action="store_true", help="skip the (slow) scipy sqrtm reference")
    p.add_argument("--inception-batch", type=int, default=4)
    p.add_argument("--inception-res", type=int, default=32)
    p.add_argument("--fmnist-batch", type=int, default=500)
    p.add_argument("--device", default=None)
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.set_defaults(func=_fid)

    p = sub.add_parser("builtin", help="FD-FMNIST of the built-in model per solver and NFE, and each solver's error "
                       "against the converged model from the same noise -> bench/results/builtin.md")
    p.add_argument("--samples", type=int, default=5000, help="images per seed block, at every NFE (default 5000)")
    p.add_argument("--seeds", type=int, default=3, help="disjoint seed blocks per cell (default 3)")
    p.add_argument("--headline", type=int, default=5,
                   help="the NFE of the ratio and AMED-vs-iPNDM verdict lines (default 5)")
    p.add_argument("--nfes", type=int, nargs="+", default=None, help="default 3 5 7 9")
    p.add_argument("--solvers", nargs="+", default=None, help="default adasde amed ipndm dpmpp_3m unipc euler")
    p.add_argument("--ref-nfe", type=int, default=35,
                   help="NFE of the converged Heun reference on the model's default grid (default 35)")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)))
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_builtin)

    p = sub.add_parser("recipes", help="choose AdaSDE settings per NFE by held-out teacher loss -> "
                       "bench/results/recipes.md")
    p.add_argument("--model", default="testbed:gmm-error")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7, 9])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--trajectories", type=int, default=10_000)
    p.add_argument("--name", default="recipes", help="report name: bench/results/<name>.md")
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.set_defaults(func=_recipes)

    p = sub.add_parser("refine", help="endpoint refinement before/after: exact FD on the GMM testbed per method, "
                       "NFE and seed; the built-in files' refinement records -> bench/results/refine.md")
    p.add_argument("--model", default="testbed:gmm-error")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7, 9])
    p.add_argument("--repeats", type=int, default=5, help="distillation seeds 0 .. repeats-1 (default 5)")
    p.add_argument("--trajectories", type=int, default=4000,
                   help="stage-1 trajectories of AdaSDE and AMED-Solver (default 4000, fits a CPU)")
    p.add_argument("--samples", type=int, default=2000, help="samples per Frechet distance (default 2000)")
    p.add_argument("--refine-trajectories", type=int, default=None, help="refinement trajectories (default 2560)")
    p.add_argument("--refine-heldout", type=int, default=None, help="refinement held-out trajectories (default 512)")
    p.add_argument("--refine-passes", type=int, default=None, help="refinement passes (default 2)")
    p.add_argument("--builtin-dir", default=None, metavar="DIR",
                   help="folder of the builtin-fmnist-*.safetensors files to list (default: the shipped ones)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--name", default="refine", help="report name: bench/results/<name>.md")
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_refine)

    p = sub.add_parser("guidance", help="classifier guidance on the built-in model: requested-class accuracy "
                       "per solver and NFE -> bench/results/guidance.md")
    p.add_argument("--samples", type=int, default=300, help="images per cell (the same seeds in every cell)")
    p.add_argument("--nfes", type=int, nargs="+", default=[3, 5, 9])
    p.add_argument("--solvers", nargs="+", default=["adasde", "euler", "dpmpp_3m"])
    p.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="requested classes, seed s gets classes[s mod n]")
    p.add_argument("--rates", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="classifier-guidance rates (> 0)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.set_defaults(func=_guidance)

    p = sub.add_parser("policy", help="what the defaults give: automatic coefficient choice vs the named file, "
                       "untrained and training-free solvers -> bench/results/policy.md")
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--samples", type=int, default=2000, help="images per seed block")
    p.add_argument("--blocks", type=int, default=2, help="disjoint seed blocks")
    p.add_argument("--distilled", default=None, metavar="FILE",
                   help="also score a file written by `adasde distill` with default flags")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=None, help=_OUT_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_policy)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)
