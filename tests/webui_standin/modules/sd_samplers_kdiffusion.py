"""STAND-IN: ``modules.sd_samplers_kdiffusion`` -- ``KDiffusionSampler`` with the documented A1111 1.10 contract:
scheduler lookup in ``get_sigmas``, and ``sigmas``, ``n``, ``sigma_min``, ``sigma_max``, ``noise_sampler`` passed only
if the sampling function has those parameters."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from . import sd_samplers_common, sd_schedulers
from .standin import CFGDenoiser, ModelWrap


class KDiffusionSampler:
    def __init__(self, funcname: Any, sd_model: Any, options: dict | None = None) -> None:
        if not callable(funcname):
            raise TypeError("stand-in: only callables are supported")
        self.funcname = funcname
        self.func = funcname
        self.options = options or {}
        self.config = None
        self.model_wrap = ModelWrap(sd_model)
        self.model_wrap_cfg = CFGDenoiser(self)
        self.p = None
        self.last_kwargs: dict | None = None
        self.callback_steps: list[int] = []

    def callback_state(self, d: dict) -> None:
        """Like A1111, raises out of the sampling loop when the job is interrupted (here: ``p.raise_at_step``)."""
        self.callback_steps.append(int(d["i"]))
        if getattr(self.p, "raise_at_step", None) == int(d["i"]):
            raise RuntimeError("interrupted (stand-in)")

    def initialize(self, p: Any) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        return {}

    def create_noise_sampler(self, x: torch.Tensor, sigmas: torch.Tensor, p: Any) -> Any:
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        return sd_samplers_common.SeededBrownianStandIn(x, sigma_min, sigma_max, seed=p.seeds[: x.shape[0]])

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        scheduler_name = p.scheduler or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        if scheduler is None or scheduler.function is None:
            return self.model_wrap.get_sigmas(steps)
        kw: dict[str, Any] = {"sigma_min": m_sigma_min, "sigma_max": m_sigma_max}
        if scheduler.label != "Automatic":
            p.extra_generation_params["Schedule type"] = scheduler.label
        if scheduler.need_inner_model:
            kw["inner_model"] = self.model_wrap
        return scheduler.function(n=steps, **kw, device="cpu")

    def sample(self, p: Any, x: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
               steps: int | None = None, image_conditioning: Any = None) -> torch.Tensor:
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        kw = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "sigma_min" in parameters:
            kw["sigma_min"] = sigmas[-2]  # A1111 assumes a trailing zero here
        if "sigma_max" in parameters:
            kw["sigma_max"] = sigmas[0]
        if "n" in parameters:
            kw["n"] = len(sigmas) - 1
        if "sigmas" in parameters:
            kw["sigmas"] = sigmas
        if self.config.options.get("brownian_noise", False):
            kw["noise_sampler"] = self.create_noise_sampler(x, sigmas, p)
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning,
                                   "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale,
                                   "s_min_uncond": 0.0}
        self.last_kwargs = dict(kw)
        self.last_x = x
        return self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=False,
                         callback=self.callback_state, **kw)


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Stand-in of k-diffusion's Euler (a built-in entry of the registry)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
    return x


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData("Euler", lambda model: KDiffusionSampler(sample_euler, model), ["k_euler"], {}),
]
