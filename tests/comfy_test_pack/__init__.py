"""Test-only ComfyUI node pack (V3): a tiny random-initialised SD1.5-shaped model and helpers.

Loaded by the ComfyUI tests through the ``custom_nodes:`` key of an extra_model_paths yaml; never shipped.  Nodes:

* ``AdaSDETestToyModel`` -> MODEL, positive CONDITIONING, negative CONDITIONING: a real ``comfy.model_base.SD15`` with
  a ~0.3 M parameter UNet (32 channels, two levels, cross-attention, context dim 64), weights drawn from a fixed seed
  (ComfyUI's ops leave them uninitialised), wrapped in a ``ModelPatcher``.  Cached, so repeated prompts reuse it.
* ``AdaSDETestLatentToImage`` -> IMAGE: a deterministic latent -> RGB map (first 3 channels, sigmoid, 4x nearest
  upsampling) so that sampled latents can feed image nodes without a VAE.
* ``AdaSDETestImages`` -> IMAGE: ``count`` seeded random images (a seed range for FID tests).
* ``AdaSDETestLatentStats`` (output node): mean/std/checksum of a LATENT in the UI output, for assertions via /history.
"""

from __future__ import annotations

import hashlib

import torch
from comfy_api.latest import ComfyExtension, io

CONTEXT_DIM = 64
UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "num_heads": 2,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "context_dim": CONTEXT_DIM,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "legacy": False,
}

_CACHE: dict[str, object] = {}


def build_toy_model(seed: int = 0):
    """A ModelPatcher around a random tiny SD15 model (deterministic in ``seed``)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    key = f"toy{seed}"
    if key in _CACHE:
        return _CACHE[key]
    cfg = comfy.supported_models.SD15(dict(UNET_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            if name.startswith("out."):
                p.mul_(0.05)  # a small noise prediction keeps the toy sampler's outputs in a sane range
    model.eval()
    mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    _CACHE[key] = mp
    return mp


def toy_conditioning(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, CONTEXT_DIM, generator=g) * 0.5, {}]]


class ToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDETestToyModel",
            display_name="AdaSDE Test Toy SD1.5 Model",
            category="adasde/testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31)],
            outputs=[io.Model.Output(), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(build_toy_model(seed), toy_conditioning(1000 + seed), toy_conditioning(2000 + seed))


class LatentToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDETestLatentToImage",
            display_name="AdaSDE Test Latent To Image",
            category="adasde/testing",
            inputs=[io.Latent.Input("samples")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        z = samples["samples"][:, :3].float()
        img = torch.sigmoid(z).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
        return io.NodeOutput(img.permute(0, 2, 3, 1).contiguous())


class RandomImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDETestImages",
            display_name="AdaSDE Test Random Images",
            category="adasde/testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31), io.Int.Input("count", default=4, min=1),
                    io.Int.Input("size", default=32, min=8), io.Float.Input("shift", default=0.0)],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, seed: int, count: int, size: int, shift: float) -> io.NodeOutput:
        g = torch.Generator().manual_seed(seed)
        img = (torch.rand(count, size, size, 3, generator=g) * 0.8 + 0.1 + shift).clamp(0, 1)
        return io.NodeOutput(img)


class LatentStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDETestLatentStats",
            display_name="AdaSDE Test Latent Stats",
            category="adasde/testing",
            inputs=[io.Latent.Input("samples")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        z = samples["samples"].float()
        per = [{"mean": float(v.mean()), "std": float(v.std()), "first": [float(t) for t in v.flatten()[:16]],
                "sha": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]} for v in z]
        return io.NodeOutput(ui={"adasde_stats": [{"shape": list(z.shape), "finite": bool(torch.isfinite(z).all()),
                                                   "images": per}]})


class TestPack(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ToyModel, LatentToImage, RandomImages, LatentStats]


async def comfy_entrypoint() -> TestPack:
    return TestPack()
