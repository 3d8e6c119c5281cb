"""SD3 and Flux transformers in sigma form: :class:`FlowTransformerDenoiser` (docs/ALGORITHMS.md section 1.1;
docs/ARCHITECTURE.md, "The model contract").

Both are rectified-flow models, x = (1 - s) x0 + s eps, predicting the velocity v = eps - x0, so D = x - s v
(:class:`~.parameterisation.Parameterization`, kind ``flow``).  The network timestep is s * 1000 for SD3 and s for Flux
(its transformer multiplies by 1000 itself).  Flux takes its latents packed into 2 x 2 patches, (B, C, H, W) ->
(B, H/2 * W/2, 4 C), with (0, row, column) position ids per patch; samples here stay unpacked (B, C, H, W).

Guidance: SD3 uses classifier-free guidance, one batched call on [uncond; cond].  Flux-dev is guidance-distilled: the
scale goes into the transformer's guidance embedding and there is one call per step; Flux-schnell has neither.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .conditioning import FlowTextEncoder
from .diffusers_denoiser import DiffusersDenoiser
from .parameterisation import Parameterization


class FlowTransformerDenoiser(DiffusersDenoiser):
    """A diffusers ``SD3Transformer2DModel`` / ``FluxTransformer2DModel`` pipeline as a flow-model Denoiser.

    ``latent_size``: (H, W) of the latents at the model's default resolution.  Conditioning keys as for
    :class:`~.diffusers_denoiser.DiffusersDenoiser` (``prompts``, ``negative_prompt``, ``cfg``, ``prompt_embeds`` +
    ``pooled_prompt_embeds``, ...).  :meth:`bottleneck` is the image-token output of the middle joint block, laid out
    as a [B, D, h, w] map over the patch grid.
    """

    def __init__(self, transformer: nn.Module, param: Parameterization, *, family: str, name: str, vae: nn.Module,
                 text: FlowTextEncoder, latent_size: tuple[int, int], default_cfg: float = 1.0) -> None:
        nn.Module.__init__(self)
        self._bottleneck = None
        self.transformer = transformer
        self.vae = vae
        self.vae_kind = "vae"
        self.text = text
        self.param = param
        self.family = family
        self.name = name
        self.prediction = param.family_prediction
        self.flow = True
        self.flow_shift = param.shift
        self.sigma_min, self.sigma_max = param.sigma_min, param.sigma_max
        self.model_sigmas = param.model_sigmas()
        self.default_schedule = ("discrete", 1.0)
        cfg = transformer.config
        self.packed = family == "flux"
        channels = int(cfg.in_channels) // 4 if self.packed else int(cfg.in_channels)
        self.sample_shape = (channels, int(latent_size[0]), int(latent_size[1]))
        self.patch = 2 if self.packed else int(cfg.patch_size)
        self.guidance_embeds = bool(getattr(cfg, "guidance_embeds", False))
        self.default_cfg = float(default_cfg)
        self.requires_grad_(False)
        self.eval()
        blocks = transformer.transformer_blocks
        self._hook = blocks[len(blocks) // 2].register_forward_hook(self._capture_tokens) if len(blocks) else None
        self._cfg_batch: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def _capture_tokens(self, module: nn.Module, inputs: Any, output: Any) -> None:
        h = output[1] if isinstance(output, (tuple, list)) else output  # (text tokens, image tokens)
        h = h.detach()
        if self._cfg_batch is not None:
            h = h[self._cfg_batch:]
        gh, gw = self.sample_shape[1] // self.patch, self.sample_shape[2] // self.patch
        self._bottleneck = h.float().transpose(1, 2).reshape(h.shape[0], h.shape[2], gh, gw)

    def _condition(self, extra: dict[str, Any], batch: int, device: torch.device) -> dict[str, Any]:
        out = super()._condition(extra, batch, device)
        if self.packed:  # Flux: no unconditional half; the scale is the guidance embedding (or unused)
            out.pop("uncond", None)
            out.pop("uncond_pooled", None)
        return out

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], use_cfg: bool) -> torch.Tensor:
        ehs = torch.cat([cond["uncond"], cond["cond"]]) if use_cfg else cond["cond"]
        pooled = torch.cat([cond["uncond_pooled"], cond["pooled"]]) if use_cfg else cond["pooled"]
        if not self.packed:
            return self.transformer(hidden_states=x_in, timestep=t, encoder_hidden_states=ehs,
                                    pooled_projections=pooled, return_dict=False)[0]
        B, C, H, W = x_in.shape
        packed = x_in.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, H * W // 4, C * 4)
        ids = torch.zeros(H // 2, W // 2, 3, device=x_in.device, dtype=x_in.dtype)
        ids[..., 1] += torch.arange(H // 2, device=x_in.device, dtype=x_in.dtype)[:, None]
        ids[..., 2] += torch.arange(W // 2, device=x_in.device, dtype=x_in.dtype)[None, :]
        txt_ids = torch.zeros(ehs.shape[1], 3, device=x_in.device, dtype=x_in.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((B,), cond["scale"], device=x_in.device, dtype=torch.float32)
        out = self.transformer(hidden_states=packed, timestep=t, guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=ehs, txt_ids=txt_ids, img_ids=ids.reshape(-1, 3),
                               return_dict=False)[0]
        return out.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
