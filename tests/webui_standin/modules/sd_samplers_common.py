"""STAND-IN: ``modules.sd_samplers_common`` (``SamplerData`` namedtuple, ``setup_img2img_steps`` and a seeded noise
sampler)."""

from __future__ import annotations

from collections import namedtuple

import torch

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p, steps=None):
    """A1111 1.10: with ``img2img_fix_steps`` (or explicit steps, as the hires pass gives) the grid has
    ``int(steps / denoise)`` steps of which ``steps`` run; otherwise ``p.steps`` steps of which
    ``int(denoise * steps) + 1`` run."""
    from . import shared

    if getattr(shared.opts, "img2img_fix_steps", False) or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class SeededBrownianStandIn:
    """Stand-in for k-diffusion's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds)``: N(0, I) per sample,
    a deterministic function of (seed, sigma, sigma_next)."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: list[int]) -> None:
        self.shape, self.seeds = x.shape[1:], list(seed)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.dtype, self.device = x.dtype, x.device
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        s, sn = float(sigma), float(sigma_next)
        assert self.sigma_min - 1e-6 <= min(s, sn) and max(s, sn) <= self.sigma_max + 1e-6, (s, sn)
        self.calls.append((s, sn))
        out = []
        for seed in self.seeds:
            g = torch.Generator().manual_seed(hash((seed, round(s, 6), round(sn, 6))) % (2**62))
            out.append(torch.randn(self.shape, generator=g))
        return torch.stack(out).to(self.device, self.dtype)
