"""Solver presets at a target NFE, as the papers compare them (docs/ALGORITHMS.md sections 2, 3.3 and 7.1), and seeded
initial noise.

* Schedules: polynomial rho 7 for euler / heun / dpm_2 / ipndm, logSNR for dpmpp / unipc, time-uniform rho 1 for AdaSDE
  and AMED-Solver (section 2, "Recommended").
* Grid size: 1-NFE-per-step solvers use N = NFE + 1 points without AFS (Table 1 uses their no-AFS rows); 2-NFE-per-step
  solvers use AFS at odd NFE, N = (NFE + 1) / 2 + 1, and no AFS at even NFE, N = NFE / 2 + 1 (section 3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UsageError
from .schedules import get_sigmas

PAPER_SCHEDULES: dict[str, tuple[str, float]] = {
    "euler": ("polynomial", 7.0),
    "heun": ("polynomial", 7.0),
    "dpm_2": ("polynomial", 7.0),
    "ipndm": ("polynomial", 7.0),
    "dpmpp_2m": ("logsnr", 1.0),
    "dpmpp_3m": ("logsnr", 1.0),
    "unipc": ("logsnr", 1.0),
    "adasde": ("time_uniform", 1.0),
    "amed": ("time_uniform", 1.0),
    "amed_plugin": ("polynomial", 7.0),
}
TWO_NFE_PER_STEP = {"heun", "dpm_2", "adasde", "amed", "amed_plugin"}


def grid_for_nfe(name: str, nfe: int) -> tuple[int, bool]:
    """(number of grid points N, AFS) that make solver ``name`` use exactly ``nfe`` model calls (no trailing zero)."""
    if nfe < 1:
        raise UsageError(f"NFE must be >= 1, got {nfe}")
    if name in TWO_NFE_PER_STEP:
        if nfe % 2:
            return (nfe + 1) // 2 + 1, True
        return nfe // 2 + 1, False
    return nfe + 1, False


def preset(
    name: str,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
    model_sigmas: torch.Tensor | None = None,
    schedule: tuple[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sigma grid (no trailing zero) and sampler options for ``name`` at ``nfe`` calls, as in the paper tables."""
    kind, rho = schedule or PAPER_SCHEDULES.get(name, ("polynomial", 7.0))
    n, afs = grid_for_nfe(name, nfe)
    sigmas = get_sigmas(kind, n, sigma_min, sigma_max, rho=rho, model_sigmas=model_sigmas)
    options: dict[str, Any] = {}
    if name in TWO_NFE_PER_STEP:
        options["afs"] = afs
    return sigmas, options


def initial_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    sigma_max: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T = sigma_max * z with z drawn from a CPU generator seeded by each sample's own seed, so a sample does not
    depend on the batch it is generated in (docs/ALGORITHMS.md section 3.4)."""
    z = torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return (sigma_max * z).to(device=device, dtype=dtype)
