"""A diffusers UNet in sigma form: :class:`DiffusersDenoiser` (docs/ALGORITHMS.md section 1.1; docs/ARCHITECTURE.md,
"The model contract").  The noise maths is in :mod:`.parameterisation`, prompts in :mod:`.conditioning`.

Classifier-free guidance is one batched call on [uncond; cond] (section 1.1, ``CFGPrecond``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Denoiser, ModelSpecError
from .conditioning import TEXT_KEYS, TextEncoderBundle, _as_list, _rows
from .parameterisation import Parameterization


class DiffusersDenoiser(Denoiser):
    """A diffusers UNet (pixel, latent or text-conditioned) in sigma form (module docstring).

    Conditioning through ``extra_args``: ``prompts`` (str or one per sample), ``negative_prompt``, ``cfg`` (guidance
    scale; 1 = no guidance), or pre-computed ``prompt_embeds`` / ``negative_prompt_embeds`` (+ SDXL
    ``pooled_prompt_embeds`` / ``negative_pooled_prompt_embeds``); ``class_labels`` for class-conditional UNets.
    Without them a text model uses the empty prompt and ``default_cfg``.  :meth:`bottleneck` is the UNet mid-block
    output of the last call (the conditional half under CFG), detached.
    """

    def __init__(self, unet: nn.Module, param: Parameterization, *, family: str, name: str,
                 vae: nn.Module | None = None, vae_kind: str | None = None, text: TextEncoderBundle | None = None,
                 default_cfg: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text = text
        self.param = param
        self.vae_kind = vae_kind
        self.family = family
        self.name = name
        self.prediction = param.family_prediction
        self.flow = param.kind == "flow"
        self.sigma_min, self.sigma_max = param.sigma_min, param.sigma_max
        self.model_sigmas = param.model_sigmas()
        self.flow_shift = param.shift
        latent = vae is not None
        if param.kind == "edm":
            self.default_schedule = ("polynomial", 7.0)
        elif latent or self.flow:
            self.default_schedule = ("discrete", 1.0)
        else:
            self.default_schedule = ("time_uniform", 1.0)
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size, cfg.sample_size)
        self.sample_shape = (int(cfg.in_channels), int(size[0]), int(size[1]))
        self.default_cfg = float(default_cfg)
        self.requires_grad_(False)
        self.eval()
        self._hook = None
        mid = getattr(unet, "mid_block", None)
        if mid is not None:
            self._hook = mid.register_forward_hook(self._capture)
        self._cfg_batch: int | None = None

    # -- bottleneck (AMED, docs/ALGORITHMS.md section 4.1)
    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        h = output[0] if isinstance(output, (tuple, list)) else output
        h = h.detach()
        if self._cfg_batch is not None:
            h = h[self._cfg_batch:]  # [uncond; cond] -> cond half
        self._bottleneck = h.float()

    @property
    def text_conditioned(self) -> bool:
        return self.text is not None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- conditioning
    def _condition(self, extra: dict[str, Any], batch: int, device: torch.device) -> dict[str, Any]:
        unknown = sorted(set(extra) - set(TEXT_KEYS))
        if unknown:
            raise TypeError(f"{self.name}: unexpected extra_args {unknown}; accepted: {', '.join(TEXT_KEYS)}")
        scale = extra.get("cfg", extra.get("cfg_scale", extra.get("guidance_scale", self.default_cfg)))
        scale = float(scale)
        out: dict[str, Any] = {"scale": scale}
        if extra.get("class_labels") is not None:
            out["class_labels"] = _rows(torch.as_tensor(extra["class_labels"], device=device).reshape(-1), batch,
                                        "class_labels")
        if self.text is None:
            given = [k for k in TEXT_KEYS[:-1] if extra.get(k) is not None and k not in ("cfg", "cfg_scale",
                                                                                           "guidance_scale")]
            if given:
                raise ModelSpecError(
                    f"{self.name} is an unconditional {self.family} model (no text encoder) but got {given}; "
                    "use a StableDiffusionPipeline / StableDiffusionXLPipeline folder for text prompts"
                )
            out["scale"] = 1.0
            return out
        dt = self.dtype
        if extra.get("prompt_embeds") is not None:
            cond = _rows(extra["prompt_embeds"].to(device, dt), batch, "prompt_embeds")
            pooled = extra.get("pooled_prompt_embeds")
            pooled = None if pooled is None else _rows(pooled.to(device, dt), batch, "pooled_prompt_embeds")
        else:
            prompts = extra.get("prompts", extra.get("prompt", ""))
            cond, pooled = self.text.encode(_as_list(prompts, batch, "prompts"), device)
        out["cond"], out["pooled"] = cond.to(dt), None if pooled is None else pooled.to(dt)
        if scale != 1.0:
            if extra.get("negative_prompt_embeds") is not None:
                unc = _rows(extra["negative_prompt_embeds"].to(device, dt), batch, "negative_prompt_embeds")
                up = extra.get("negative_pooled_prompt_embeds")
                up = None if up is None else _rows(up.to(device, dt), batch, "negative_pooled_prompt_embeds")
            else:
                neg = extra.get("negative_prompt") or ""
                unc, up = self.text.encode(_as_list(neg, batch, "negative prompts"), device, negative=True)
            out["uncond"], out["uncond_pooled"] = unc.to(dt), None if up is None else up.to(dt)
        if self.text.pooled and out["pooled"] is None:
            raise ValueError(f"{self.name}: {self.family} needs pooled_prompt_embeds together with prompt_embeds")
        return out

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], use_cfg: bool) -> torch.Tensor:
        kw: dict[str, Any] = {}
        if "class_labels" in cond:
            kw["class_labels"] = cond["class_labels"].repeat(2) if use_cfg else cond["class_labels"]
        if self.text is not None:
            ehs = torch.cat([cond["uncond"], cond["cond"]]) if use_cfg else cond["cond"]
            kw["encoder_hidden_states"] = ehs
            if self.text.sdxl:
                pooled = torch.cat([cond["uncond_pooled"], cond["pooled"]]) if use_cfg else cond["pooled"]
                kw["added_cond_kwargs"] = {"text_embeds": pooled,
                                           "time_ids": self.text.time_ids(x_in.shape[0], x_in.device, x_in.dtype)}
        return self.unet(x_in, t, return_dict=False, **kw)[0]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """D(x; sigma) (module docstring); CFG = one batched call on [uncond; cond]."""
        B = x.shape[0]
        cond = self._condition(extra, B, x.device)
        use_cfg = cond["scale"] != 1.0 and "uncond" in cond
        sig64 = sigma.to(torch.float64)
        c_in = self.param.c_in(sig64).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        t = self.param.timestep(sig64).to(torch.float32)
        x_in = (x * c_in).to(self.dtype)
        if use_cfg:
            x_in, t = torch.cat([x_in, x_in]), torch.cat([t, t])
        self._cfg_batch = B if use_cfg else None
        try:
            out = self._unet(x_in, t, cond, use_cfg).to(x.dtype)
        finally:
            self._cfg_batch = None
        if out.shape[1] != x.shape[1]:  # learned-variance UNets output [eps, var]
            out = out[:, : x.shape[1]]
        if use_cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + cond["scale"] * (out_c - out_u)
        return self.param.denoised(out, x, sigma.to(x.dtype))

    # -- images
    @torch.no_grad()
    def decode(self, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Samples -> images in [0, 1] (NCHW float32); latents go through the VAE (scaling/shift factor undone)."""
        if self.vae is None:
            return super().decode(x).float()
        return decode_latents(self.vae, x, chunk)

    def identity(self) -> dict[str, Any]:
        d = super().identity()
        d["name"] = self.name
        return d



@torch.no_grad()
def decode_latents(vae: nn.Module, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Latents -> images in [0, 1] (NCHW float32) through a diffusers VAE: z / scaling_factor + shift_factor."""
    cfg = vae.config
    sf = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
    vdt = next(vae.parameters()).dtype
    imgs = []
    for part in x.split(chunk):
        z = (part / sf + shift).to(vdt)
        img = vae.decode(z, return_dict=False)[0]
        imgs.append(((img.float() + 1) / 2).clamp(0, 1))
    return torch.cat(imgs)
