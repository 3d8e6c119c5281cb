"""``adasde sample``: images (PNGs and/or a grid) from any sampler and model spec (docs/ALGORITHMS.md section 3.4).

* Initial noise x_T = sigma_max z, z from a CPU generator seeded by the image's seed (``samplers.presets.
  initial_noise``); churn noise from per-sample generators (``extra_args["seed"]``) - so an image depends only on its
  seed (and prompt), not on the batch size or the number of processes.
* Prompts: seed ``s`` uses prompt ``s mod len(prompts)`` (``prompts.prompts_for_seeds``).
* Multi-process (``torchrun``): rank ``r`` of ``W`` takes seeds ``seeds[r::W]`` and writes into the same ``--out``
  folder; rank 0 gathers the images and writes the grid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .base import Denoiser, ModelSpecError
from .prompts import prompts_for_seeds, read_prompts

TEXT_SCHEDULE_SAMPLERS = ("adasde", "amed")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float NCHW -> uint8 (round to nearest)."""
    return (images.float().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)


def make_grid(images: Sequence[torch.Tensor], nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """uint8 [C, H, W] images -> one uint8 [C, H', W'] grid, ``nrow`` images per row (default ceil(sqrt(n)))."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    n = len(images)
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    c, h, w = images[0].shape
    grid = torch.zeros((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=torch.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, nrow)
        grid[:, pad + y * (h + pad): pad + y * (h + pad) + h, pad + x * (w + pad): pad + x * (w + pad) + w] = img
    return grid


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def sample_images(
    model: str | Denoiser,
    sampler: str = "adasde",
    seeds: str | Sequence[int] = "0-15",
    out: str | os.PathLike | None = None,
    grid: str | os.PathLike | None = None,
    coeffs: str | os.PathLike | None = None,
    nfe: int | None = None,
    steps: int | None = None,
    schedule: str | None = None,
    rho: float | None = None,
    prompts: str | os.PathLike | Sequence[str] | None = None,
    cfg: float = 7.5,
    negative_prompt: str | None = None,
    batch: int = 8,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate the images of ``seeds`` (module docstring).  ``out``: folder for ``{seed:06d}.png`` only (the run's
    protocol goes to the hidden ``.adasde_sample.json``, so ``fid calc`` can score the folder); ``grid``: grid PNG.
    ``prompts``: a .txt/.csv file or a list.
    ``steps`` counts grid points N, as ``distill`` and ``fid sample`` do.  Returns the protocol dict."""
    from ..evaluation.images import save_png
    from ..evaluation.pipeline import dist_info, parse_seeds, sampler_setup
    from ..samplers.presets import initial_noise
    from . import load_model

    if out is None and grid is None:
        raise ValueError("sample needs --out DIR and/or --grid FILE")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if coeffs is None and nfe is None and steps is None:
        raise ValueError("sample needs --coeffs FILE, --nfe K or --steps N (grid points)")
    rank, world = dist_info()
    seed_list = parse_seeds(seeds)
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    dt = {None: None, "fp32": None, "float32": None, "fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, dtype)
    if isinstance(dt, str):
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
    den = load_model(model, device=dev, dtype=dt, **(model_kwargs or {})) if isinstance(model, str) else model
    prompt_list: list[str] | None = None
    if prompts is not None:
        prompt_list = read_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else [str(p) for p in prompts]
        if not prompt_list:
            raise ValueError("the prompt list is empty")
        if not getattr(den, "text_conditioned", False):
            raise ModelSpecError(
                f"{model if isinstance(model, str) else type(model).__name__}: prompts were given but this is not a "
                f"text-to-image model (family {den.family!r}); give a StableDiffusionPipeline / "
                "StableDiffusionXLPipeline folder, or drop --prompts"
            )
    if schedule is None and coeffs is None and sampler in TEXT_SCHEDULE_SAMPLERS and den.model_sigmas is not None:
        schedule, rho = den.default_schedule if rho is None else (den.default_schedule[0], rho)
    fn, sigmas, options, proto = sampler_setup(den, sampler, coeffs=coeffs, nfe=nfe, steps=steps,
                                               schedule=schedule, rho=rho)
    sigmas = sigmas.to(dev)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    shard = seed_list[rank::world]
    keep: list[tuple[int, torch.Tensor]] = []
    with tqdm(total=len(shard), desc=f"sample {sampler}", unit="img", disable=not progress or rank != 0) as bar:
        for i in range(0, len(shard), batch):
            s = shard[i: i + batch]
            x = initial_noise(s, den.sample_shape, den.sigma_max, device=dev)
            extra: dict[str, Any] = {"seed": list(s)}
            if prompt_list is not None:
                extra.update(prompts=prompts_for_seeds(prompt_list, s), cfg=float(cfg))
                if negative_prompt:
                    extra["negative_prompt"] = negative_prompt
            with torch.no_grad():
                y = fn(den, x, sigmas, extra_args=extra, disable=True, **options)
                imgs = to_uint8(den.decode(y)).cpu()
            for seed, img in zip(s, imgs):
                if out_dir is not None:
                    save_png(img, out_dir / f"{seed:06d}.png")
                if grid is not None:
                    keep.append((seed, img))
            bar.update(len(s))
    protocol = {"model": model if isinstance(model, str) else type(model).__name__, **proto,
                "seeds": seeds if isinstance(seeds, str) else f"{len(seed_list)} seeds", "num_images": len(seed_list),
                "cfg": float(cfg) if prompt_list is not None else None, "prompts": len(prompt_list or []),
                "world_size": world, "initial_noise": "x_T = sigma_max * randn(torch.Generator().manual_seed(seed))"}
    if grid is not None:
        keep = _gather(keep, world)
    if rank == 0:
        if grid is not None:
            order = {s: k for k, s in enumerate(seed_list)}
            keep.sort(key=lambda t: order[t[0]])
            gpath = Path(grid)
            save_png(make_grid([img for _, img in keep]), gpath)
            protocol["grid"] = str(gpath)
        if out_dir is not None:
            _write_json(out_dir / ".adasde_sample.json", protocol)  # hidden: FID tools skip dot files
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return protocol


def _gather(items: list[tuple[int, torch.Tensor]], world: int) -> list[tuple[int, torch.Tensor]]:
    """All ranks' (seed, image) pairs on every rank (gloo/NCCL object gather)."""
    if world == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, [(s, img.numpy()) for s, img in items])
    return [(s, torch.from_numpy(a)) for part in parts for s, a in part]
