"""Training-free baseline solvers as the AdaSDE / AMED papers use them (docs/ALGORITHMS.md section 5), sigma form.

Every sampler follows the k-diffusion contract (docs/ARCHITECTURE.md): ``sample_NAME(model, x, sigmas, extra_args=None,
callback=None, disable=None, **options)``; the loop itself is :func:`common.run_steps`, each solver only supplies its
step.  ``afs=True`` replaces the first model call by the analytical first step (``common.afs_direction``; ``flow``: its
flow-model form, auto-detected when None).

NFE on an N-point positive grid (section 3.3; +1 when the grid ends in 0, -1 with AFS):
euler, ipndm, dpmpp_2m, dpmpp_3m, unipc: N - 1; heun, dpm_2: 2 (N - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .common import axpy, inserted_point, lincomb, model_sigma, prepare_grid, run_steps

Num = torch.Tensor | float

# Adams-Bashforth weights b_j of sum_j b_j d_{n-j}, j = 0 .. order-1 (section 5, iPNDM)
AB_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _log(v: Num) -> Num:
    return torch.log(v) if torch.is_tensor(v) else math.log(v)


def _expm1(v: Num) -> Num:
    return torch.expm1(v) if torch.is_tensor(v) else math.expm1(v)


def _check_order(name: str, order: int, top: int) -> int:
    if int(order) != order or not 1 <= order <= top:
        raise ValueError(f"{name}: max_order must be an integer in 1..{top}, got {order!r}")
    return int(order)


# ------------------------------------------------------------------------------------------------------ step helpers
def euler_step(x: torch.Tensor, sigma: Num, sigma_next: Num, denoised: torch.Tensor, c: Num = 1.0) -> torch.Tensor:
    """Euler / DDIM: x_{n+1} = x_n + c (t_{n+1} - t_n) d_n (section 5; ``c`` is the AMED direction scale)."""
    return axpy(x, c * (sigma_next - sigma) / sigma, x - denoised)


def heun_step(
    model: Any, x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor, extra_args: dict
) -> torch.Tensor:
    """EDM Heun: x' = x_n + h d_n, x_{n+1} = x_n + h (d_n + d(x', t_{n+1})) / 2 (section 5)."""
    h = sigma_next - sigma
    diff = x - denoised
    x_e = axpy(x, h / sigma, diff)
    diff_e = x_e - model(x_e, model_sigma(sigma_next, x), **extra_args)
    return lincomb([(1.0, x), (h / (2 * sigma), diff), (h / (2 * sigma_next), diff_e)])


def dpm2_step(
    model: Any,
    x: torch.Tensor,
    sigma: Num,
    sigma_next: Num,
    denoised: torch.Tensor,
    r: Num = 0.5,
    c: Num = 1.0,
    a: Num = 1.0,
    extra_args: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised DPM-Solver-2 (section 5; AMED-Plugin form of section 4.3 with direction scale ``c`` and time scale
    ``a``): s = t_{n+1}^r t_n^{1-r}, x' = x_n + (s - t_n) d_n,
    x_{n+1} = x_n + c h [(1 / 2r) d(x', a s) + (1 - 1 / 2r) d_n].  Returns ``(x_{n+1}, D(x'; a s))``."""
    h = sigma_next - sigma
    diff = x - denoised
    s = sigma_next**r * sigma ** (1 - r)
    _, den_s, diff_s = inserted_point(model, x, sigma, s, diff, a, extra_args)
    return lincomb([(1.0, x), (c * h / (2 * r) / s, diff_s), (c * h * (1 - 1 / (2 * r)) / sigma, diff)]), den_s


def ab_direction(d: torch.Tensor, history: Sequence[torch.Tensor], order: int) -> torch.Tensor:
    """Fixed-weight Adams-Bashforth combination sum_j b_j d_{n-j} of iPNDM (section 5); ``history`` holds the earlier
    directions, most recent last (at least ``order - 1`` of them).  Shared by iPNDM and the AMED-Plugin on iPNDM."""
    if order == 1:
        return d
    b = AB_COEFFS[order]
    return lincomb([(b[0], d)] + [(b[j], history[-j]) for j in range(1, order)])


def dpmpp_weights(
    sigma_hist: Sequence[Num], sigma: Num, sigma_next: Num, order: int, predict_x0: bool = True,
    taylor_d2: bool = False,
) -> tuple[Num, list[Num]]:
    """DPM-Solver++ multistep update of order 1..3 (section 5) as ``x_{n+1} = k x_n + sum_j w_j m_{n-j}``.

    ``m`` is the data prediction D (``predict_x0``) or the noise prediction eps = (x - D) / sigma; ``sigma_hist`` are
    the sigmas of the earlier model outputs, most recent last (``order - 1`` used).  lambda = -ln sigma,
    h = lambda_{n+1} - lambda_n, r_j = h_{n-j-1} / h.  Data form: phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1,
    phi_3 = phi_2 / h - 1/2, x_{n+1} = (t_{n+1} / t_n) x - phi_1 D_n + phi_2 D1 - phi_3 D2; noise form: phi_1 = e^h - 1,
    phi_2 = phi_1 / h - 1, x_{n+1} = x - t_{n+1} (phi_1 eps_n + phi_2 D1 + phi_3 D2).  Numbers or per-sample tensors.
    ``taylor_d2`` doubles the D2 term (see :func:`sample_dpmpp_3m`).  Returns ``(k, [w_0, .., w_{order-1}])``.
    """
    h = _log(sigma / sigma_next)
    if predict_x0:  # x_{n+1} = (t_{n+1} / t_n) x - [phi1 m0 - phi2 D1 + phi3 D2]
        k, scale, phi1 = sigma_next / sigma, -1.0, _expm1(-h)
        phi2 = phi1 / h + 1
        p2 = -phi2
    else:  # x_{n+1} = x - t_{n+1} [phi1 m0 + phi2 D1 + phi3 D2]
        k, scale, phi1 = 1.0, -sigma_next, _expm1(h)
        phi2 = phi1 / h - 1
        p2 = phi2
    if order == 1:
        return k, [scale * phi1]
    r0 = _log(sigma_hist[-1] / sigma) / h
    if order == 2:  # bracket phi1 m0 + phi1 / 2 D1_0, D1_0 = (m0 - m1) / r0
        return k, [scale * phi1 * (1 + 1 / (2 * r0)), -scale * phi1 / (2 * r0)]
    p3 = (phi2 / h - 0.5) * (2.0 if taylor_d2 else 1.0)
    r1 = _log(sigma_hist[-2] / sigma_hist[-1]) / h
    # D1 = (1 + q) D1_0 - q D1_1, q = r0 / (r0 + r1); D2 = (D1_0 - D1_1) / (r0 + r1); D1_j = (m_j - m_{j+1}) / r_j
    q = r0 / (r0 + r1)
    A = p2 * (1 + q) + p3 / (r0 + r1)  # coefficient of D1_0 in the bracket
    B = -p2 * q - p3 / (r0 + r1)  # coefficient of D1_1
    return k, [scale * (phi1 + A / r0), scale * (-A / r0 + B / r1), scale * (-B / r1)]


def dynamic_threshold(denoised: torch.Tensor, ratio: float = 0.995, max_val: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding of a data prediction (section 5): per sample s = max(quantile(|D|, ratio), max_val),
    D -> clamp(D, -s, s) / s."""
    flat = denoised.abs().reshape(denoised.shape[0], -1)
    s = torch.quantile(flat if flat.dtype in (torch.float32, torch.float64) else flat.float(), ratio, dim=1)
    s = torch.clamp(s, min=max_val).to(denoised.dtype).view(-1, *([1] * (denoised.ndim - 1)))
    return torch.maximum(torch.minimum(denoised, s), -s) / s


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """Small dense linear solve (Gaussian elimination with partial pivoting) in Python floats: no device round trip."""
    n = len(b)
    M = [list(map(float, row)) + [float(v)] for row, v in zip(A, b)]
    for col in range(n):
        piv = max(range(col, n), key=lambda i: abs(M[i][col]))
        M[col], M[piv] = M[piv], M[col]
        if M[col][col] == 0.0:
            raise ZeroDivisionError("singular UniPC system (repeated sigmas in the history?)")
        for i in range(col + 1, n):
            f = M[i][col] / M[col][col]
            M[i] = [u - f * v for u, v in zip(M[i], M[col])]
    out = [0.0] * n
    for i in reversed(range(n)):
        out[i] = (M[i][n] - sum(M[i][j] * out[j] for j in range(i + 1, n))) / M[i][i]
    return out


def unipc_coefficients(
    sigma_hist: Sequence[float], sigma: float, sigma_next: float, order: int, predict_x0: bool = True,
    variant: str = "bh2",
) -> dict[str, Any]:
    """UniPC-bh (section 5): UniP predictor and UniC corrector coefficients of one step of order ``order``.

    With hh = -h (data prediction) or h (noise prediction), h = lambda_{n+1} - lambda_n, h_phi_1 = e^{hh} - 1,
    B(h) = e^{hh} - 1 (bh2) or hh (bh1), S = 1 (data; alpha = 1) or t_{n+1} (noise), k = t_{n+1} / t_n or 1:
    x' = k x - S h_phi_1 m_0;  predictor x_t = x' - S B(h) sum_k rhos_p[k] D1_k;
    corrector x_t = x' - S B(h) (sum_k rhos_c[k] D1_k + rhos_c[-1] (m_t - m_0)),  D1_k = (m_{-k} - m_0) / rks[k],
    rhos from R rho = b with R_ij = rks_j^(i-1), b_i = i! h_phi_{i+1} / B(h) (rhos_p = 1/2 at order 2).
    Returns a dict with k, S, h_phi_1, B_h, rks, rhos_p, rhos_c (Python floats).
    """
    lam = lambda v: -math.log(v)  # noqa: E731
    h = lam(sigma_next) - lam(sigma)
    rks = [(lam(sigma_hist[-j]) - lam(sigma)) / h for j in range(1, order)] + [1.0]
    hh = -h if predict_x0 else h
    h_phi_1 = math.expm1(hh)
    B_h = math.expm1(hh) if variant == "bh2" else hh
    R, b = [], []
    h_phi_k, fact = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        R.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    if order == 1:
        rhos_p: list[float] = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        rhos_p = _solve([row[:-1] for row in R[:-1]], b[:-1])
    rhos_c = [0.5] if order == 1 else _solve(R, b)
    k, S = (sigma_next / sigma, 1.0) if predict_x0 else (1.0, sigma_next)
    return {"k": k, "S": S, "h_phi_1": h_phi_1, "B_h": B_h, "rks": rks[:-1], "rhos_p": rhos_p, "rhos_c": rhos_c}


# ---------------------------------------------------------------------------------------------------------- samplers
@torch.no_grad()
def sample_euler(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, afs: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """Euler / DDIM (section 5), 1 NFE per step."""
    s, zero = prepare_grid(sigmas)
    step = lambda i, x, den: (euler_step(x, s[i], s[i + 1], den), None)  # noqa: E731
    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)


@torch.no_grad()
def sample_heun(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, afs: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """EDM Heun (section 5), 2 NFE per step (odd NFE with ``afs``)."""
    extra_args = {} if extra_args is None else extra_args
    s, zero = prepare_grid(sigmas)
    step = lambda i, x, den: (heun_step(model, x, s[i], s[i + 1], den, extra_args), None)  # noqa: E731
    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)


@torch.no_grad()
def sample_dpm_2(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, r: float = 0.5, afs: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """Generalised DPM-Solver-2 (section 5): r = 0.5 is the midpoint method (k-diffusion ``dpm_2``), r = 1 is Heun.
    2 NFE per step."""
    if not 0 < r <= 1:
        raise ValueError(f"dpm_2: r must lie in (0, 1], got {r!r} (0.5 = midpoint, 1 = Heun)")
    extra_args = {} if extra_args is None else extra_args
    s, zero = prepare_grid(sigmas)
    step = lambda i, x, den: (dpm2_step(model, x, s[i], s[i + 1], den, r, extra_args=extra_args)[0], None)  # noqa: E731
    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)


@torch.no_grad()
def sample_ipndm(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, max_order: int = 4, afs: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """iPNDM (section 5): fixed-weight Adams-Bashforth on d, order growing with the history up to ``max_order`` <= 4.
    1 NFE per step."""
    max_order = _check_order("ipndm", max_order, 4)
    s, zero = prepare_grid(sigmas)
    hist: list[torch.Tensor] = []

    def step(i: int, x: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, None]:
        d = (x - den) / s[i]
        x_next = axpy(x, s[i + 1] - s[i], ab_direction(d, hist, min(max_order, len(hist) + 1)))
        hist.append(d)
        del hist[: max(0, len(hist) - (max_order - 1))]
        return x_next, None

    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)


def _sample_dpmpp(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, callback: Any, disable: bool | None,
    max_order: int, predict_x0: bool, lower_order_final: bool, afs: bool, thresholding: bool, flow: bool | None,
    taylor_d2: bool = False,
) -> torch.Tensor:
    s, zero = prepare_grid(sigmas)
    hist_m: list[torch.Tensor] = []
    hist_s: list[float] = []

    def step(i: int, x: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, None]:
        if predict_x0:
            m = dynamic_threshold(den) if thresholding else den
        else:
            m = (x - den) / s[i]
        order = min(max_order, len(hist_m) + 1)
        if lower_order_final:
            order = min(order, len(s) - 1 - i)
        k, w = dpmpp_weights(hist_s, s[i], s[i + 1], order, predict_x0, taylor_d2)
        x_next = lincomb([(k, x), (w[0], m)] + [(w[j], hist_m[-j]) for j in range(1, order)])
        hist_m.append(m)
        hist_s.append(s[i])
        del hist_m[: max(0, len(hist_m) - 2)], hist_s[: max(0, len(hist_s) - 2)]
        return x_next, None

    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)


@torch.no_grad()
def sample_dpmpp_2m(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, predict_x0: bool = True, lower_order_final: bool = False, afs: bool = False,
    thresholding: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (section 5), 1 NFE per step.  ``predict_x0=False``: the noise-prediction form used for LDM/SD;
    ``lower_order_final``: order = min(2, steps remaining); ``thresholding``: dynamic thresholding of D (pixel models
    in [-1, 1] only; the diff-solvers reference applies it in data-prediction mode, so set it to reproduce their
    pixel-space tables; off by default because it breaks latent models)."""
    return _sample_dpmpp(model, x, sigmas, extra_args, callback, disable, 2, predict_x0, lower_order_final, afs,
                         thresholding, flow)


@torch.no_grad()
def sample_dpmpp_3m(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, predict_x0: bool = True, lower_order_final: bool = False, afs: bool = False,
    thresholding: bool = False, taylor_d2: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M) (section 5), 1 NFE per step; options as :func:`sample_dpmpp_2m`.

    The default third-order term -phi_3 D2 is the one of the DPM-Solver reference code behind the papers' tables; since
    D2 = (D1_0 - D1_1) / (r0 + r1) estimates h^2 D''/2, that update has a local error O(h^3) (global order 2, measured
    in tests/test_samplers_convergence.py).  ``taylor_d2=True`` uses -2 phi_3 D2, the Taylor-consistent coefficient:
    local error O(h^4), global order 3.
    """
    return _sample_dpmpp(model, x, sigmas, extra_args, callback, disable, 3, predict_x0, lower_order_final, afs,
                         thresholding, flow, taylor_d2)


@torch.no_grad()
def sample_unipc(
    model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
    disable: bool | None = None, max_order: int = 3, predict_x0: bool = True, variant: str = "bh2",
    lower_order_final: bool = False, afs: bool = False, flow: bool | None = None,
) -> torch.Tensor:
    """UniPC (section 5): UniP-p predictor plus UniC corrector (order p + 1), p = min(max_order, history + 1) <= 3.

    The corrector's model call at the new point is the next step's model output (no extra NFE); no corrector on the
    last step, so NFE = N - 1 on an N-point grid.  ``variant``: ``bh2`` (B(h) = e^h - 1, the papers' choice) or ``bh1``.
    """
    max_order = _check_order("unipc", max_order, 3)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc: variant must be 'bh1' or 'bh2', got {variant!r}")
    extra_args = {} if extra_args is None else extra_args
    s, zero = prepare_grid(sigmas)
    hist_m: list[torch.Tensor] = []
    hist_s: list[float] = []
    state: dict[str, torch.Tensor | None] = {"m": None}
    last = len(s) - 2

    def to_m(x_: torch.Tensor, den: torch.Tensor, sigma: float) -> torch.Tensor:
        return den if predict_x0 else (x_ - den) / sigma

    def step(i: int, x: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m0 = state["m"] if state["m"] is not None else to_m(x, den, s[i])
        order = min(max_order, len(hist_m) + 1)
        if lower_order_final:
            order = min(order, len(s) - 1 - i)
        co = unipc_coefficients(hist_s, s[i], s[i + 1], order, predict_x0, variant)
        k, S, h_phi_1, B_h, rks = co["k"], co["S"], co["h_phi_1"], co["B_h"], co["rks"]
        rhos_p, rhos_c = co["rhos_p"], co["rhos_c"]
        prev = [hist_m[-j] for j in range(1, order)]
        # predictor: x_t = k x - S h_phi_1 m0 - S B_h sum_k rho_k (m_k - m0) / rk_k
        w0 = -S * h_phi_1 + S * B_h * sum(p / rk for p, rk in zip(rhos_p, rks))
        x_next = lincomb([(k, x), (w0, m0)] + [(-S * B_h * p / rk, mk) for p, rk, mk in zip(rhos_p, rks, prev)])
        den_next = None
        state["m"] = None
        if i < last:  # corrector with the model output at the predicted point, reused by the next step
            den_next = model(x_next, model_sigma(s[i + 1], x), **extra_args)
            m_t = to_m(x_next, den_next, s[i + 1])
            w0 = -S * h_phi_1 + S * B_h * (sum(p / rk for p, rk in zip(rhos_c, rks)) + rhos_c[-1])
            terms = [(k, x), (w0, m0), (-S * B_h * rhos_c[-1], m_t)]
            terms += [(-S * B_h * p / rk, mk) for p, rk, mk in zip(rhos_c, rks, prev)]
            x_next = lincomb(terms)
            state["m"] = m_t
        hist_m.append(m0)
        hist_s.append(s[i])
        del hist_m[: max(0, len(hist_m) - 2)], hist_s[: max(0, len(hist_s) - 2)]
        return x_next, den_next

    return run_steps(model, x, s, step, extra_args, callback, disable, afs, flow, zero)
