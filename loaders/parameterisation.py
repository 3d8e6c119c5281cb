"""Noise parameterisations of diffusers models in sigma form D(x; sigma) (docs/ALGORITHMS.md section 1.1).

* discrete VP (DDPM/LDM/SD, epsilon | v_prediction | sample): x_t = alpha x0 + s eps with alpha^2 = alphas_cumprod, so
  x = x_t / alpha = x0 + sigma eps, sigma = s / alpha.  Network input x / sqrt(1 + sigma^2); network timestep from
  sigma by interpolating the model's log-sigma table (section 1.1); eps: D = x - sigma eps;
  v: D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v; sample: D = output.
* flow (``FlowMatch*`` schedulers, ``flow_prediction``): x = (1 - s) x0 + s eps, network input x, timestep s * T
  (s for Flux, whose transformer scales by T itself), velocity v = eps - x0, D = x - s v.  The training sigmas are
  the shifted grid s = shift u / (1 + (shift - 1) u), u = 1/T .. 1 (SD3: shift 3; Flux: shift = exp(mu) with mu
  linear in the image's token count, :func:`flow_shift`).
* EDM (``EDM*`` schedulers): D = c_skip x + c_out F(c_in x; c_noise), c_noise = ln(sigma) / 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .base import ModelSpecError


def alphas_cumprod_from_config(cfg: dict[str, Any], source: str = "scheduler config") -> torch.Tensor:
    """alpha_bar_i (float64, i = 0..T-1) of a diffusers DDPM-type scheduler config (``beta_schedule``: linear,
    scaled_linear, squaredcos_cap_v2, or ``trained_betas``)."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    else:
        kind = cfg.get("beta_schedule", "linear")
        b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
        if kind == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal cosine alpha_bar, beta capped at 0.999
            f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        else:
            raise ModelSpecError(
                f"{source}: beta_schedule {kind!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2"
            )
    if cfg.get("rescale_betas_zero_snr"):
        raise ModelSpecError(
            f"{source}: rescale_betas_zero_snr=true gives sigma_max = inf, which sigma-form samplers cannot start "
            "from; set it to false in the scheduler config"
        )
    return torch.cumprod(1 - betas, 0)


class VPTable:
    """The discrete sigma table sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i) (increasing in i) and the
    continuous sigma <-> timestep map by linear interpolation of log sigma (docs/ALGORITHMS.md section 1.1)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        self.sigmas = ((1 - ac) / ac).sqrt()
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep in [0, T-1] (clamped at the table ends)."""
        ls = torch.as_tensor(sigma, dtype=torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        table = self.log_sigmas.to(ls.device)
        hi = torch.searchsorted(table, ls).clamp(1, table.numel() - 1)
        lo = hi - 1
        w = (ls - table[lo]) / (table[hi] - table[lo])
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.sigmas.numel() - 1)
        lo = t.floor().long().clamp(max=self.sigmas.numel() - 2)
        w = t - lo
        table = self.log_sigmas.to(t.device)
        return ((1 - w) * table[lo] + w * table[lo + 1]).exp()


def flow_shift(cfg: dict[str, Any], image_seq_len: int | None = None) -> float:
    """The time shift of a ``FlowMatch*`` scheduler config; resolution-dependent (Flux, ``use_dynamic_shifting``):
    mu = base_shift + (max_shift - base_shift) (n - base_seq_len) / (max_seq_len - base_seq_len) for ``n`` image
    tokens, shift = exp(mu) (``time_shift_type`` exponential, the default) or mu (linear)."""
    if not cfg.get("use_dynamic_shifting"):
        return float(cfg.get("shift", 1.0))
    n = int(cfg.get("base_image_seq_len", 256)) if image_seq_len is None else int(image_seq_len)
    b0, b1 = float(cfg.get("base_shift", 0.5)), float(cfg.get("max_shift", 1.15))
    n0, n1 = int(cfg.get("base_image_seq_len", 256)), int(cfg.get("max_image_seq_len", 4096))
    mu = b0 + (b1 - b0) * (n - n0) / (n1 - n0)
    return math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else mu


def shifted_flow_sigmas(shift: float, T: int = 1000) -> torch.Tensor:
    """The T training sigmas of a shifted flow model, increasing: s = shift u / (1 + (shift - 1) u), u = k / T."""
    u = torch.arange(1, T + 1, dtype=torch.float64) / T
    return shift * u / (1 + (shift - 1) * u)


@dataclass
class Parameterization:
    """How a diffusers network output maps to D(x; sigma) (module docstring; docs/ALGORITHMS.md section 1.1)."""

    kind: str  # "vp" | "flow" | "edm"
    prediction: str  # "epsilon" | "v_prediction" | "sample" | "flow_prediction"
    num_train_timesteps: int = 1000
    table: VPTable | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    cm_noise: bool = False
    shift: float | None = None  # flow models: the time shift of the training sigmas
    timestep_scale: float | None = None  # flow models: network timestep = s * timestep_scale

    @classmethod
    def from_scheduler_config(cls, cfg: dict[str, Any], source: str = "scheduler config",
                              image_seq_len: int | None = None, timestep_scale: float | None = None
                              ) -> Parameterization:
        """``image_seq_len``: image tokens, for resolution-dependent flow shifts; ``timestep_scale``: flow network
        timestep per unit sigma (default T)."""
        name = str(cfg.get("_class_name", ""))
        pred = str(cfg.get("prediction_type", "epsilon"))
        T = int(cfg.get("num_train_timesteps", 1000))
        if "FlowMatch" in name or pred == "flow_prediction":
            shift = flow_shift(cfg, image_seq_len)
            s = shifted_flow_sigmas(shift, T)
            return cls("flow", "flow_prediction", T, None, float(s.min()), float(s.max()), shift=shift,
                       timestep_scale=float(T) if timestep_scale is None else float(timestep_scale))
        if name.startswith("EDM"):
            if pred not in ("epsilon", "v_prediction"):
                raise ModelSpecError(f"{source}: EDM prediction_type {pred!r} is not supported (epsilon, v_prediction)")
            return cls("edm", pred, T, None, float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)),
                       float(cfg.get("sigma_data", 0.5)), cfg.get("precondition_type", "edm") == "cm_edm")
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise ModelSpecError(
                f"{source}: prediction_type {pred!r} is not supported; expected epsilon, v_prediction, sample or "
                "flow_prediction"
            )
        table = VPTable(alphas_cumprod_from_config(cfg, source))
        return cls("vp", pred, T, table, float(table.sigmas[0]), float(table.sigmas[-1]))

    @property
    def family_prediction(self) -> str:
        """The ``Denoiser.prediction`` label."""
        if self.kind == "flow":
            return "flow"
        if self.kind == "edm":
            return "edm"
        return {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[self.prediction]

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """Scale of the network input (sigma: [B] float64 or float32)."""
        if self.kind == "vp":
            return 1 / (1 + sigma**2).sqrt()
        if self.kind == "edm":
            return 1 / (sigma**2 + self.sigma_data**2).sqrt()
        return torch.ones_like(sigma)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Network timestep for sigma: interpolated discrete index (vp), s * T (flow), ln(sigma) / 4 (edm)."""
        if self.kind == "vp":
            return self.table.sigma_to_t(sigma)
        if self.kind == "flow":
            return sigma.to(torch.float64) * self.timestep_scale
        c = 0.25 * sigma.to(torch.float64).log()
        return c * 1000 if self.cm_noise else c

    def denoised(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) from the network output ``out`` (sigma broadcast to x)."""
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if self.kind == "flow":
            return x - s * out
        if self.kind == "edm":
            sd = self.sigma_data
            c_skip = sd**2 / (s**2 + sd**2)
            c_out = s * sd / (s**2 + sd**2).sqrt()
            return c_skip * x + (c_out if self.prediction == "epsilon" else -c_out) * out
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return x / (1 + s**2) - s / (1 + s**2).sqrt() * out
        return out

    def model_sigmas(self) -> torch.Tensor | None:
        """The training sigma table, increasing (VP: the alphas_cumprod table; flow: the shifted grid)."""
        if self.kind == "flow":
            return shifted_flow_sigmas(self.shift, self.num_train_timesteps).to(torch.float32)
        return None if self.table is None else self.table.sigmas.to(torch.float32)

