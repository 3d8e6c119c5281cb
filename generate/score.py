"""``adasde fid sample``: generate the images of a seed list and score them in one stream (docs/ALGORITHMS.md
section 6, "Evaluation protocol").

Each ``torchrun`` rank takes every ``world``-th seed; the feature statistics are merged with
``RunningStats.all_reduce``.  ``resume`` names a state file (one per rank when several) saved atomically every
``checkpoint_every`` seconds and at the end; a rerun with the same arguments continues where it stopped, a state of
another run is refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conditioning import build_conditioning, with_solver_options
from ..errors import InputFileError, UsageError
from ..evaluation.features import load_feature_net
from ..evaluation.metrics import fid_from_stats
from ..evaluation.pipeline import _net_meta, _net_name, _now, _ref_info, versions
from ..evaluation.reference import check_feature_net, load_stats, sha256_file
from ..evaluation.stats import RunningStats
from ..fileio import atomic_savez
from ..policy import AUTO, plan
from ..policy.presets import get_preset
from ..runtime import device as parse_device
from ..runtime import rank_world
from .loop import generate
from .seeds import parse_seeds, shard


def _state_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    p = Path(path)
    return p if world == 1 else p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix or '.npz'}")


def sample_and_score(
    model: str, sampler: str, seeds: str | Sequence[int], ref: str | os.PathLike, coeffs: str | None = None,
    nfe: int | None = None, steps: int | None = None, schedule: str | None = None, rho: float | None = None,
    batch: int = 64, net: str | None = None, device: str | torch.device | None = None, weights: str | None = None,
    allow_download: bool = False, out_images: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
    checkpoint_every: float = 300.0, progress: bool = True, model_kwargs: dict[str, Any] | None = None,
    guidance: str | None = None, guidance_rate: float | None = None, prompts: str | Sequence[str] | None = None,
    negative_prompt: str | None = None, classes: str | Sequence[int] | None = None, classifier: str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Generate and score (module docstring).  ``steps`` counts sampling intervals; ``coeffs``: a file,
    ``"untrained"`` or None (automatic choice).  Guidance, prompts and classes: see
    :func:`conditioning.build_conditioning`; ``preset``: the release preset whose solver form applies.
    Returns the result dict (value + full protocol); only rank 0's matters."""
    from ..evaluation.images import save_png
    from ..models import load_model

    if coeffs is None and nfe is None and steps is None:
        raise UsageError("fid sample needs --nfe K, --steps N or --coeffs FILE")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    rank, world = rank_world()
    seed_list = parse_seeds(seeds)
    ref_stats = load_stats(ref)
    dev = parse_device(device)
    net = net or ref_stats.feature_net or "inception"
    check_feature_net(ref_stats, _net_name(net))
    fnet = load_feature_net(net, device=dev, weights=weights, allow_download=allow_download)
    check_feature_net(ref_stats, fnet.name, dim=fnet.dim, weights_sha256=fnet.info.get("weights_sha256"))
    den = load_model(model, device=dev, **(model_kwargs or {}))
    cond = build_conditioning(den, guidance=guidance, guidance_rate=guidance_rate, prompts=prompts,
                              negative_prompt=negative_prompt, classes=classes, classifier=classifier, device=dev,
                              spec=model)
    den = cond.model
    sched = None
    if schedule is not None:
        from ..samplers.schedules import DEFAULT_RHO

        if schedule not in DEFAULT_RHO:
            raise UsageError(f"--schedule {schedule!r} is not known; use one of {', '.join(DEFAULT_RHO)}")
        sched = (schedule, rho if rho is not None else DEFAULT_RHO[schedule])
    p = plan(den, sampler, steps=steps, nfe=nfe, coefficients=coeffs if coeffs is not None else AUTO,
             schedule=sched)
    p = with_solver_options(p, get_preset(preset))
    proto = p.protocol()
    if p.coeffs_path and Path(p.coeffs_path).is_file():
        proto["coefficients_sha256"] = sha256_file(p.coeffs_path)
    protocol = {"model": model, **proto, "seeds": seeds if isinstance(seeds, str) else f"{len(seed_list)} seeds",
                "num_seeds": len(seed_list), "feature_net": fnet.name, "feature_info": fnet.info,
                "guidance": {**cond.record, "prompts_sha256": _digest(cond.prompts)},
                "initial_noise": "x_T = sigmas[0] * randn(torch.Generator().manual_seed(seed)), per seed"}
    key = json.dumps({k: protocol.get(k) for k in ("model", "sampler", "sigmas", "seeds", "feature_net",
                                                    "coefficients_sha256", "afs", "guidance")}
                     | {"ref": sha256_file(ref)},
                     sort_keys=True, default=str)
    mine = shard(seed_list, rank, world)
    rs = RunningStats(fnet.dim, meta=_net_meta(fnet))
    done = 0
    state = _state_path(resume, rank, world) if resume else None
    if state is not None and state.is_file():
        try:
            with np.load(state, allow_pickle=False) as z:
                saved = json.loads(str(z["progress"][()]))
                if saved.get("key") != key:
                    raise InputFileError(f"{state}: resume state belongs to another run (other model, sampler, grid, "
                                         "coefficients, seeds, feature network or reference); delete it or choose "
                                         "another --resume file")
                rs = RunningStats.from_arrays(z, source=str(state))
                done = int(saved["done"])
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, InputFileError):
                raise
            raise InputFileError(f"{state}: not a readable resume state ({exc}); delete it to start over") from None

    def save_state() -> None:
        if state is not None:
            atomic_savez(state, **rs.state_arrays(), progress=np.array(json.dumps({"key": key, "done": done})))

    t0, last = time.time(), time.time()
    for s, imgs in generate(den, p, mine, batch=batch, device=dev, extra_for=cond.extra_for,
                            progress=progress and rank == 0, desc=f"fid sample {sampler}", done=done):
        rs.update(fnet(imgs.to(dev)))
        if out_images is not None:
            for seed, img in zip(s, imgs):
                save_png(img, Path(out_images) / f"{seed:06d}.png")
        done += len(s)
        if state is not None and time.time() - last >= checkpoint_every:
            save_state()
            last = time.time()
    save_state()
    rs.all_reduce()
    fd = fid_from_stats(rs, ref_stats)
    return {"metric": fnet.metric, "value": fd.value, "frechet": fd.as_dict(), "num_images": rs.n,
            "protocol": {**protocol, "reference": _ref_info(ref, ref_stats), "batch": batch, "world_size": world,
                         "device": str(dev), "out_images": str(out_images) if out_images else None},
            "date": _now(), "seconds": round(time.time() - t0, 3), "versions": versions()}


def _digest(prompts: Sequence[str] | None) -> str | None:
    if not prompts:
        return None
    import hashlib

    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()
