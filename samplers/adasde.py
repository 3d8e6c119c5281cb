"""AdaSDE (NeurIPS 2025): a single-step SDE solver with learned per-step coefficients (ALGORITHMS.md section 3).

One step t_n -> t_{n+1} (section 3.2), K intermediate points, learned r, a, c, gamma, w per step:

    t_hat = (1 + sum_k w_k gamma_k) t_n,   x_hat = x_n + sqrt(t_hat^2 - t_n^2) eps_n          (churn; gamma_0 = 0)
    d_hat = (x_hat - D(x_hat; t_hat)) / t_hat                      (or AFS on the first step: x_hat / sqrt(1 + t_hat^2))
    s_k   = t_{n+1}^{r_k} t_hat^{1 - r_k},   x_k = x_hat + (s_k - t_hat) d_hat
    d_k   = (x_k - D(x_k; a_k s_k)) / s_k                            (network sees the scaled time, division unscaled)
    x_{n+1} = x_hat + (t_{n+1} - t_hat) sum_k w_k c_k d_k

With r = 0.5, a = c = 1, gamma = 0 (the "untrained" values) this is exactly DPM-Solver-2 (midpoint).
NFE = (1 + K)(N - 1) - [AFS] on an N-point grid, plus 1 if the grid ends in 0 (section 3.3, docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .common import (
    NoiseSampler,
    afs_direction,
    batch_ones,
    bcast,
    churn,
    default_noise_sampler,
    is_flow_model,
    sigma_input,
    sigma_list,
    split_trailing_zero,
)

log = logging.getLogger("adasde")

UNTRAINED = {"r": 0.5, "a": 1.0, "c": 1.0, "gamma": 0.0, "w": 1.0}
GRID_RTOL = 1e-3  # relative tolerance when matching a host grid against the trained grid


class CoefficientMismatchWarning(UserWarning):
    """A coefficient set does not fit the sigma grid it is asked to sample; untrained AdaSDE is used instead."""


@dataclass
class StepTables:
    """Per-step coefficients actually used for one sampling call (rows align with the positive sigma grid)."""

    r: torch.Tensor  # [steps, K]
    a: torch.Tensor
    c: torch.Tensor
    gamma: torch.Tensor
    w: torch.Tensor
    afs: bool
    trained: bool
    note: str = ""

    @property
    def steps(self) -> int:
        return self.r.shape[0]

    @property
    def K(self) -> int:  # noqa: N802 - paper symbol
        return self.r.shape[1]


def untrained_tables(steps: int, K: int = 1, afs: bool = False, note: str = "") -> StepTables:  # noqa: N803
    """r = 0.5, a = c = 1, gamma = 0, uniform w: AdaSDE reduces to DPM-Solver-2 (ALGORITHMS.md section 4.2)."""
    full = {k: torch.full((steps, K), v, dtype=torch.float64) for k, v in UNTRAINED.items()}
    full["w"] = torch.full((steps, K), 1.0 / K, dtype=torch.float64)
    return StepTables(**full, afs=afs, trained=False, note=note)


def _grid_match(host: list[float], trained: list[float]) -> int | None:
    """Offset ``o`` such that ``host == trained[o:]`` within GRID_RTOL, else None."""
    o = len(trained) - len(host)
    if o < 0:
        return None
    for h, t in zip(host, trained[o:]):
        if abs(h - t) > GRID_RTOL * max(abs(t), 1e-12):
            return None
    return o


def resolve_tables(
    coeffs: Any,
    grid: list[float],
    afs: bool | None = None,
    warn: bool = True,
) -> StepTables:
    """Rows of ``coeffs`` (a ``Coefficients`` record) that fit the positive sigma ``grid``.

    Rules (docs/ARCHITECTURE.md): the grid must equal the trained grid, or a suffix of it (img2img / denoise < 1, where
    sampling starts at a lower sigma); anything else (other step count, other schedule, other sigma range) falls back to
    untrained AdaSDE with a :class:`CoefficientMismatchWarning` naming the mismatch.  AFS is used only when the
    coefficients were trained with it and sampling starts at the trained sigma_max (pure noise).
    """
    steps = len(grid) - 1
    if coeffs is None:
        return untrained_tables(steps, afs=bool(afs))
    trained_grid = [float(v) for v in coeffs.sigmas.flatten().tolist()]
    offset = _grid_match(grid, trained_grid)
    if offset is None:
        name = getattr(coeffs, "source", None) or "the coefficient set"
        msg = (
            f"AdaSDE: {name} was trained for a {len(trained_grid)}-point grid "
            f"[{trained_grid[0]:.4g} .. {trained_grid[-1]:.4g}] (NFE {getattr(coeffs, 'nfe', '?')}), "
            f"but sampling got a "
            f"{len(grid)}-point grid [{grid[0]:.4g} .. {grid[-1]:.4g}]; using untrained AdaSDE (DPM-Solver-2: r=0.5, "
            f"a=c=1, gamma=0). Use the 'adasde' scheduler / AdaSDE Sigmas, or distil coefficients for {steps} steps."
        )
        if warn:
            warnings.warn(msg, CoefficientMismatchWarning, stacklevel=3)
            log.warning(msg)
        return untrained_tables(steps, afs=bool(afs), note=msg)
    rows = slice(offset, offset + steps)
    use_afs = bool(coeffs.afs) and offset == 0
    if afs is not None:
        use_afs = bool(afs)
    t = {k: getattr(coeffs, k)[rows].to(torch.float64) for k in ("r", "a", "c", "gamma", "w")}
    return StepTables(**t, afs=use_afs, trained=True)


def adasde_step(
    model: Any,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    r: torch.Tensor,
    a: torch.Tensor,
    c: torch.Tensor,
    gamma: torch.Tensor | float,
    w: torch.Tensor,
    noise: torch.Tensor | None = None,
    extra_args: dict | None = None,
    afs: bool = False,
    flow: bool = False,
    s_noise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | float]:
    """One AdaSDE step (ALGORITHMS.md section 3.2).  Differentiable in x and in every coefficient.

    ``r, a, c, w``: tensors ``[K]`` (shared) or ``[B, K]`` (per sample, AMED); ``gamma``: ``[K]`` or a scalar, mixed as
    sum_k w_k gamma_k; ``noise``: the N(0, I) draw for the churn (ignored when the mixed gamma is 0 or None).
    Returns ``(x_next, denoised at (x_hat, t_hat) or None with AFS, t_hat)``.
    """
    extra_args = extra_args or {}
    s_in = batch_ones(x)
    g = (w * gamma).sum(-1) if torch.is_tensor(gamma) else gamma
    if noise is not None and not (isinstance(g, float) and g == 0.0):
        sigma_hat = sigma * (1 + g)
        if flow:
            sigma_hat = torch.clamp(sigma_hat, max=1.0) if torch.is_tensor(sigma_hat) else min(sigma_hat, 1.0)
        x_hat = churn(x, sigma, bcast(sigma_hat, x), noise, flow=flow, s_noise=s_noise)
    else:
        sigma_hat, x_hat = sigma, x
    if afs:
        denoised = None
        d_hat = afs_direction(x_hat, bcast(sigma_hat, x), flow=flow)
    else:
        denoised = model(x_hat, sigma_input(sigma_hat, s_in), **extra_args)
        d_hat = (x_hat - denoised) / bcast(sigma_hat, x)
    direction = 0.0
    for k in range(r.shape[-1]):
        r_k, a_k, c_k, w_k = r[..., k], a[..., k], c[..., k], w[..., k]
        s_k = sigma_next**r_k * sigma_hat ** (1 - r_k)
        x_k = x_hat + bcast(s_k - sigma_hat, x) * d_hat
        d_k = (x_k - model(x_k, sigma_input(a_k * s_k, s_in), **extra_args)) / bcast(s_k, x)
        direction = direction + bcast(w_k * c_k, x) * d_k
    x_next = x_hat + bcast(sigma_next - sigma_hat, x) * direction
    return x_next, denoised, sigma_hat


@torch.no_grad()
def sample_adasde(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: bool | None = None,
    coeffs: Any = None,
    afs: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    flow: bool | None = None,
) -> torch.Tensor:
    """AdaSDE sampler (ALGORITHMS.md section 3.2) in the k-diffusion calling convention.

    ``coeffs``: a ``Coefficients`` record (see :func:`resolve_tables` for how it is fitted to ``sigmas``; None means
    untrained AdaSDE = DPM-Solver-2).  Churn noise comes from ``noise_sampler`` if given, else from per-sample
    generators seeded by ``extra_args['seed']``.  ``flow``: flow-model noise injection (auto-detected when None).
    A trailing 0 in ``sigmas`` adds one final denoising call.
    """
    extra_args = {} if extra_args is None else extra_args
    s, ends_in_zero = split_trailing_zero(sigma_list(sigmas))
    flow = is_flow_model(model) if flow is None else flow
    tables = resolve_tables(coeffs, s, afs=afs) if len(s) > 1 else untrained_tables(0)
    noise = default_noise_sampler(x, extra_args, noise_sampler)
    rows = {k: getattr(tables, k).to(device=x.device, dtype=x.dtype) for k in ("r", "a", "c", "gamma", "w")}
    s_in = batch_ones(x)
    for i in range(len(s) - 1):
        gamma = rows["gamma"][i] if i > 0 else torch.zeros_like(rows["gamma"][i])
        mixed = 0.0 if i == 0 or not tables.trained else None  # untrained gamma is 0: no draw, no host sync
        eps = None if mixed == 0.0 else noise(s[i], s[i + 1])
        x, denoised, sigma_hat = adasde_step(
            model, x, s[i], s[i + 1], rows["r"][i], rows["a"][i], rows["c"][i], gamma, rows["w"][i],
            noise=eps, extra_args=extra_args, afs=tables.afs and i == 0, flow=flow, s_noise=s_noise,
        )
        if callback is not None:
            callback({"i": i, "x": x, "denoised": x if denoised is None else denoised, "sigma": s[i],
                      "sigma_hat": sigma_hat})
    if ends_in_zero:
        denoised = model(x, s[-1] * s_in, **extra_args)
        if callback is not None:
            callback({"i": len(s) - 1, "x": denoised, "denoised": denoised, "sigma": s[-1], "sigma_hat": s[-1]})
        x = denoised
    return x
