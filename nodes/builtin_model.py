"""V3 nodes that put the embedded Fashion-MNIST model (``builtin:fmnist``) into ComfyUI, so that KSampler with
``adasde`` vs ``euler`` can be compared on a CPU in seconds (docs/HOSTS.md, ComfyUI section).

* ``AdaSDE Built-in Model`` -> MODEL, VAE, CONDITIONING.  The MODEL is a ``comfy.model_patcher.ModelPatcher`` around
  a ``comfy.model_base.BaseModel`` of type EDM (``ModelSamplingContinuousEDM`` with sigma in [0.002, 80],
  sigma_data 0.5).  ComfyUI's EDM preconditioning (c_in, c_noise = ln(sigma) / 4, c_skip, c_out) is exactly the one
  the model was trained with (docs/ALGORITHMS.md section 1.1), so its ``diffusion_model`` is the raw U-Net F and the
  denoiser ComfyUI builds equals ``models.load_model("builtin:fmnist")``.  The latent is the 1 x 28 x 28 pixel
  image in [-1, 1]; the VAE is the identity map to a grey RGB image in [0, 1].  The model is unconditional: the
  CONDITIONING output only satisfies KSampler's positive / negative inputs (use cfg 1).
* ``Empty Built-in Latent`` -> LATENT of zeros ``[batch, 1, 28, 28]``.

Running the loader also adds the package's shipped coefficient folder (``coefficients/data``) to the
``adasde_coefficients`` model folder, so the KSampler ``adasde`` / ``amed`` entries and the ``adasde`` scheduler find
the distilled coefficients of this model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from comfy_api.latest import io

CATEGORY = "sampling/adasde/builtin"
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
SHAPE = (1, 28, 28)
SHIPPED_COEFFICIENTS = Path(__file__).resolve().parents[1] / "coefficients" / "data"
_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _comfy_classes() -> tuple[type, type, type]:
    """(latent format, model config, raw network wrapper) classes; built on first use (ComfyUI modules are only
    importable inside ComfyUI)."""
    if "classes" in _CACHE:
        return _CACHE["classes"]
    import comfy.latent_formats
    import comfy.supported_models_base

    class BuiltinFMNISTLatent(comfy.latent_formats.LatentFormat):
        """Pixel space: 1 channel, no down-scaling, no scale factor; previews map [-1, 1] to grey."""

        latent_channels = 1
        spacial_downscale_ratio = 1
        scale_factor = 1.0

        def __init__(self) -> None:
            self.latent_rgb_factors = [[0.5, 0.5, 0.5]]
            self.latent_rgb_factors_bias = [0.5, 0.5, 0.5]

    class FMNIST(comfy.supported_models_base.BASE):
        """Model config; its class name gives the coefficient family ``fmnist`` -> ``builtin-fmnist``."""

        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config: dict[str, Any] = {}
        sampling_settings = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": SIGMA_DATA}
        latent_format = BuiltinFMNISTLatent
        supported_inference_dtypes = [torch.float32]
        memory_usage_factor = 1.0

    class RawUNet(torch.nn.Module):
        """ComfyUI's ``diffusion_model`` call convention around the U-Net F(c_in x, c_noise) of the built-in model."""

        def __init__(self, unet: torch.nn.Module) -> None:
            super().__init__()
            self.unet = unet

        @property
        def dtype(self) -> torch.dtype:
            return next(self.unet.parameters()).dtype

        def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, control: Any = None,
                    transformer_options: Any = None, **kwargs: Any) -> torch.Tensor:
            c_noise = timesteps.reshape(-1).expand(x.shape[0]).to(torch.float32)
            return self.unet(x.to(self.dtype), c_noise)

    _CACHE["classes"] = (BuiltinFMNISTLatent, FMNIST, RawUNet)
    return _CACHE["classes"]


def register_shipped_coefficients() -> None:
    """Append the package's ``coefficients/data`` to the ``adasde_coefficients`` folder list (idempotent; the user's
    folder stays first, so new files are still written there)."""
    import folder_paths

    from .host import FOLDER, register_folder

    register_folder()
    folder = str(SHIPPED_COEFFICIENTS)
    if SHIPPED_COEFFICIENTS.is_dir() and folder not in folder_paths.get_folder_paths(FOLDER):
        folder_paths.add_model_folder_path(FOLDER, folder, is_default=False)


def load_builtin_model() -> Any:
    """The ModelPatcher of the built-in model (cached: one copy per ComfyUI process)."""
    with _LOCK:
        if "model" in _CACHE:
            return _CACHE["model"]
        import comfy.model_base
        import comfy.model_management as mm
        import comfy.model_patcher

        from ..models import load_model

        _, config_cls, raw_cls = _comfy_classes()
        denoiser = load_model("builtin:fmnist", device="cpu", dtype=torch.float32)
        config = config_cls({"disable_unet_model_creation": True})
        config.sampling_settings = {"sigma_min": float(denoiser.sigma_min), "sigma_max": float(denoiser.sigma_max),
                                    "sigma_data": float(denoiser.cfg.sigma_data)}
        base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EDM,
                                          device=torch.device("cpu"))
        base.diffusion_model = raw_cls(denoiser.unet)
        base.eval().requires_grad_(False)
        patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        _CACHE["model"] = (patcher, denoiser)
        return _CACHE["model"]


class PixelVAE:
    """The identity "VAE" of a pixel-space model: decode maps the [-1, 1] latent to RGB images in [0, 1]
    (``loaders.Denoiser.decode``), encode maps images back (grey level, resized to 28 x 28)."""

    latent_channels = 1
    output_channels = 3
    downscale_ratio = 1
    upscale_ratio = 1
    latent_dim = 2

    def __init__(self, denoiser: Any) -> None:
        self.denoiser = denoiser

    def spacial_compression_decode(self) -> int:
        return 1

    def spacial_compression_encode(self) -> int:
        return 1

    def temporal_compression_decode(self) -> None:
        return None

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 28, 28]`` latent -> ComfyUI IMAGE ``[B, 28, 28, 3]`` in [0, 1]."""
        img = self.denoiser.decode(samples.float().cpu())
        if img.shape[1] == 1:
            img = img.repeat(1, 3, 1, 1)
        return img.permute(0, 2, 3, 1).contiguous()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> latent ``[B, 1, 28, 28]`` in [-1, 1]."""
        x = pixels[..., :3].float().cpu().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != SHAPE[1:]:
            x = torch.nn.functional.interpolate(x, size=SHAPE[1:], mode="bilinear", antialias=True,
                                                align_corners=False)
        return x * 2.0 - 1.0


def unconditional() -> list:
    """A CONDITIONING for an unconditional model: one dummy cross-attention tensor, ignored by the network."""
    return [[torch.zeros(1, 1, 1), {}]]


class BuiltinModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDEBuiltinModel",
            display_name="AdaSDE Built-in Model (Fashion-MNIST)",
            category=CATEGORY,
            search_aliases=["adasde", "fashion-mnist", "fmnist", "builtin model", "tiny model", "cpu model"],
            description="The 1.4 M-parameter Fashion-MNIST diffusion model shipped with adasde (EDM, 28 x 28 grey, "
                        "unconditional): runs KSampler on a CPU in well under a second per image. Use 'Empty "
                        "Built-in Latent', cfg 1 and the VAE output for VAE Decode. The 'adasde' sampler with the "
                        "'adasde' scheduler uses the shipped distilled coefficients (steps 3 = 5 network calls).",
            inputs=[],
            outputs=[io.Model.Output(), io.Vae.Output(),
                     io.Conditioning.Output(display_name="conditioning",
                                            tooltip="unconditional: connect to positive and negative")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        register_shipped_coefficients()
        patcher, denoiser = load_builtin_model()
        return io.NodeOutput(patcher, PixelVAE(denoiser), unconditional())


class EmptyBuiltinLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDEEmptyBuiltinLatent",
            display_name="Empty Built-in Latent (28x28)",
            category=CATEGORY,
            search_aliases=["adasde", "fashion-mnist", "fmnist", "empty latent"],
            description="A batch of empty 1 x 28 x 28 latents for the AdaSDE Built-in Model.",
            inputs=[io.Int.Input("batch_size", default=4, min=1, max=4096)],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, batch_size: int) -> io.NodeOutput:
        return io.NodeOutput({"samples": torch.zeros((int(batch_size), *SHAPE))})
