"""AdaSDE (NeurIPS 2025): a single-step SDE solver with learned per-step coefficients (docs/ALGORITHMS.md section 3).

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
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import trange

from .common import (
    NoiseSampler,
    afs_denoised,
    bcast,
    churn,
    default_noise_sampler,
    denoise_to_zero,
    inserted_point,
    is_flow_model,
    lincomb,
    model_sigma,
    prepare_grid,
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
    offset: int = 0  # row of the trained grid where sampling starts (> 0: img2img / denoise < 1)

    @property
    def steps(self) -> int:
        return self.r.shape[0]

    @property
    def K(self) -> int:  # noqa: N802 - paper symbol
        return self.r.shape[1]


def untrained_tables(steps: int, K: int = 1, afs: bool = False, note: str = "") -> StepTables:  # noqa: N803
    """r = 0.5, a = c = 1, gamma = 0, uniform w: AdaSDE reduces to DPM-Solver-2 (docs/ALGORITHMS.md section 4.2)."""
    full = {k: torch.full((steps, K), v, dtype=torch.float64) for k, v in UNTRAINED.items()}
    full["w"] = torch.full((steps, K), 1.0 / K, dtype=torch.float64)
    return StepTables(**full, afs=afs, trained=False, note=note)


def fit_grid(host: Sequence[float], trained: Sequence[float]) -> int | None:
    """Offset ``o`` such that ``host == trained[o : o + len(host)]`` within GRID_RTOL, else None.

    A host grid fits a coefficient set when it is a contiguous part of the trained grid: the whole grid, a suffix
    (img2img, denoise < 1) or any segment (a sampling run split in stages).  docs/ALGORITHMS.md section 10.
    """
    if not host or len(host) > len(trained):
        return None
    tol = GRID_RTOL * max(abs(host[0]), 1e-12)
    starts = [o for o, t in enumerate(trained[: len(trained) - len(host) + 1]) if abs(t - host[0]) <= tol]
    for o in starts:
        if all(abs(h - t) <= GRID_RTOL * max(abs(t), 1e-12) for h, t in zip(host, trained[o:])):
            return o
    return None


def _check_tables(coeffs: Any) -> list[float]:
    """Shapes and values of a coefficient record (one pass over the small tables, no per-table tensor ops); the error
    names the file and the fix.  Returns the trained grid as floats."""
    name = getattr(coeffs, "source", None) or "the coefficient set"
    fix = "re-export or re-distil the coefficients"
    sig = [float(v) for v in torch.as_tensor(coeffs.sigmas).detach().flatten().tolist()]
    steps = len(sig) - 1
    tables = {k: getattr(coeffs, k, None) for k in ("r", "a", "c", "gamma", "w")}
    K = tables["r"].shape[1] if torch.is_tensor(tables["r"]) and tables["r"].ndim == 2 else None
    for k, t in tables.items():
        if not torch.is_tensor(t) or t.ndim != 2 or t.shape[0] != steps:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(
                f"{name}: table {k!r} has shape {shape}, expected [steps={steps}, K] for its {steps + 1}-point sigma "
                f"grid; {fix}"
            )
        if t.shape[1] != K:
            raise ValueError(f"{name}: table {k!r} has K={t.shape[1]} but 'r' has K={K}; {fix}")
    values = {k: t.detach().flatten().tolist() for k, t in tables.items()}
    for k, v in values.items():
        if not all(math.isfinite(u) for u in v):
            raise ValueError(f"{name}: table {k!r} contains non-finite values {v}; {fix}")
    if steps < 1 or not all(math.isfinite(v) and v > 0 for v in sig) or any(b >= a for a, b in zip(sig, sig[1:])):
        raise ValueError(f"{name}: its sigma grid {sig} is not a strictly decreasing positive grid; {fix}")
    if not all(0 <= u <= 1 for u in values["r"]):
        raise ValueError(f"{name}: r must lie in [0, 1], got {values['r']}; {fix}")
    return sig


def resolve_tables(
    coeffs: Any,
    grid: list[float],
    afs: bool | None = None,
    warn: bool = True,
) -> StepTables:
    """Rows of ``coeffs`` (a ``Coefficients`` record) that fit the positive sigma ``grid``.

    Rules (docs/ALGORITHMS.md section 10): the grid must be a contiguous part of the trained grid (:func:`fit_grid`:
    the whole grid, a suffix for img2img / denoise < 1, or a segment of a split run: rows ``offset..`` are used, AFS
    only from the trained sigma_max); anything else (other step count, other
    schedule, other sigma range) falls back to untrained AdaSDE (= DPM-Solver-2) with a
    :class:`CoefficientMismatchWarning` naming the mismatch.  AFS is used only when the coefficients were trained with
    it and sampling starts at the trained sigma_max (pure noise); an explicit ``afs`` overrides that.
    """
    steps = len(grid) - 1
    if coeffs is None:
        return untrained_tables(steps, afs=bool(afs))
    trained_grid = _check_tables(coeffs)
    offset = fit_grid(grid, trained_grid)
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
    t = {k: getattr(coeffs, k)[rows].detach().to(torch.float64) for k in ("r", "a", "c", "gamma", "w")}
    return StepTables(**t, afs=use_afs, trained=True, offset=offset)


Coef = torch.Tensor | Sequence[float] | float


def _col(v: Coef, k: int) -> torch.Tensor | float:
    """Column ``k`` of a ``[K]`` / ``[B, K]`` tensor or a list of K numbers; a number is shared by every point."""
    if torch.is_tensor(v):
        return v[..., k]
    if isinstance(v, (int, float)):
        return float(v)
    return float(v[k])


def _width(r: Coef) -> int:
    if torch.is_tensor(r):
        return int(r.shape[-1]) if r.ndim else 1
    return 1 if isinstance(r, (int, float)) else len(r)


def mixed_gamma(w: Coef, gamma: Coef) -> torch.Tensor | float:
    """gamma_bar = sum_k w_k gamma_k (docs/ALGORITHMS.md section 3.2, step 1): a number, 0-d or per-sample ``[B]``."""
    if isinstance(gamma, (int, float)):
        return float(gamma)
    if torch.is_tensor(gamma) or torch.is_tensor(w):
        return (torch.as_tensor(w) * torch.as_tensor(gamma)).sum(-1)
    return math.fsum(float(a) * float(b) for a, b in zip(w, gamma))


def adasde_points(
    model: Any,
    x_hat: torch.Tensor,
    sigma_hat: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    diff: torch.Tensor,
    r: Coef,
    a: Coef,
    c: Coef,
    w: Coef,
    extra_args: dict | None = None,
) -> torch.Tensor:
    """Steps 4-5 of docs/ALGORITHMS.md section 3.2 given ``diff = x_hat - D(x_hat; t_hat)`` (d_hat = diff / t_hat):

    s_k = t_{n+1}^{r_k} t_hat^{1-r_k},  d_k = (x_k - D(x_k; a_k s_k)) / s_k,
    x_{n+1} = x_hat + (t_{n+1} - t_hat) sum_k w_k c_k d_k.
    Shared by AdaSDE and AMED-Solver (section 4.2 is the case K = 1).  Coefficients may be numbers (one fused kernel
    per update), ``[K]`` or per-sample ``[B, K]`` tensors (differentiable).
    """
    terms: list[tuple[torch.Tensor | float, torch.Tensor]] = [(1.0, x_hat)]
    for k in range(_width(r)):
        r_k, a_k, c_k, w_k = _col(r, k), _col(a, k), _col(c, k), _col(w, k)
        s_k = sigma_next**r_k * sigma_hat ** (1 - r_k)
        _, _, diff_k = inserted_point(model, x_hat, sigma_hat, s_k, diff, a_k, extra_args)
        terms.append(((sigma_next - sigma_hat) * w_k * c_k / s_k, diff_k))
    return lincomb(terms)


def adasde_step(
    model: Any,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    r: Coef,
    a: Coef,
    c: Coef,
    gamma: Coef,
    w: Coef,
    noise: torch.Tensor | None = None,
    extra_args: dict | None = None,
    afs: bool = False,
    flow: bool = False,
    s_noise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | float]:
    """One AdaSDE step (docs/ALGORITHMS.md section 3.2).  Differentiable in x and in every coefficient.

    ``r, a, c, w``: tensors ``[K]`` (shared) or ``[B, K]`` (per sample, AMED), or lists of K numbers (fastest; what
    :func:`sample_adasde` passes); ``gamma``: the same, or a number, mixed as sum_k w_k gamma_k; ``noise``: the N(0, I)
    draw for the churn (ignored when the mixed gamma is the number 0, or None).  Returns ``(x_next, denoised at
    (x_hat, t_hat) or None with AFS, t_hat)``.
    """
    g = mixed_gamma(w, gamma)
    if noise is not None and not (isinstance(g, float) and g == 0.0):
        sigma_hat = sigma * (1 + g)
        if flow:
            sigma_hat = torch.clamp(sigma_hat, max=1.0) if torch.is_tensor(sigma_hat) else min(sigma_hat, 1.0)
        x_hat = churn(x, sigma, bcast(sigma_hat, x), noise, flow=flow, s_noise=s_noise)
    else:
        sigma_hat, x_hat = sigma, x
    if afs:
        denoised = None
        diff = x_hat - afs_denoised(x_hat, sigma_hat, flow=flow)
    else:
        denoised = model(x_hat, model_sigma(sigma_hat, x), **(extra_args or {}))
        diff = x_hat - denoised
    x_next = adasde_points(model, x_hat, sigma_hat, sigma_next, diff, r, a, c, w, extra_args)
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
    """AdaSDE sampler (docs/ALGORITHMS.md section 3.2) in the k-diffusion calling convention.

    ``coeffs``: a ``Coefficients`` record (see :func:`resolve_tables` for how it is fitted to ``sigmas``; None means
    untrained AdaSDE = DPM-Solver-2).  gamma is forced to 0 on row 0 of the trained grid (section 3.1).  Churn noise
    comes from ``noise_sampler(sigma, sigma_next)`` if given, else from per-sample generators seeded by
    ``extra_args['seed']`` (batch-independent), else the global RNG.  ``flow``: flow-model noise injection
    (auto-detected when None).  A trailing 0 in ``sigmas`` adds one final denoising call.
    NFE = (1 + K)(N - 1) - [AFS] (+1 with a trailing 0).
    """
    extra_args = {} if extra_args is None else extra_args
    s, ends_in_zero = prepare_grid(sigmas)
    flow = is_flow_model(model) if flow is None else bool(flow)
    if flow and s[0] > 1.0 + 1e-6:
        raise ValueError(
            f"flow models need sigmas <= 1, got sigmas[0] = {s[0]}; pass flow=False for a sigma-form model"
        )
    tables = resolve_tables(coeffs, s, afs=afs) if len(s) > 1 else untrained_tables(0)
    noise = default_noise_sampler(x, extra_args, noise_sampler)
    rows = {k: getattr(tables, k).tolist() for k in ("r", "a", "c", "gamma", "w")}  # one host sync, before the loop
    for i in trange(len(s) - 1, disable=disable):
        x_prev = x
        gamma = rows["gamma"][i] if tables.offset + i > 0 else 0.0  # gamma_0 = 0 (section 3.1)
        g = mixed_gamma(rows["w"][i], gamma)
        eps = noise(s[i], s[i + 1]) if g != 0.0 else None
        x, denoised, sigma_hat = adasde_step(
            model, x, s[i], s[i + 1], rows["r"][i], rows["a"][i], rows["c"][i], gamma, rows["w"][i],
            noise=eps, extra_args=extra_args, afs=tables.afs and i == 0, flow=flow, s_noise=s_noise,
        )
        if callback is not None:
            if denoised is None:
                denoised = afs_denoised(x_prev, s[i], flow)
            callback({"i": i, "x": x, "denoised": denoised, "sigma": s[i], "sigma_hat": sigma_hat})
    if ends_in_zero:
        x = denoise_to_zero(model, x, s[-1], len(s) - 1, extra_args, callback)
    return x
