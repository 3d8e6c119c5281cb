"""Raw AdaSDE tables and their mappings to effective coefficients (docs/ALGORITHMS.md section 3.1).

Five raw tables of shape ``[N - 1, K]`` initialised i.i.d. N(0, 1) from the seed (order: r, c, a, gamma, w), mapped as

    r     = sigmoid(raw), kept inside [1e-6, 1 - 1e-6] (float32 rounds a saturated sigmoid to exactly 0 or 1)
    c     = 1 + min(s_c, 0.99) tanh(raw / 2)            (c = 1 when s_c = 0)
    a     = 1 + min(s_a, 0.99) tanh(raw / 2)            (a = 1 when s_a = 0)
    gamma = g_min + (g_max - g_min) sigmoid((raw + b) / 2),  g_min = 2e-4, b = 2 ln 1.5   (gamma = 0 when g_max = 0)
    w     = softmax_k(raw)

with gamma forced to 0 on the first step (section 3.1, "Hard rules").
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError

GAMMA_MIN = 2e-4
R_EPS = 1e-6  # r is kept in [R_EPS, 1 - R_EPS]: float32 sigmoid rounds to exactly 0 or 1 for |raw| > ~17
GAMMA_BIAS = 2 * math.log(0.6 / 0.4)  # b = 2 ln 1.5: at raw = 0, gamma = g_min + 0.6 (g_max - g_min)
TABLES = ("r", "c", "a", "gamma", "w")


def init_raw(steps: int, K: int, seed: int) -> dict[str, torch.Tensor]:  # noqa: N803
    """Raw tables ``[steps, K]`` drawn N(0, 1) from ``seed`` (float32, CPU), in the order r, c, a, gamma, w."""
    if steps < 1 or K < 1:
        raise UsageError(f"need at least one step and one point, got steps={steps}, K={K}")
    g = torch.Generator().manual_seed(int(seed))
    return {name: torch.randn(steps, K, generator=g, dtype=torch.float32) for name in TABLES}


def _scale(raw: torch.Tensor, s: float) -> torch.Tensor:
    if s <= 0:
        return torch.ones_like(raw)
    return 1 + min(float(s), 0.99) * torch.tanh(raw / 2)


def map_gamma(raw: torch.Tensor, gamma_max: float) -> torch.Tensor:
    """gamma = g_min + (g_max - g_min) sigmoid((raw + b) / 2); zero everywhere when gamma_max is 0 (ablation)."""
    if gamma_max <= 0:
        return torch.zeros_like(raw)
    return GAMMA_MIN + (gamma_max - GAMMA_MIN) * torch.sigmoid((raw + GAMMA_BIAS) / 2)


def map_tables(
    raw: dict[str, torch.Tensor],
    scale_dir: float,
    scale_time: float,
    gamma_max: float,
    rows: slice | int | None = None,
) -> dict[str, torch.Tensor]:
    """Effective r, a, c, gamma, w (section 3.1) of the raw tables, optionally only ``rows``.  Differentiable.

    gamma of step 0 is forced to 0 (the first step starts from pure noise and never churns).
    """
    sel = (lambda t: t) if rows is None else (lambda t: t[rows])
    out = {
        "r": torch.sigmoid(sel(raw["r"])).clamp(R_EPS, 1 - R_EPS),  # the open interval (0, 1) of section 3.1
        "a": _scale(sel(raw["a"]), scale_time),
        "c": _scale(sel(raw["c"]), scale_dir),
        "w": torch.softmax(sel(raw["w"]), dim=-1),
    }
    gamma = map_gamma(raw["gamma"], gamma_max)
    step0 = torch.zeros_like(gamma)
    step0[0] = 1
    gamma = gamma * (1 - step0)  # gamma_0 = 0 (multiplicative mask keeps the graph simple)
    out["gamma"] = sel(gamma)
    return out


def check_scales(scale_dir: float, scale_time: float, gamma_max: float) -> None:
    """Validate the range knobs of section 3.1 with a message naming the value and the fix."""
    for name, v in (("scale_dir", scale_dir), ("scale_time", scale_time)):
        if not (0 <= v < 1) or not math.isfinite(v):
            raise UsageError(f"{name}={v!r} must be in [0, 1) (the learned scale lies in 1 +- {name}); "
                             f"the paper uses scale_dir=0.05, scale_time=0.2, 0 disables")
    if not (gamma_max == 0 or GAMMA_MIN < gamma_max <= 1) or not math.isfinite(gamma_max):
        raise UsageError(f"gamma_max={gamma_max!r} must be 0 (no churn) or in ({GAMMA_MIN}, 1]; "
                         f"the paper uses 0.01 (0.02 at NFE 3)")
