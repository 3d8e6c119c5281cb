"""Sampler registry and exact NFE accounting (docs/ALGORITHMS.md section 3.3, docs/ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import UsageError
from . import baselines
from .adasde import resolve_tables, sample_adasde
from .amed import sample_amed, sample_amed_plugin
from .common import prepare_grid

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": baselines.sample_euler,
    "heun": baselines.sample_heun,
    "dpm_2": baselines.sample_dpm_2,
    "dpmpp_2m": baselines.sample_dpmpp_2m,
    "dpmpp_3m": baselines.sample_dpmpp_3m,
    "ipndm": baselines.sample_ipndm,
    "unipc": baselines.sample_unipc,
    "adasde": sample_adasde,
    "amed": sample_amed,
    "amed_plugin": sample_amed_plugin,
}

# model calls per step of an N-point positive grid (AdaSDE: 1 + K)
CALLS_PER_STEP = {"euler": 1, "ipndm": 1, "dpmpp_2m": 1, "dpmpp_3m": 1, "unipc": 1, "heun": 2, "dpm_2": 2,
                  "amed": 2, "amed_plugin": 2}


def nfe(name: str, sigmas_or_num_points: torch.Tensor | Sequence[float] | int, **options: Any) -> int:
    """Exact number of model calls of ``SAMPLERS[name]`` for one batch (section 3.3).

    ``sigmas_or_num_points``: the grid passed to the sampler (a trailing 0 adds 1 call) or N, the number of positive
    grid points.  ``options``: the sampler options that change the count: ``afs`` (-1 when there is at least one
    step), ``coeffs`` (AdaSDE / AMED: K and AFS as resolved for this grid, see ``adasde.resolve_tables``), ``K``
    (AdaSDE without coeffs).  The UniPC corrector reuses the next step's call; no corrector on the last step.
    """
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(sigmas_or_num_points, int):
        if sigmas_or_num_points < 1:
            raise UsageError(f"the number of grid points must be >= 1, got {sigmas_or_num_points}")
        n, zero, grid = sigmas_or_num_points, False, None
    else:
        grid, zero = prepare_grid(sigmas_or_num_points)
        n = len(grid)
    steps = n - 1
    afs, coeffs = options.get("afs"), options.get("coeffs")
    K = int(options.get("K", 1)) if name == "adasde" else 1
    if coeffs is not None and name in ("adasde", "amed", "amed_plugin") and steps > 0:
        if grid is None:  # a point count: the trained grid if it has that many points, else the untrained fallback
            trained = [float(v) for v in torch.as_tensor(coeffs.sigmas).flatten().tolist()]
            grid = trained if len(trained) == n else [float(n - i) for i in range(n)]
        tables = resolve_tables(coeffs, grid, afs=afs, warn=False)
        afs = tables.afs
        K = tables.K if name == "adasde" else 1
    per_step = 1 + K if name == "adasde" else CALLS_PER_STEP[name]
    return per_step * steps - int(bool(afs) and steps > 0) + int(zero)
