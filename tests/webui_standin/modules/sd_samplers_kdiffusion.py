"""STAND-IN: ``modules.sd_samplers_kdiffusion`` -- ``KDiffusionSampler`` with the documented A1111 1.10 contract:
scheduler lookup and the discard option in ``get_sigmas``, ``sample_img2img``, and ``sigmas``, ``n``, ``sigma_min``,
``sigma_max``, ``noise_sampler`` passed only if the sampling function has those parameters."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from . import sd_samplers_common, sd_schedulers, shared
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
        """A1111 1.10 order: discard option (+1 step, cut afterwards), scheduler by pass, Automatic -> the
        sampler's ``scheduler`` option, ``inner_model`` when the scheduler asks for it."""
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if getattr(shared.opts, "always_discard_next_to_last_sigma", False) and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        if scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            kw: dict[str, Any] = {"sigma_min": m_sigma_min, "sigma_max": m_sigma_max}
            if scheduler.label != "Automatic" and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            if scheduler.need_inner_model:
                kw["inner_model"] = self.model_wrap
            sigmas = scheduler.function(n=steps, **kw, device="cpu")
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def _call(self, p: Any, x: torch.Tensor, sigmas: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
              image_conditioning: Any, noise_sigmas: torch.Tensor) -> torch.Tensor:
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
            kw["noise_sampler"] = self.create_noise_sampler(x, noise_sigmas, p)
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning,
                                   "uncond": unconditional_conditioning, "cond_scale": p.cfg_scale,
                                   "s_min_uncond": 0.0}
        self.last_kwargs = dict(kw)
        self.last_x = x
        return self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=False,
                         callback=self.callback_state, **kw)

    def sample(self, p: Any, x: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
               steps: int | None = None, image_conditioning: Any = None) -> torch.Tensor:
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        return self._call(p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning, sigmas)

    def sample_img2img(self, p: Any, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                       unconditional_conditioning: Any, steps: int | None = None,
                       image_conditioning: Any = None) -> torch.Tensor:
        """A1111 1.10: ``setup_img2img_steps``, the grid of ``steps`` cut at ``steps - t_enc - 1``, start point
        ``x + noise * sigma_sched[0]``; the noise sampler spans the uncut grid."""
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        return self._call(p, xi, sigma_sched, conditioning, unconditional_conditioning, image_conditioning, sigmas)


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
