"""``adasde sample``: images (PNGs with their generation parameters, and/or a grid) from a model spec.

* The plan (grid, coefficients, NFE, notes) comes from :func:`policy.plan`; the images from :func:`generate`.
* Prompts: seed ``s`` uses prompt ``s mod len(prompts)``, so an image depends only on its seed.
* ``torchrun``: rank ``r`` of ``W`` takes seeds ``seeds[r::W]`` into the same ``--out`` folder; rank 0 writes the
  grid and the run record ``.adasde_sample.json`` (hidden, so image tools and ``fid calc`` skip it).
* An interrupted run into the same folder resumes (images already written are kept, the rest generated); a folder
  holding another run's images is refused before any work.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import InputFileError, UsageError
from ..evaluation.pipeline import write_json
from ..policy import AUTO, Plan, plan
from ..runtime import barrier, rank_world
from ..runtime import device as parse_device
from ..runtime import dtype as parse_dtype
from .loop import generate
from .seeds import parse_seeds, shard

RECORD = ".adasde_sample.json"


def make_grid(images: Sequence[torch.Tensor], nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """uint8 [C, H, W] images -> one uint8 [C, H', W'] grid, ``nrow`` images per row (default ceil(sqrt(n)))."""
    if not images:
        raise UsageError("a grid needs at least one image")
    n = len(images)
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    c, h, w = images[0].shape
    grid = torch.zeros((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=torch.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, nrow)
        grid[:, pad + y * (h + pad): pad + y * (h + pad) + h, pad + x * (w + pad): pad + x * (w + pad) + w] = img
    return grid


def infotext(spec: str, p: Plan, seed: int | None = None, prompt: str | None = None, cfg: float | None = None,
             coeffs_sha256: str | None = None, guidance: dict[str, Any] | None = None) -> str:
    """Generation parameters in the WebUI's infotext style (the PNG ``parameters`` text chunk)."""
    parts = [f"Steps: {p.steps}", f"Sampler: {p.sampler}", f"NFE: {p.nfe}",
             f"Schedule: {p.schedule[0]} {p.schedule[1]:g}"]
    if seed is not None:
        parts.append(f"Seed: {seed}")
    if cfg is not None:
        parts.append(f"CFG scale: {cfg:g}")
    if guidance and guidance.get("guidance") == "cg":
        parts.append(f"Classifier guidance: {guidance.get('guidance_rate'):g} ({guidance.get('classifier')})")
    if p.coeffs is not None:
        parts.append(f"AdaSDE coefficients: {Path(p.coeffs_path).name if p.coeffs_path else 'in memory'}"
                     + (f" ({coeffs_sha256[:10]})" if coeffs_sha256 else ""))
    elif p.source in ("untrained", "fallback"):
        parts.append("AdaSDE coefficients: untrained")
    parts += [f"Model: {spec}", f"adasde {__version__}"]
    return (f"{prompt}\n" if prompt else "") + ", ".join(parts)


def _run_key(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("model", "plan", "seeds", "prompts_sha256", "cfg", "negative_prompt",
                                 "guidance")}


def _check_folder(out_dir: Path, record: dict[str, Any]) -> set[int]:
    """Seeds already written by this same run (resume); refuse a folder holding another run's images."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputFileError(f"--out {out_dir}: exists and is not a folder; give a folder for the PNGs")
    pngs = sorted(out_dir.glob("*.png")) if out_dir.is_dir() else []
    if not pngs:
        return set()
    prev_path = out_dir / RECORD
    try:
        prev = json.loads(prev_path.read_text(encoding="utf-8")) if prev_path.is_file() else None
    except (OSError, ValueError):
        prev = None
    if prev is None or _run_key(prev) != _run_key(record):
        why = "no run record" if prev is None else "a run with other settings"
        raise InputFileError(f"--out {out_dir}: holds {len(pngs)} PNG(s) of {why}; choose an empty folder, or "
                             "delete them (an interrupted run with the same settings resumes)")
    return {int(p.stem) for p in pngs if p.stem.isdigit()}


def sample_images(
    model: str,
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
    guidance: str | None = None,
    guidance_rate: float | None = None,
    classes: str | Sequence[int] | None = None,
    classifier: str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Generate the images of ``seeds`` (module docstring); returns the run record (plan, seeds, timings, notes).

    ``steps`` counts sampling intervals; ``coeffs`` is a coefficient file, ``"untrained"`` or None (automatic
    choice: the best fitting file on the search path).  ``guidance`` / ``guidance_rate`` / ``classes`` /
    ``classifier``: see :func:`conditioning.build_conditioning` (``cfg`` is the CFG scale when
    ``guidance_rate`` is not given); ``preset``: the release preset whose solver form applies."""
    from ..conditioning import build_conditioning, with_solver_options
    from ..evaluation.images import save_png
    from ..evaluation.reference import sha256_file
    from ..models import load_model
    from ..policy.presets import get_preset

    if out is None and grid is None:
        raise UsageError("sample needs --out DIR and/or --grid FILE")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    if coeffs is None and nfe is None and steps is None:
        raise UsageError("sample needs --nfe K, --steps N or --coeffs FILE")
    if rho is not None and schedule is None:
        raise UsageError("--rho needs --schedule")
    seed_list = parse_seeds(seeds)
    rank, world = rank_world()
    dev = parse_device(device)
    t0 = time.perf_counter()
    den = load_model(model, device=dev, dtype=parse_dtype(dtype), **(model_kwargs or {}))
    text_prompts = prompts is not None
    cond = build_conditioning(den, guidance=guidance, prompts=prompts, negative_prompt=negative_prompt,
                              guidance_rate=guidance_rate if guidance_rate is not None or not text_prompts else cfg,
                              classes=classes, classifier=classifier, device=dev, dtype=parse_dtype(dtype),
                              spec=model)
    den, prompt_list = cond.model, cond.prompts
    sched = (schedule, rho if rho is not None else _default_rho(schedule)) if schedule else None
    p = plan(den, sampler, steps=steps, nfe=nfe, coefficients=coeffs if coeffs is not None else AUTO,
             schedule=sched)
    p = with_solver_options(p, get_preset(preset))
    coeffs_sha = sha256_file(p.coeffs_path) if p.coeffs_path and Path(p.coeffs_path).is_file() else None
    record: dict[str, Any] = {
        "model": model, "plan": p.protocol(), "coefficients_sha256": coeffs_sha, "seeds": seeds if isinstance(
            seeds, str) else f"{len(seed_list)} seeds", "num_images": len(seed_list), "cfg": cond.rate if
        prompt_list else None, "guidance": cond.record, "negative_prompt": negative_prompt if prompt_list else None,
        "prompts_sha256": _digest(prompt_list), "world_size": world, "adasde": __version__,
        "initial_noise": "x_T = sigmas[0] * randn(torch.Generator().manual_seed(seed)), per seed",
    }
    out_dir = Path(out) if out is not None else None
    have: set[int] = set()
    if out_dir is not None:  # rank 0 checks and claims the folder before any rank writes into it
        if rank == 0:
            have = _check_folder(out_dir, record)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / RECORD, {**record, "complete": False})
        if world > 1:
            barrier()
            have = _check_folder(out_dir, record)
    mine = shard(seed_list, rank, world)
    todo = [s for s in mine if s not in have]

    extra_for = cond.extra_for
    keep: dict[int, torch.Tensor] = {}
    for s, imgs in generate(den, p, todo, batch=batch, extra_for=extra_for, device=dev,
                            progress=progress and rank == 0, desc=f"sample {sampler}", done=0):
        for seed, img in zip(s, imgs):
            if out_dir is not None:
                save_png(img, out_dir / f"{seed:06d}.png",
                         text={"parameters": infotext(model, p, seed, cond.prompt_of(seed), cond.rate if prompt_list
                                                      else None, coeffs_sha, cond.record)})
            if grid is not None:
                keep[seed] = img
    if grid is not None:
        if out_dir is not None:  # resumed images come back from the folder
            from ..evaluation.images import read_image

            for seed in (s for s in mine if s in have):
                keep[seed] = read_image(out_dir / f"{seed:06d}.png")
        keep = _gather(keep, world)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    if rank == 0:
        if grid is not None:
            save_png(make_grid([keep[s] for s in seed_list]), Path(grid),
                     text={"parameters": infotext(model, p, None, None, None, coeffs_sha)})
            record["grid"] = str(grid)
        if out_dir is not None:
            write_json(out_dir / RECORD, {**record, "complete": True})
    if world > 1:
        barrier()
    return record


def _default_rho(schedule: str) -> float:
    from ..samplers.schedules import DEFAULT_RHO

    if schedule not in DEFAULT_RHO:
        raise UsageError(f"--schedule {schedule!r} is not known; use one of {', '.join(DEFAULT_RHO)}")
    return DEFAULT_RHO[schedule]


def _digest(prompts: Sequence[str] | None) -> str | None:
    if not prompts:
        return None
    import hashlib

    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def _gather(items: dict[int, torch.Tensor], world: int) -> dict[int, torch.Tensor]:
    """Every rank's (seed -> image) on every rank (gloo/NCCL object gather)."""
    if world == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, {s: img.numpy() for s, img in items.items()})
    return {s: torch.from_numpy(a) for part in parts for s, a in part.items()}
