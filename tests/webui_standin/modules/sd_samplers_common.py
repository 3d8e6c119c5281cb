"""STAND-IN: ``modules.sd_samplers_common`` (``SamplerData`` namedtuple and a seeded noise sampler)."""

from __future__ import annotations

from collections import namedtuple

import torch

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


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
