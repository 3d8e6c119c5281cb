"""``adasde distill``: distil AdaSDE (or AMED) coefficients for a model spec and write a coefficient file.

    adasde distill --model testbed:gmm-error --nfe 5 --out gmm-nfe5.safetensors
    torchrun --nproc_per_node 2 -m adasde distill --model builtin:fmnist --steps 3 --out fmnist3.safetensors
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import AdasdeError, InputFileError, UsageError
from ..fileio import OutputLock, check_writable
from ..policy.presets import add_guidance_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` sub-command."""
    p = subparsers.add_parser(
        "distill",
        help="distil AdaSDE / AMED coefficients for a model and write a coefficient file",
        description="Learn per-step AdaSDE coefficients (docs/ALGORITHMS.md section 3.5) or an AMED predictor "
        "(section 4.4) by matching a many-step teacher, and write a .safetensors coefficient file. "
        "Under torchrun the batch is split across processes.",
    )
    p.add_argument("--model", required=True, help="model spec, e.g. builtin:fmnist, testbed:gmm-error, diffusers:DIR")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps of the student (grid intervals; AdaSDE NFE = (1 + K) steps - [AFS])")
    p.add_argument("--nfe", type=int, default=None, help="target NFE instead of --steps")
    p.add_argument("--method", choices=("adasde", "amed", "amed_plugin"), default="adasde")
    p.add_argument("--base", default="ipndm", help="base solver of --method amed_plugin (euler, dpm_2, ipndm, dpmpp)")
    p.add_argument("--constant", action="store_true",
                   help="--method amed_plugin: train constant per-step r, c, a tables instead of the AMED predictor "
                   "network on the model's bottleneck (the default, as the AMED paper)")
    p.add_argument("--max-order", type=int, default=None,
                   help="--method amed_plugin: order of the ipndm (<= 4, default 4) / dpmpp (<= 3, default 3) base")
    p.add_argument("--predict-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="--method amed_plugin --base dpmpp: data prediction (default) or noise prediction "
                   "(--no-predict-x0, the AMED reference's setting for latent models)")
    p.add_argument("--lower-order-final", action=argparse.BooleanOptionalAction, default=None,
                   help="--method amed_plugin: lower the order on the last sub-steps (default: on for dpmpp)")
    p.add_argument("--thresholding", action=argparse.BooleanOptionalAction, default=None,
                   help="--method amed_plugin --base dpmpp: dynamic thresholding of the data predictions (default: "
                   "on with data prediction, as the AMED reference; pixel models with data in [-1, 1] only)")
    p.add_argument("--afs", action=argparse.BooleanOptionalAction, default=True, help="analytical first step")
    p.add_argument("--schedule", default=None,
                   help="polynomial | logsnr | time_uniform | discrete | flow_shift, or 'paper' for the paper's "
                   "choice for --method (default: the grid the model declares, e.g. polynomial rho 7 for "
                   "builtin:fmnist; the sampling doors use the same default)")
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--teacher", default=None, help="dpm2 (AdaSDE default) | heun (AMED default) | dpmpp | euler | "
                   "student")
    p.add_argument("--M", type=int, default=None, help="teacher points per student interval (AdaSDE 3, AMED 1)")
    p.add_argument("--K", type=int, default=1, help="parallel points per step (AdaSDE)")
    p.add_argument("--scale-dir", type=float, default=None, help="s_c (AdaSDE 0.05, AMED 0.01)")
    p.add_argument("--scale-time", type=float, default=None, help="s_a (AdaSDE 0.2, AMED 0)")
    p.add_argument("--gamma-max", type=float, default=None, help="AdaSDE churn bound (0 = no churn; recipe)")
    p.add_argument("--loss", choices=("l2", "feature", "l2+feature"), default="l2")
    p.add_argument("--feature-net", default="fmnist", help="differentiable feature net for --loss feature: fmnist")
    p.add_argument("--alpha", type=float, default=20.0, help="final-step feature-loss weight (x C*H*W, as the paper)")
    p.add_argument("--lr", type=float, default=None, help="Adam lr (AdaSDE 0.2 cosine, AMED 5e-3 constant)")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=None, help="cosine annealing to 0.01")
    p.add_argument("--batch", type=int, default=None, help="trajectories per iteration (AdaSDE: recipe; AMED 128)")
    p.add_argument("--trajectories", type=int, default=None, help="teacher trajectories in all (10,000)")
    p.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=True,
                   help="AdaSDE: take M, scale_dir, gamma_max, lr, batch and trajectories not given on the command "
                   "line from the per-NFE recipe (distill/recipes.py); --no-recipe: the paper's single settings")
    p.add_argument("--init", choices=("scan", "random"), default=None,
                   help="start of the r table: scan on a held-out batch (robust) or the papers' random draw")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="after distilling, learn the time grid jointly with the coefficients against converged "
                   "endpoints, kept only when the held-out loss falls (AdaSDE and AMED-Solver; docs/ALGORITHMS.md "
                   "section 3.9); --no-refine: the papers' fixed grid")
    p.add_argument("--from", dest="start", default=None, metavar="FILE",
                   help="start from this coefficient file instead of distilling (refine only)")
    p.add_argument("--refine-trajectories", type=int, default=None,
                   help="refinement: noise -> converged endpoint pairs to train on (2560)")
    p.add_argument("--refine-passes", type=int, default=None, help="refinement: passes over them (2)")
    p.add_argument("--refine-lr", type=float, default=None, help="refinement: Adam lr, cosine to 0 (0.05)")
    p.add_argument("--teacher-nfe", type=int, default=None,
                   help="refinement: model calls of the converged Heun solution (35)")
    p.add_argument("--endpoints", default=None, metavar="FILE",
                   help="refinement: cache of the converged endpoints, reused by later runs on the same model "
                   "(e.g. for other NFEs); written when missing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bptt", action=argparse.BooleanOptionalAction, default=None,
                   help="back-propagate through the student trajectory (AdaSDE default) or teacher-force (AMED)")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute model calls in backward (less memory)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="output coefficient file (.safetensors)")
    p.add_argument("--checkpoint", default=None, help="training checkpoint (default: OUT.ckpt.safetensors)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the training checkpoint after a successful run (default: removed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
    add_guidance_arguments(p, "distill", prompts=True)


class TqdmProgress:
    """tqdm bar over iterations (rate in trajectories/s, ETA, loss); rank 0 only."""

    def __init__(self, total: int, batch: int, disable: bool = False) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="traj", unit_scale=True, dynamic_ncols=True, disable=disable,
                        desc="distill")
        self.batch = batch

    def __call__(self, info: dict[str, Any]) -> None:
        self.bar.total = info["iterations"] * self.batch
        self.bar.n = info["trajectories"]
        self.bar.set_postfix(loss=f"{info['loss']:.4g}", lr=f"{info['lr']:.3g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..runtime import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.start is None and args.steps is None and args.nfe is None:
        raise UsageError("give --steps N (sampling steps) or --nfe K")
    if args.start is not None and not args.refine:
        raise UsageError(f"--from {args.start} with --no-refine has nothing to do; drop --no-refine")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.schedule == "paper":
        from ..samplers.presets import PAPER_SCHEDULES

        args.schedule, rho = PAPER_SCHEDULES[args.method]
        args.rho = rho if args.rho is None else args.rho
    rank, size = init_distributed(args.device)
    out = Path(args.out)
    ck = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt.safetensors")
    lock = contextlib.nullcontext()
    if rank == 0:  # validate the outputs before loading the model or training
        check_writable(out, "--out")
        check_writable(ck, "--checkpoint")
        if ck.resolve() == out.resolve():
            raise UsageError(f"--checkpoint {ck} is the same file as --out; pass another path")
        if args.endpoints:
            check_writable(Path(args.endpoints), "--endpoints")
        if args.start is not None:
            _check_start(args)
        lock = OutputLock(out, "--out")
    with lock:
        return _distill(args, out, ck, size, rank)


def _plugin_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The AMED-Plugin base's solver form from the flags, the --preset's solver form filling the ones not given
    (latent presets: noise prediction, as the AMED reference trains its LDM / SD plugins)."""
    if args.method != "amed_plugin":
        return None
    from ..policy.presets import preset_of

    preset = preset_of(args)
    keys = {"dpmpp": ("max_order", "predict_x0", "lower_order_final"), "ipndm": ("max_order",)}.get(args.base, ())
    opts = {k: v for k, v in (preset.solver_options if preset is not None else {}).items() if k in keys}
    if args.base == "ipndm" and "max_order" in opts:
        opts["max_order"] = min(int(opts["max_order"]), 4)
    given = {"max_order": args.max_order, "predict_x0": args.predict_x0, "lower_order_final": args.lower_order_final,
             "thresholding": args.thresholding}
    opts.update({k: v for k, v in given.items() if v is not None})
    return opts or None


def _check_start(args: argparse.Namespace) -> None:
    """--from: a readable AdaSDE or AMED-Solver file (before the model is loaded)."""
    from .. import coefficients

    c = coefficients.load(args.start)  # InputFileError names the file
    if c.kind not in ("adasde", "amed"):
        raise UsageError(f"--from {args.start} holds {c.kind!r} coefficients; refinement supports adasde and amed")
    if args.nfe is not None and c.nfe != args.nfe:
        raise UsageError(f"--from {args.start} is an NFE-{c.nfe} file, not --nfe {args.nfe}; drop --nfe")
    if args.steps is not None and c.steps != args.steps:
        raise UsageError(f"--from {args.start} has {c.steps} steps, not --steps {args.steps}; drop --steps")


def _refine(args: argparse.Namespace, model: Any, coeffs: Any, out: Path, ck: Path, cond: Any,
            rank: int) -> tuple[Any, Path]:
    """The refinement stage of ``adasde distill`` (distill/refine.py); returns (record, its checkpoint)."""
    from .refine import RefineOptions, refine

    rck = ck.with_name(ck.name.replace(".ckpt.", ".refine.ckpt.") if ".ckpt." in ck.name else ck.name + ".refine")
    given = {k: v for k, v in (("trajectories", args.refine_trajectories), ("passes", args.refine_passes),
                               ("lr", args.refine_lr), ("teacher_nfe", args.teacher_nfe)) if v is not None}
    o = RefineOptions(seed=args.seed, device=args.device, grad_checkpoint=args.grad_checkpoint,
                      endpoints=args.endpoints, checkpoint=str(rck), checkpoint_every=args.checkpoint_every,
                      resume=args.resume, **given)
    o.condition_fn = cond.distill_condition(o.batch)
    bar = RefineProgress(disable=args.no_progress or rank != 0)
    o.progress = bar
    try:
        return refine(model, coeffs, o), rck
    finally:
        bar.close()


class RefineProgress:
    """tqdm bars for the two phases of refinement (converged endpoints, then training); rank 0 only."""

    def __init__(self, disable: bool = False) -> None:
        self.disable, self.bar, self.phase = disable, None, None

    def __call__(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        if info["phase"] != self.phase:
            self.close()
            self.phase = info["phase"]
            total = info.get("total", info.get("iterations"))
            desc = "converged endpoints" if self.phase == "endpoints" else "refine grid"
            self.bar = tqdm(total=total, unit="batch" if self.phase == "endpoints" else "it", desc=desc,
                            dynamic_ncols=True, disable=self.disable)
        self.bar.n = info.get("done", info.get("iteration", 0))
        if "loss" in info:
            self.bar.set_postfix(loss=f"{info['loss']:.4g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _options(args: argparse.Namespace, model: Any, ck: Path, cond: Any) -> tuple[Any, int]:
    """The first stage's DistillOptions (recipe, flags, conditioning) and its batch."""
    from .features import feature_net_by_name
    from .options import ADASDE_DEFAULTS, AMED_DEFAULTS, DistillOptions
    from .recipes import nfe_of, recipe

    given = {k: v for k, v in (("teacher", args.teacher), ("M", args.M), ("scale_dir", args.scale_dir),
                               ("scale_time", args.scale_time), ("lr", args.lr), ("cosine", args.cosine),
                               ("bptt", args.bptt), ("batch", args.batch), ("trajectories", args.trajectories),
                               ("gamma_max", args.gamma_max)) if v is not None}
    points = None if args.steps is None else args.steps + 1  # --steps counts intervals
    opts = DistillOptions(num_steps=points, nfe=args.nfe, afs=args.afs, schedule=args.schedule, rho=args.rho,
                          seed=args.seed, device=args.device, checkpoint=str(ck),
                          checkpoint_every=args.checkpoint_every, resume=args.resume,
                          grad_checkpoint=args.grad_checkpoint, name=args.model, init=args.init or "scan")
    if args.method == "adasde":
        if args.recipe:
            nfe = args.nfe if args.nfe is not None else nfe_of(points, args.afs, args.K)
            given = {**recipe(nfe, getattr(model, "family", None)), **given}
            if args.init is not None:
                given["init"] = args.init
        feat = feature_net_by_name(args.feature_net, args.device) if args.loss != "l2" else None
        opts = dataclasses.replace(opts, K=args.K, loss=args.loss, feature_net=feat, alpha=args.alpha, **given)
    else:
        if args.loss != "l2":
            raise UsageError("AMED trains with the L2 loss only (docs/ALGORITHMS.md section 4.4); drop --loss")
        if args.gamma_max is not None:
            raise UsageError(f"--gamma-max {args.gamma_max} is an AdaSDE setting; AMED has no churn. "
                             "Fix: drop --gamma-max")
        opts = dataclasses.replace(opts, plugin=args.base if args.method == "amed_plugin" else None,
                                   constant=args.constant, plugin_options=_plugin_options(args), **given)
    if args.method != "amed_plugin":
        flags = [f for f, v in (("--constant", args.constant), ("--max-order", args.max_order),
                                ("--predict-x0", args.predict_x0), ("--lower-order-final", args.lower_order_final),
                                ("--thresholding", args.thresholding)) if v not in (None, False)]
        if flags:
            raise UsageError(f"{', '.join(flags)} only apply to --method amed_plugin. Fix: drop them, or add "
                             "--method amed_plugin --base BASE")
    batch = opts.batch or (ADASDE_DEFAULTS if args.method == "adasde" else AMED_DEFAULTS)["batch"]
    opts = dataclasses.replace(opts, condition_fn=cond.distill_condition(batch))
    return opts, batch


def _distill(args: argparse.Namespace, out: Path, ck: Path, size: int, rank: int) -> int:
    import torch

    from .. import coefficients
    from ..conditioning import conditioning_from_args
    from ..models import load_model
    from ..runtime import barrier
    from .adasde import distill

    model = load_model(args.model, device=args.device)
    cond = conditioning_from_args(model, args)
    model = cond.model
    if isinstance(model, torch.nn.Module):
        model.requires_grad_(False)  # gradients flow to x and the coefficients only
    if args.start is not None:
        from ..policy.model import ModelInfo
        from ..policy.plan import check_file

        coeffs = coefficients.load(args.start)
        check_file(coeffs, ModelInfo.of(model), coeffs.kind)
    else:
        opts, batch = _options(args, model, ck, cond)
        bar = TqdmProgress(opts.trajectories, batch, disable=args.no_progress or rank != 0)
        opts.progress = bar
        try:
            if args.method == "adasde":
                coeffs = distill(model, opts)
            else:
                from .amed import distill_amed

                coeffs = distill_amed(model, opts)
        finally:
            bar.close()
    checkpoints = [ck]
    if args.refine and coeffs.kind in ("adasde", "amed"):
        coeffs, rck = _refine(args, model, coeffs, out, ck, cond, rank)
        checkpoints.append(rck)
    elif args.refine and rank == 0:
        print(f"note: refinement supports adasde and amed, not {coeffs.kind}; the fixed grid is kept",
              file=sys.stderr)
    if rank == 0:
        try:
            coefficients.save(coeffs, out)
        except (OSError, AdasdeError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InputFileError(f"could not write {out}: {why}; the finished training is in the checkpoint {ck}: "
                                 f"fix the problem and rerun the same command with --resume (it only re-saves)") \
                from None
        if not args.keep_checkpoint:
            for path in checkpoints:
                with contextlib.suppress(OSError):
                    path.unlink()
        summary = {"out": str(out), "kind": coeffs.kind, "nfe": coeffs.nfe, "steps": coeffs.steps,
                   "seconds": coeffs.training.get("seconds"),
                   "final_loss": coeffs.training.get("losses", {}).get("final_total"),
                   "r": [round(v, 4) for v in coeffs.r[:, 0].tolist()],
                   "a": [round(v, 4) for v in coeffs.a[:, 0].tolist()],
                   "c": [round(v, 4) for v in coeffs.c[:, 0].tolist()],
                   "gamma": [float(f"{v:.3g}") for v in coeffs.gamma[:, 0].tolist()],
                   "sigmas": [float(f"{v:.5g}") for v in coeffs.sigmas.tolist()]}
        ref = coeffs.training.get("refine")
        if ref:
            summary["refine"] = {k: ref[k] for k in ("kept", "heldout_before", "heldout_after")}
        print(json.dumps(summary), file=sys.stdout)
    if size > 1:
        barrier()
    return 0
