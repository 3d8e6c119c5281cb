"""STAND-IN: ``modules.processing`` -- a tiny txt2img ``process_images`` that runs scripts, the sampler and builds the
infotext from ``extra_generation_params``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import sd_samplers, shared
from .standin import LATENT


@dataclass
class StableDiffusionProcessing:
    sampler_name: str = "AdaSDE"
    scheduler: str = "Automatic"
    steps: int = 3
    cfg_scale: float = 2.0
    seeds: list[int] = field(default_factory=lambda: [11, 12])
    sd_model: Any = None
    extra_generation_params: dict = field(default_factory=dict)
    is_hr_pass: bool = False
    script_args: tuple = ()

    def __post_init__(self) -> None:
        self.sd_model = self.sd_model or shared.sd_model

    def conds(self) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(self.seeds)
        cond = torch.full((B, *LATENT), 0.3)
        uncond = torch.zeros(B, *LATENT)
        return cond, uncond

    def initial_noise(self) -> torch.Tensor:
        return torch.stack([torch.randn(LATENT, generator=torch.Generator().manual_seed(s)) for s in self.seeds])


def create_infotext(p: StableDiffusionProcessing) -> str:
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": p.seeds[0],
              **p.extra_generation_params}
    return ", ".join(f"{k}: {v}" for k, v in params.items() if v is not None)


def process_images(p: StableDiffusionProcessing, scripts: list) -> tuple[torch.Tensor, str, Any]:
    """Returns (samples, infotext, the sampler object)."""
    for s in scripts:
        s.process(p, *p.script_args)
    for s in scripts:
        s.process_before_every_sampling(p, *p.script_args)
    sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
    cond, uncond = p.conds()
    samples = sampler.sample(p, p.initial_noise(), cond, uncond, steps=p.steps)
    for s in scripts:
        s.postprocess(p, None, *p.script_args)
    return samples, create_infotext(p), sampler
