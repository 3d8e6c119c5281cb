"""Test-only ComfyUI node pack (V3): a tiny random-initialised SD1.5-shaped model and helpers.

Loaded by the ComfyUI tests through the ``custom_nodes:`` key of an extra_model_paths yaml; never shipped.  Nodes:

* ``AdaSDETestToyModel`` -> MODEL, positive CONDITIONING, negative CONDITIONING: a real ``comfy.model_base.SD15`` with
  a ~0.3 M parameter UNet (32 channels, two levels, cross-attention, context dim 64), weights drawn from a fixed seed
  (ComfyUI's ops leave them uninitialised), wrapped in a ``ModelPatcher``.  Cached, so repeated prompts reuse it.
* ``AdaSDETestLatentToImage`` -> IMAGE: a deterministic latent -> RGB map (first 3 channels, sigmoid, 4x nearest
  upsampling) so that sampled latents can feed image nodes without a VAE.
* ``AdaSDETestImages`` -> IMAGE: ``count`` seeded random images (a seed range for FID tests).
* ``AdaSDETestLatentStats`` (output node): mean/std/checksum (and, for small latents, every value) of a LATENT in the
  UI output, for assertions via /history.
* ``AdaSDETestSigmas`` (output node): the values of a SIGMAS socket in the UI output.
* ``AdaSDETestDirect`` -> LATENT: the library's direct call (``samplers.SAMPLERS[name]`` on a plan given as JSON:
  sigmas in ComfyUI's float32, coefficient file, AFS) on ComfyUI's model, conditioning, CFG and noise: the reference
  a door is compared to.
* ``AdaSDETestModelHash`` (output node): sha256 of a MODEL's weights (values) and of the identity of its tensors.
"""

from __future__ import annotations

import hashlib
import json

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
                "values": [float(t) for t in v.flatten()] if v.numel() <= 4096 else None,
                "sha": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]} for v in z]
        return io.NodeOutput(ui={"adasde_stats": [{"shape": list(z.shape), "finite": bool(torch.isfinite(z).all()),
                                                   "images": per}]})


class SigmasStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="AdaSDETestSigmas", display_name="AdaSDE Test Sigmas", category="adasde/testing",
                         inputs=[io.Sigmas.Input("sigmas")], outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, sigmas: torch.Tensor) -> io.NodeOutput:
        return io.NodeOutput(ui={"adasde_sigmas": [[float(v) for v in sigmas.flatten()]]})


class Direct(io.ComfyNode):
    """The library's sampler called directly on a plan, inside ComfyUI's guider (conditioning, CFG, noise scaling)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDETestDirect", display_name="AdaSDE Test Direct Call", category="adasde/testing",
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Latent.Input("latent"), io.Int.Input("seed", default=0, min=0, max=2**63 - 1),
                    io.Float.Input("cfg", default=2.0), io.Boolean.Input("add_noise", default=True),
                    io.String.Input("plan", multiline=True, default="{}")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent: dict, seed: int, cfg: float, add_noise: bool,
                plan: str) -> io.NodeOutput:
        import comfy.sample
        import comfy.samplers
        from adasde.coefficients import load
        from adasde.nodes.host import per_image_seeds
        from adasde.samplers import SAMPLERS

        spec = json.loads(plan)
        sigmas = torch.tensor(spec["sigmas"], dtype=torch.float32)  # a SIGMAS socket holds float32 values
        coeffs = load(spec["coefficients"]) if spec.get("coefficients") else None
        x0 = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = (comfy.sample.prepare_noise(x0, seed, latent.get("batch_index")) if add_noise
                 else torch.zeros_like(x0))

        class _Sampler(comfy.samplers.Sampler):
            def sample(self, model_wrap, sig, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                       disable_pbar=False):
                ms = model_wrap.inner_model.model_sampling
                x = ms.noise_scaling(sig[0], noise, latent_image, self.max_denoise(model_wrap, sig))
                extra = {k: v for k, v in extra_args.items() if k != "denoise_mask"}
                out = SAMPLERS[spec["sampler"]](model_wrap, x, sigmas, extra_args=per_image_seeds(extra, x),
                                                disable=True, coeffs=coeffs, afs=bool(spec["afs"]), flow=False)
                return ms.inverse_noise_scaling(sig[-1], out)

        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        out = guider.sample(noise, x0, _Sampler(), sigmas.float(), seed=seed)
        return io.NodeOutput({**latent, "samples": out})


class ModelHash(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="AdaSDETestModelHash", display_name="AdaSDE Test Model Hash",
                         category="adasde/testing", inputs=[io.Model.Input("model"), io.String.Input("tag")],
                         outputs=[], is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # never cached: hash the model as it is now

    @classmethod
    def execute(cls, model, tag: str) -> io.NodeOutput:
        values, ids = hashlib.sha256(), hashlib.sha256()
        base = model.model
        for name, t in list(base.named_parameters()) + list(base.named_buffers()):
            values.update(name.encode())
            values.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            ids.update(f"{name}:{id(t)}".encode())
        return io.NodeOutput(ui={"adasde_hash": [{"tag": tag, "values": values.hexdigest(),
                                                  "tensors": ids.hexdigest()}]})


class TestPack(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ToyModel, LatentToImage, RandomImages, LatentStats, SigmasStats, Direct, ModelHash]


async def comfy_entrypoint() -> TestPack:
    return TestPack()
