"""STAND-IN helpers (not a WebUI module): tiny SD-shaped models around an exact Gaussian-mixture denoiser, the CFG
denoiser, the sigma-table model wrapper, Forge's ``UnetPatcher``, and ``configure(host)``."""

from __future__ import annotations

import copy
from typing import Any

import torch
from adasde.testbeds.gmm import GMMDenoiser, synthetic_gmm
from torch import nn

LATENT = (4, 4, 4)


def sd15_sigmas() -> torch.Tensor:
    """The 1000-entry sigma table of SD1.x (scaled-linear betas 0.00085 -> 0.012), increasing."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return ((1 - ac) / ac).sqrt().float()


class TinyUNet(nn.Module):
    """Exact denoiser of a 64-d Gaussian mixture shifted by the conditioning, with an observable ``middle_block``;
    Forge-style block modifiers (``transformer_options['block_modifiers']``) run around the middle block."""

    def __init__(self) -> None:
        super().__init__()
        self.gmm = GMMDenoiser(synthetic_gmm(d=64, K=3, rank=2, seed=1), sample_shape=LATENT,
                               sigma_min=0.0292, sigma_max=14.61)
        self.middle_block = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                transformer_options: dict | None = None) -> torch.Tensor:
        to = dict(transformer_options or {}, block=("middle", 0))
        mods = to.get("block_modifiers", [])
        h = x
        for m in mods:
            h = m(h, "before", to)
        h = self.middle_block(h)
        for m in mods:
            h = m(h, "after", to)
        shift = cond.reshape(x.shape[0], *LATENT).to(x.dtype)
        return shift + self.gmm(x - shift, sigma)


class DiffusionWrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.diffusion_model = TinyUNet()


class LatentDiffusion(nn.Module):
    """A1111-style SD1.x model: ``is_sd1``, ``parameterization``, ``model.diffusion_model.middle_block``."""

    is_sd1, is_sd2, is_sdxl, is_sd3 = True, False, False, False
    parameterization = "eps"

    def __init__(self) -> None:
        super().__init__()
        self.model = DiffusionWrapper()

    def apply_model(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model.diffusion_model(x, sigma, cond)


class Predictor:
    def __init__(self, prediction_type: str) -> None:
        self.prediction_type = prediction_type


class UnetPatcher:
    """Forge-style patcher: ``clone()`` shares the model and copies ``model_options``; ``add_block_modifier(fn)``."""

    def __init__(self, model: TinyUNet) -> None:
        self.model = model
        self.model_options: dict[str, Any] = {"transformer_options": {}}

    def clone(self) -> UnetPatcher:
        n = UnetPatcher(self.model)
        n.model_options = copy.deepcopy({k: v for k, v in self.model_options.items()})
        return n

    def add_block_modifier(self, fn: Any) -> None:
        self.model_options["transformer_options"].setdefault("block_modifiers", []).append(fn)

    def apply(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma, cond, transformer_options=self.model_options["transformer_options"])


class ForgeObjects:
    def __init__(self, unet: UnetPatcher) -> None:
        self.unet = unet


class StableDiffusionXL(nn.Module):
    """Forge-style engine: no ``is_*`` flags; family from the class name, prediction from the predictor."""

    def __init__(self) -> None:
        super().__init__()
        net = TinyUNet()
        net.predictor = Predictor("epsilon")
        self.forge_objects = ForgeObjects(UnetPatcher(net))


class ModelWrap(nn.Module):
    """Sigma-table wrapper (``CompVisDenoiser`` / ``ForgeScheduleLinker``): increasing ``sigmas``, ``get_sigmas``."""

    def __init__(self, sd_model: Any) -> None:
        super().__init__()
        self.inner_model = sd_model
        self.sigmas = sd15_sigmas()

    def get_sigmas(self, n: int) -> torch.Tensor:
        t = torch.linspace(999, 0, n)
        s = torch.exp(torch.log(self.sigmas)[t.round().long()])
        return torch.cat([s, s.new_zeros(1)])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        forge = getattr(self.inner_model, "forge_objects", None)
        if forge is not None:
            return forge.unet.apply(x, sigma, cond)  # Forge reads the current patcher at every call
        return self.inner_model.apply_model(x, sigma, cond)


class CFGDenoiser(nn.Module):
    """``model_wrap_cfg``: one batched call on [cond; uncond] (conditional rows first), CFG-combined x0."""

    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self.sampler = sampler
        self.p = None
        self.step = 0

    @property
    def inner_model(self) -> ModelWrap:
        return self.sampler.model_wrap

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        assert sigma.shape == (x.shape[0],), sigma.shape
        B = x.shape[0]
        out = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]))
        self.step += 1
        return out[B:] + cond_scale * (out[:B] - out[B:])


def configure(host: str, models_path: str = "") -> None:
    """Reset every stand-in module for ``host`` = ``"a1111"`` or ``"forge"``."""
    from . import launch_utils, paths, script_callbacks, sd_samplers, sd_schedulers, shared

    if host not in ("a1111", "forge"):
        raise ValueError(host)
    sd_samplers.reset(forge=host == "forge")
    sd_schedulers.schedulers[:] = sd_schedulers.schedulers[:2]
    sd_schedulers.schedulers_map.clear()
    sd_schedulers.schedulers_map.update({**{x.name: x for x in sd_schedulers.schedulers},
                                         **{x.label: x for x in sd_schedulers.schedulers}})
    shared.opts = shared.Options()
    shared.sd_model = LatentDiffusion() if host == "a1111" else StableDiffusionXL()
    paths.models_path = models_path
    script_callbacks.callbacks_ui_settings.clear()
    launch_utils.tag = "v1.10.1" if host == "a1111" else "f2.0.1v1.10.1-previous-669-gdfdcbab6"
