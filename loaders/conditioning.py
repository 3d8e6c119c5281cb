"""Text conditioning of SD / SDXL pipelines: prompts -> embeddings through the pipeline's own ``encode_prompt``, and
the ``extra_args`` keys a :class:`~.diffusers_denoiser.DiffusersDenoiser` accepts (docs/ALGORITHMS.md section 1.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

TEXT_KEYS = ("prompts", "prompt", "negative_prompt", "cfg", "cfg_scale", "guidance_scale", "prompt_embeds",
             "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "class_labels")



class TextEncoderBundle(nn.Module):
    """Text encoders of an SD / SDXL pipeline; prompts -> (embeds, pooled) with a per-prompt cache.

    Uses the pipeline's own ``encode_prompt`` (diffusers), so clip-skip/tokenisation follow diffusers exactly.
    """

    def __init__(self, pipe: Any, sdxl: bool, image_size: tuple[int, int]):
        super().__init__()
        self.text_encoder = pipe.text_encoder
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        self._pipe = [pipe]  # list: keep it out of the module tree
        self.sdxl = sdxl
        self.pooled = sdxl  # the network also takes pooled embeddings
        self.image_size = image_size
        self.force_zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) if sdxl else False
        self._cache: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor | None]] = {}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device, negative: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, L, D] embeddings (and [B, P] pooled for SDXL); ``negative`` applies SDXL's zero-empty-prompt rule."""
        missing = [p for p in dict.fromkeys(prompts) if (p, negative) not in self._cache]
        pipe = self._pipe[0]
        for p in missing:
            if negative and p == "" and self.force_zeros:
                e, pooled = self.encode([""], device)
                self._cache[(p, negative)] = (torch.zeros_like(e), torch.zeros_like(pooled))
                continue
            if self.sdxl:
                out = pipe.encode_prompt(p, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                self._cache[(p, negative)] = (out[0], out[2])
            else:
                out = pipe.encode_prompt(p, device, 1, False)
                self._cache[(p, negative)] = (out[0], None)
        embeds = torch.cat([self._cache[(p, negative)][0].to(device) for p in prompts])
        pooled = None
        if self.sdxl:
            pooled = torch.cat([self._cache[(p, negative)][1].to(device) for p in prompts])
        return embeds, pooled

    def time_ids(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """SDXL micro-conditioning (original size, crop top-left, target size) = (H, W, 0, 0, H, W)."""
        h, w = self.image_size
        return torch.tensor([[h, w, 0, 0, h, w]], device=device, dtype=dtype).expand(batch, 6)


def _as_list(v: Any, batch: int, what: str) -> list[str]:
    items = [v] if isinstance(v, str) else list(v)
    if len(items) == 1 and batch > 1:
        items = items * batch
    if len(items) != batch:
        raise ValueError(f"got {len(items)} {what} for a batch of {batch}; pass one per sample (or a single one)")
    return [str(p) for p in items]


def _rows(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]}, the samples have batch {batch}")



class FlowTextEncoder(nn.Module):
    """Text encoders of an SD3 (CLIP-L, CLIP-G, optional T5) or Flux (CLIP-L, T5) pipeline: prompts -> (embeds,
    pooled) through the pipeline's own ``encode_prompt``, cached per prompt."""

    pooled = True

    def __init__(self, pipe: Any, kind: str):
        super().__init__()
        self.kind = kind  # "sd3" | "flux"
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            setattr(self, name, getattr(pipe, name, None))
        self._pipe = [pipe]  # list: keep it out of the module tree
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device, negative: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D] embeddings and [B, P] pooled embeddings (``negative`` needs no special rule here)."""
        pipe = self._pipe[0]
        for p in dict.fromkeys(prompts):
            if p in self._cache:
                continue
            if self.kind == "sd3":
                out = pipe.encode_prompt(p, None, None, device=device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)
                self._cache[p] = (out[0], out[2])
            else:
                out = pipe.encode_prompt(p, None, device=device, num_images_per_prompt=1)
                self._cache[p] = (out[0], out[1])
        embeds = torch.cat([self._cache[p][0].to(device) for p in prompts])
        return embeds, torch.cat([self._cache[p][1].to(device) for p in prompts])
