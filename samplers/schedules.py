"""Noise schedules (docs/ALGORITHMS.md section 2).

Every schedule returns ``n`` decreasing sigmas from ``sigma_max`` to ``sigma_min`` (no trailing zero).  Each is uniform
in some transformed variable, so the teacher grid with ``(M + 1)(n - 1) + 1`` points contains the student grid
exactly (every ``(M + 1)``-th point); :func:`teacher_sigmas` enforces that bit-for-bit.
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError

SCHEDULES = ("polynomial", "logsnr", "time_uniform", "discrete", "flow_shift")
DEFAULT_RHO = {"polynomial": 7.0, "logsnr": 1.0, "time_uniform": 1.0, "discrete": 1.0, "flow_shift": 1.0}
_EPS_S = 1e-3  # smallest VP time of the time_uniform fit (section 2, item 3)


def _check(kind: str, n: int, sigma_min: float, sigma_max: float) -> None:
    if kind not in SCHEDULES:
        raise UsageError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if int(n) != n or n < 2:
        raise UsageError(f"a schedule needs at least 2 points, got n={n!r}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise UsageError(
            f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )


def vp_fit(sigma_min: float, sigma_max: float, eps_s: float = _EPS_S) -> tuple[float, float]:
    """Coefficients (beta_d, beta_min) of sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) through
    sigma(1) = sigma_max and sigma(eps_s) = sigma_min (section 2, item 3)."""
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps_s - math.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return beta_d, beta_min


def _discrete_tables(model_sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Times t_i = (i + 1) / T and log sqrt(alpha_bar_i) of a discrete (DDPM/LDM) sigma table (section 1.1)."""
    s = torch.as_tensor(model_sigmas, dtype=torch.float64).flatten().cpu()
    if s.numel() < 2 or not torch.isfinite(s).all() or (s <= 0).any():
        raise UsageError("model_sigmas must be a finite, positive 1-D table (e.g. the model's 1000 DDPM sigmas)")
    if s[0] > s[-1]:
        s = s.flip(0)
    if (s[1:] < s[:-1]).any():
        raise UsageError("model_sigmas must be monotonic")
    t = torch.arange(1, s.numel() + 1, dtype=torch.float64) / s.numel()
    log_alpha = -0.5 * torch.log1p(s**2)
    return t, log_alpha


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation with linear extrapolation (xp increasing)."""
    idx = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def discrete_sigma_to_t(sigma: torch.Tensor, model_sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`discrete_t_to_sigma` (interpolating log sqrt(alpha_bar) in t)."""
    t, log_alpha = _discrete_tables(model_sigmas)
    la = -0.5 * torch.log1p(torch.as_tensor(sigma, dtype=torch.float64) ** 2)
    # log_alpha decreases with t: interpolate t as a function of -log_alpha (increasing).
    return _interp(-la, -log_alpha, t)


def discrete_t_to_sigma(t: torch.Tensor, model_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma(t) of a discrete table, t_i = (i + 1) / T, log sqrt(alpha_bar) linear in t (DPM-Solver's VP)."""
    tt, log_alpha = _discrete_tables(model_sigmas)
    la = _interp(torch.as_tensor(t, dtype=torch.float64), tt, log_alpha)
    return torch.sqrt(torch.expm1(-2 * la))


def get_sigmas(
    kind: str,
    n: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    model_sigmas: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` decreasing sigmas of a schedule (docs/ALGORITHMS.md section 2).

    ``polynomial`` (EDM/Karras, rho 7), ``logsnr`` (log sigma linear), ``time_uniform`` (VP-SDE fit through sigma_min
    and sigma_max, uniform in t**(1/rho), rho 1), ``discrete`` (uniform in the time of a model's sigma table,
    rho 1; sigma_min/sigma_max default to the table's ends) and ``flow_shift`` (flow models: uniform in the flow time
    t with sigma = shift t / (1 + (shift - 1) t); here ``rho`` is the shift, e.g. 3 for SD3).  Computed in
    float64, returned in ``dtype``.
    """
    if kind == "discrete":
        if model_sigmas is None:
            raise UsageError(
                "the 'discrete' schedule needs the model's sigma table: pass model_sigmas= (e.g. the 1000 DDPM sigmas)"
            )
        table = torch.as_tensor(model_sigmas, dtype=torch.float64).flatten()
        sigma_min = float(table.min()) if sigma_min is None else sigma_min
        sigma_max = float(table.max()) if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None:
        raise UsageError(f"schedule {kind!r} needs sigma_min and sigma_max")
    _check(kind, n, float(sigma_min), float(sigma_max))
    rho = DEFAULT_RHO[kind] if rho is None else float(rho)
    if rho <= 0:
        raise UsageError(f"rho must be positive, got {rho}")
    u = torch.linspace(0, 1, int(n), dtype=torch.float64)
    smin, smax = float(sigma_min), float(sigma_max)
    if kind == "polynomial":
        s = (smax ** (1 / rho) + u * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    elif kind == "logsnr":
        s = torch.exp(math.log(smax) + u * (math.log(smin) - math.log(smax)))
    elif kind == "time_uniform":
        beta_d, beta_min = vp_fit(smin, smax)
        t = (1 + u * (_EPS_S ** (1 / rho) - 1)) ** rho
        s = torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))
    elif kind == "flow_shift":
        if smax > 1:
            raise UsageError(f"the 'flow_shift' schedule is for flow models (sigma <= 1), got sigma_max={smax}")
        t_of = lambda v: v / (rho - (rho - 1) * v)  # noqa: E731 - inverse of the shift map
        t = t_of(smax) + u * (t_of(smin) - t_of(smax))
        s = rho * t / (1 + (rho - 1) * t)
    else:  # discrete
        t_max = float(discrete_sigma_to_t(torch.tensor(smax), model_sigmas))
        t_min = float(discrete_sigma_to_t(torch.tensor(smin), model_sigmas))
        t = (t_max ** (1 / rho) + u * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
        s = discrete_t_to_sigma(t, model_sigmas)
    s[0], s[-1] = smax, smin  # exact end points
    _check_grid(kind, s, smin, smax, rho)
    return s.to(device=device, dtype=dtype)


def _check_grid(kind: str, s: torch.Tensor, smin: float, smax: float, rho: float) -> None:
    """Refuse a grid that is not finite and strictly decreasing (e.g. ``time_uniform`` with a large sigma_min, whose
    VP fit of section 2 item 3 then has beta_d < 0 and sigma(t) overshoots sigma_max by orders of magnitude)."""
    if bool(torch.isfinite(s).all()) and bool((s[1:] < s[:-1]).all()):
        return
    fix = ("use --schedule polynomial or logsnr (monotone for any range)" if kind == "time_uniform"
           else "use another schedule or sigma range")
    bad = s[~torch.isfinite(s)] if not bool(torch.isfinite(s).all()) else s.max()
    raise UsageError(f"schedule {kind!r} with sigma_min={smin:g}, sigma_max={smax:g}, rho={rho:g} gives a grid that "
                     f"is not finite and strictly decreasing (max {float(bad.max()):.4g}); {fix}, or a smaller "
                     f"sigma_min")


def teacher_sigmas(
    kind: str,
    n: int,
    M: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    model_sigmas: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Teacher grid with ``(M + 1)(n - 1) + 1`` points whose every ``(M + 1)``-th point is exactly the student grid
    (docs/ALGORITHMS.md section 2, "Sub-grids")."""
    if int(M) != M or M < 0:
        raise UsageError(f"M (inserted teacher points per student interval) must be an integer >= 0, got {M!r}")
    fine = get_sigmas(kind, (M + 1) * (n - 1) + 1, sigma_min, sigma_max, rho, model_sigmas, dtype=torch.float64)
    coarse = get_sigmas(kind, n, sigma_min, sigma_max, rho, model_sigmas, dtype=torch.float64)
    fine[:: M + 1] = coarse
    return fine.to(device=device, dtype=dtype)
