"""STAND-IN: ``modules.processing`` -- a tiny ``process_images`` (txt2img, img2img, the hires pass) that runs the
scripts, the sampler and builds the infotext from ``extra_generation_params``; ``comment()`` as in A1111 1.10."""

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
    denoising_strength: float = 0.0
    init_latent: torch.Tensor | None = None  # img2img when set (StableDiffusionProcessingImg2Img)
    enable_hr: bool = False
    hr_sampler_name: str = "Use same sampler"
    hr_scheduler: str = "Use same scheduler"
    hr_second_pass_steps: int = 0
    hr_denoising_strength: float = 0.7
    comments: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sd_model = self.sd_model or shared.sd_model

    def comment(self, text: str) -> None:
        self.comments[text] = 1

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
    """Returns (samples, infotext, the sampler object of the last pass)."""
    for s in scripts:
        s.process(p, *p.script_args)
    for s in scripts:
        s.process_before_every_sampling(p, *p.script_args)
    sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
    cond, uncond = p.conds()
    if p.init_latent is not None:
        samples = sampler.sample_img2img(p, p.init_latent, p.initial_noise(), cond, uncond)
    else:
        samples = sampler.sample(p, p.initial_noise(), cond, uncond, steps=p.steps)
    if p.enable_hr:  # A1111 sample_hr_pass: the hires sampler, img2img on the first pass's latents
        p.is_hr_pass = True
        p.denoising_strength = p.hr_denoising_strength
        for s in scripts:
            s.process_before_every_sampling(p, *p.script_args)
        name = p.sampler_name if p.hr_sampler_name == "Use same sampler" else p.hr_sampler_name
        if p.hr_scheduler == "Use same scheduler":
            p.hr_scheduler = p.scheduler
        sampler = sd_samplers.create_sampler(name, p.sd_model)
        samples = sampler.sample_img2img(p, samples, p.initial_noise(), cond, uncond,
                                         steps=p.hr_second_pass_steps or p.steps)
        p.is_hr_pass = False
    for s in scripts:
        s.postprocess(p, None, *p.script_args)
    return samples, create_infotext(p), sampler
