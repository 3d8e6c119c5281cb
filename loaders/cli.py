"""``adasde sample``: images or a grid from any model spec and sampler (see :mod:`.sample`).

    adasde sample --model diffusers:./sd15 --sampler adasde --coeffs sd15_nfe5.safetensors \\
        --seeds 0-15 --prompts captions.csv --cfg 7.5 --out samples/ --grid grid.png
    torchrun --nproc_per_node=2 -m adasde sample ...       (each rank a seed shard, one output folder)
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample", help="generate images (PNGs and/or a grid) with a sampler; torchrun-aware",
        description="Generate images with AdaSDE / AMED / a baseline sampler from a model spec: builtin:fmnist, "
        "diffusers:DIR (UNet2DModel, LDM, Stable Diffusion, SDXL folders), single-file:FILE --config DIR.",
    )
    p.add_argument("--model", required=True, help="model spec, e.g. diffusers:./sd15 or single-file:unet.safetensors")
    p.add_argument("--config", default=None, metavar="DIR",
                   help="diffusers config folder for single-file:FILE specs (model_index.json or a UNet config)")
    p.add_argument("--sampler", default="adasde", help="adasde, amed, euler, heun, dpm_2, ipndm, dpmpp_2m, ...")
    p.add_argument("--coeffs", default=None, metavar="FILE", help="coefficient file (its grid and NFE are used)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, default=None, help="number of model calls (paper presets)")
    g.add_argument("--steps", type=int, default=None, help="grid points N of --schedule")
    p.add_argument("--schedule", default=None, help="time_uniform | polynomial | logsnr | discrete "
                   "(default: the model's for adasde/amed, the paper's for baselines)")
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 0,4,10-19 (one image per seed)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt file: .txt (one per line) or .csv with a 'caption' column (MS-COCO layout)")
    p.add_argument("--prompt", default=None, help="a single prompt for every seed")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for SEED.png (+ .adasde_sample.json)")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write a grid PNG of all seeds")
    p.add_argument("--batch", type=int, default=8, help="images per batch and rank")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="model weights dtype (fp16 falls back to fp32 on CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    import sys

    from ..evaluation.pipeline import init_distributed
    from .base import ModelSpecError
    from .sample import sample_images

    if a.prompts and a.prompt:
        raise SystemExit("sample: give --prompts FILE or --prompt TEXT, not both")
    rank, _ = init_distributed()
    prompts = a.prompts if a.prompts else ([a.prompt] if a.prompt else None)
    try:
        res = sample_images(a.model, a.sampler, a.seeds, out=a.out, grid=a.grid, coeffs=a.coeffs, nfe=a.nfe,
                            steps=a.steps, schedule=a.schedule, rho=a.rho, prompts=prompts, cfg=a.cfg,
                            negative_prompt=a.negative_prompt, batch=a.batch, device=a.device, dtype=a.dtype,
                            progress=not a.no_progress, model_kwargs={"config": a.config} if a.config else None)
    except (ModelSpecError, ValueError, FileNotFoundError) as exc:
        print(f"adasde sample: error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps({k: res[k] for k in ("model", "sampler", "num_images") if k in res} |
                         {"out": a.out, "grid": res.get("grid")}))
    return 0
