"""``adasde sample`` and ``adasde fid sample``: the commands that generate images.

    adasde sample --model builtin:fmnist --sampler adasde --nfe 5 --seeds 0-63 --grid grid.png
    adasde sample --model diffusers:./sd15 --sampler adasde --steps 3 --prompts captions.csv --cfg 7.5 --out samples/
    adasde fid sample --model builtin:fmnist --sampler adasde --nfe 5 --seeds 0-4999 --ref fmnist_test.npz
    torchrun --nproc_per_node=2 -m adasde sample ...       (each rank a seed shard, one output folder)
"""

from __future__ import annotations

import argparse
import json
import sys

from ..policy.presets import add_guidance_arguments

PLAN_HELP = ("--steps counts sampling steps (intervals); --nfe picks the step count and AFS that make exactly K model "
             "calls. adasde/amed pick the best fitting coefficient file automatically (--coeffs FILE to choose one, "
             "--coeffs untrained for none) and say so when none fits.")


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model spec, e.g. builtin:fmnist or diffusers:DIR")
    p.add_argument("--config", default=None, metavar="DIR",
                   help="diffusers config folder for single-file:FILE specs (model_index.json or a UNet config)")
    p.add_argument("--sampler", default="adasde", help="adasde, amed, euler, heun, dpm_2, ipndm, dpmpp_2m, ...")
    p.add_argument("--coeffs", default=None, metavar="FILE",
                   help="coefficient file, or 'untrained' (default: automatic choice for the model and step count)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, default=None, help="number of model calls per image")
    g.add_argument("--steps", type=int, default=None, help="number of sampling steps (grid intervals)")
    p.add_argument("--schedule", default=None, help="polynomial | logsnr | time_uniform | discrete | flow_shift "
                   "(default: the model's grid for adasde/amed, the paper's for training-free solvers)")
    p.add_argument("--rho", type=float, default=None, help="schedule exponent for --schedule (flow_shift: the shift)")


def register(subparsers: argparse._SubParsersAction, fid: argparse._SubParsersAction | None = None) -> None:
    """Add ``sample`` to the top-level commands and ``sample`` to the ``fid`` commands."""
    p = subparsers.add_parser(
        "sample", help="generate images (PNGs with parameters and/or a grid); torchrun-aware",
        description="Generate images with AdaSDE / AMED / a training-free sampler from a model spec. " + PLAN_HELP)
    _plan_arguments(p)
    p.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 0,4,10-19 (one image per seed)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt file: .txt (one per line) or .csv with a 'caption' column (MS-COCO layout)")
    p.add_argument("--prompt", default=None, help="a single prompt for every seed")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 7.5; 1 = off)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for SEED.png (+ .adasde_sample.json)")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write a grid PNG of all seeds")
    p.add_argument("--batch", type=int, default=8, help="images per batch and rank")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="model weights dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample)
    add_guidance_arguments(p, "sample", prompts=False)
    if fid is None:
        return
    from ..evaluation.cli import common_arguments

    p = fid.add_parser("sample", help="generate with a sampler and score, in one stream (resumable, torchrun)",
                       description="Generate the images of --seeds and score them against --ref. " + PLAN_HELP)
    _plan_arguments(p)
    p.add_argument("--seeds", default="0-49999", help="seeds, e.g. 0-49999 (default) or 0,5,10-19")
    p.add_argument("--ref", required=True, help="reference statistics .npz")
    p.add_argument("--net", default=None, help="feature network (default: the one recorded in --ref)")
    p.add_argument("--out-images", default=None, help="also write every image as DIR/<seed>.png")
    p.add_argument("--resume", default=None, metavar="STATE",
                   help="state file: saved periodically, a rerun continues from it (one file per rank)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between state saves (300)")
    common_arguments(p)
    p.set_defaults(func=_fid_sample)
    add_guidance_arguments(p, "sample", prompts=True)


def _notes(notes: list[str]) -> None:
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


def _sample(a: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..runtime import init_distributed
    from .sample import sample_images

    if a.prompts and a.prompt:
        raise UsageError("sample: give --prompts FILE or --prompt TEXT, not both")
    rank, _ = init_distributed(a.device)
    prompts = a.prompts if a.prompts else ([a.prompt] if a.prompt else None)
    rec = sample_images(a.model, a.sampler, a.seeds, out=a.out, grid=a.grid, coeffs=a.coeffs, nfe=a.nfe,
                        steps=a.steps, schedule=a.schedule, rho=a.rho, prompts=prompts,
                        cfg=a.guidance_rate if a.guidance_rate is not None else 7.5,
                        negative_prompt=a.negative_prompt, batch=a.batch, device=a.device, dtype=a.dtype,
                        progress=not a.no_progress, model_kwargs={"config": a.config} if a.config else None,
                        guidance=a.guidance, guidance_rate=a.guidance_rate, classes=a.classes,
                        classifier=a.classifier, preset=a.preset)
    if rank == 0:
        plan = rec["plan"]
        _notes(plan["notes"])
        print(json.dumps({"model": rec["model"], "sampler": plan["sampler"], "steps": plan["steps"],
                          "nfe": plan["nfe"], "schedule": plan["schedule"], "afs": plan["afs"],
                          "coefficients": plan["coefficients"], "coefficients_sha256": rec["coefficients_sha256"],
                          "seeds": rec["seeds"], "num_images": rec["num_images"], "seconds": rec["seconds"],
                          "out": a.out, "grid": rec.get("grid")}))
    return 0


def _fid_sample(a: argparse.Namespace) -> int:
    from ..evaluation.cli import emit
    from ..runtime import init_distributed, rank_world
    from .score import sample_and_score

    init_distributed(a.device)
    res = sample_and_score(a.model, a.sampler, a.seeds, a.ref, coeffs=a.coeffs, nfe=a.nfe, steps=a.steps,
                           schedule=a.schedule, rho=a.rho, batch=a.batch, net=a.net, device=a.device,
                           weights=a.inception_weights, allow_download=a.allow_download, out_images=a.out_images,
                           resume=a.resume, checkpoint_every=a.checkpoint_every, progress=not a.no_progress,
                           model_kwargs={"config": a.config} if a.config else None, guidance=a.guidance,
                           guidance_rate=a.guidance_rate, prompts=a.prompts, negative_prompt=a.negative_prompt,
                           classes=a.classes, classifier=a.classifier, preset=a.preset)
    if rank_world()[0] == 0:
        _notes(res["protocol"]["notes"])
    emit(res, a.json)
    return 0
