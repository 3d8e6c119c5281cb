"""Teacher trajectories for distillation (docs/ALGORITHMS.md sections 3.5 (step 2) and 4.4).

The teacher runs on the ``(M + 1)(N - 1) + 1`` point grid of the student's schedule (``samplers.teacher_sigmas``),
starts from the same noise, has AFS off and keeps its states at every ``(M + 1)``-th point, i.e. at the student grid.
All teachers use the ODE direction ``d = (x - D(x; sigma)) / sigma``, valid for sigma-form and flow models alike.

* ``dpm2``  (AdaSDE paper): per teacher interval [t_a, t_b] two DPM-Solver-2 midpoint sub-steps over the breakpoints
  t_a, t_m, t_b with t_m placed by polynomial rho = 7 interpolation; sub-step s = sqrt(t_a t_b),
  x' = x + (s - t_a) d(x, t_a), x_b = x + (t_b - t_a) d(x', s).  4 NFE per interval.
* ``heun``  (AMED-Solver): EDM Heun per interval, 2 NFE.
* ``dpmpp`` DPM-Solver++(2M), data prediction in lambda = -ln sigma, 1 NFE per interval (sigma-form models only);
  with ``options`` (the AMED-Plugin base's solver form, section 4.3) the multistep solver of that form: order up to
  ``max_order``, lower-order-final, data or noise prediction, dynamic thresholding, as the AMED reference's teacher.
* ``euler`` 1 NFE per interval.
* ``ipndm`` iPNDM (fixed Adams-Bashforth weights, order <= 4 or ``options["max_order"]``, section 5), 1 NFE per
  interval (AMED-Plugin on iPNDM).
* ``student`` the student's own solver, untrained (AdaSDE with r = 0.5, a = c = 1, gamma = 0 = DPM-Solver-2 midpoint),
  2 NFE per interval: use with a large M.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UsageError
from ..samplers.baselines import dpmpp_weights, dynamic_threshold
from ..samplers.common import lincomb

TEACHERS = ("dpm2", "heun", "dpmpp", "euler", "ipndm", "student")
NFE_PER_INTERVAL = {"dpm2": 4, "heun": 2, "dpmpp": 1, "euler": 1, "ipndm": 1, "student": 2}
AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _d(model: Callable, x: torch.Tensor, sigma: float, extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
    den = model(x, x.new_full([x.shape[0]], sigma), **extra)
    return (x - den) / sigma, den


def _poly_mid(ta: float, tb: float, rho: float = 7.0) -> float:
    """Middle breakpoint of [ta, tb] on a polynomial (Karras) rho schedule."""
    return (ta ** (1 / rho) + 0.5 * (tb ** (1 / rho) - ta ** (1 / rho))) ** rho


def _midpoint(model: Callable, x: torch.Tensor, ta: float, tb: float, extra: dict) -> torch.Tensor:
    s = math.sqrt(ta * tb)
    d, _ = _d(model, x, ta, extra)
    d_mid, _ = _d(model, x + (s - ta) * d, s, extra)
    return x + (tb - ta) * d_mid


def teacher_trajectory(
    model: Callable,
    x: torch.Tensor,
    fine: list[float],
    M: int,
    kind: str = "dpm2",
    extra_args: dict | None = None,
    flow: bool = False,
    on_interval: Callable[[int, float, float], None] | None = None,
    options: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """States of the teacher at the student grid points 1 .. N-1 (every ``(M + 1)``-th point of ``fine``).

    ``fine``: the teacher grid as floats (no trailing zero); ``on_interval(j, t_a, t_b)`` is called before each
    teacher interval (used to name the sigma in error messages); ``options``: the solver form of the ``ipndm`` /
    ``dpmpp`` teachers (``samplers.amed.plugin_solver``; module docstring).  Runs under ``torch.no_grad``.
    """
    if kind not in TEACHERS:
        raise UsageError(f"unknown teacher {kind!r}; choose one of {', '.join(TEACHERS)}")
    if kind == "dpmpp" and flow:
        raise UsageError("teacher='dpmpp' is written for sigma-form models; use 'dpm2' or 'heun' for flow models")
    extra = extra_args or {}
    states: list[torch.Tensor] = []
    prev_den: torch.Tensor | None = None
    prev_h: float | None = None
    hist: list[torch.Tensor] = []
    hist_s: list[float] = []
    form = options or {}
    ab_order = int(form.get("max_order") or 4) if kind == "ipndm" else 4
    with torch.no_grad():
        for j in range(len(fine) - 1):
            ta, tb = fine[j], fine[j + 1]
            if on_interval is not None:
                on_interval(j, ta, tb)
            if kind in ("dpm2", "student"):
                if kind == "dpm2":
                    tm = _poly_mid(ta, tb)
                    x = _midpoint(model, _midpoint(model, x, ta, tm, extra), tm, tb, extra)
                else:
                    x = _midpoint(model, x, ta, tb, extra)
            elif kind == "heun":
                d, _ = _d(model, x, ta, extra)
                x_e = x + (tb - ta) * d
                d2, _ = _d(model, x_e, tb, extra)
                x = x + (tb - ta) * 0.5 * (d + d2)
            elif kind == "euler":
                d, _ = _d(model, x, ta, extra)
                x = x + (tb - ta) * d
            elif kind == "ipndm":
                d, _ = _d(model, x, ta, extra)
                hist = (hist + [d])[-ab_order:]
                b = AB[len(hist)]
                x = x + (tb - ta) * sum(w * h for w, h in zip(b, reversed(hist)))
            elif options is not None:  # dpmpp in the AMED-Plugin base's form (section 4.3)
                x = _dpmpp_form(model, x, fine, j, hist, hist_s, form, extra)
            else:  # dpmpp (2M), section 5
                _, den = _d(model, x, ta, extra)
                h = math.log(ta) - math.log(tb)
                phi1 = math.expm1(-h)
                if prev_den is None:
                    x = (tb / ta) * x - phi1 * den
                else:
                    r0 = prev_h / h
                    d1 = (den - prev_den) / r0
                    x = (tb / ta) * x - phi1 * den - 0.5 * phi1 * d1
                prev_den, prev_h = den, h
            if (j + 1) % (M + 1) == 0:
                states.append(x)
    return states


def _dpmpp_form(model: Callable, x: torch.Tensor, fine: list[float], j: int, hist: list[torch.Tensor],
                hist_s: list[float], form: dict[str, Any], extra: dict) -> torch.Tensor:
    """One DPM-Solver++ multistep interval fine[j] -> fine[j + 1] (docs/ALGORITHMS.md section 5) of the given solver
    form; order history + 1 while below max_order, then min(max_order, intervals left) with lower-order-final."""
    ta, tb = fine[j], fine[j + 1]
    cap = int(form.get("max_order") or 3)
    px0 = form.get("predict_x0") is not False
    _, den = _d(model, x, ta, extra)
    if px0:
        m = dynamic_threshold(den) if form.get("thresholding") else den
    else:
        m = (x - den) / ta
    order = min(cap, len(hist) + 1)
    if order == cap and form.get("lower_order_final"):
        order = max(1, min(cap, len(fine) - 1 - j))
    k, w = dpmpp_weights(hist_s, ta, tb, order, px0, bool(form.get("taylor_d2")))
    x = lincomb([(k, x), (w[0], m)] + [(w[i], hist[-i]) for i in range(1, order)])
    hist.append(m)
    hist_s.append(ta)
    del hist[: max(0, len(hist) - 2)], hist_s[: max(0, len(hist_s) - 2)]
    return x


def teacher_nfe(kind: str, num_steps: int, M: int) -> int:
    """Model calls of one teacher trajectory: NFE per interval times (M + 1)(N - 1) intervals."""
    return NFE_PER_INTERVAL[kind] * (M + 1) * (num_steps - 1)


def describe(kind: str) -> dict[str, Any]:
    return {"teacher": kind, "nfe_per_interval": NFE_PER_INTERVAL[kind]}
