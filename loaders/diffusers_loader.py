"""``diffusers:DIR`` -> :class:`DiffusersDenoiser` (ALGORITHMS.md section 1.1; docs/ARCHITECTURE.md model contract).

Supported local folders (nothing is ever downloaded; weights must be ``.safetensors``):

* ``UNet2DModel`` pixel models: a ``DDPMPipeline``/``DDIMPipeline`` folder (``unet/`` + ``scheduler/``) or a bare UNet
  folder (``config.json`` + weights) with ``scheduler_config.json`` beside it or in ``../scheduler/``;
* latent pipelines (``LDMPipeline``: ``unet/`` + ``vqvae/`` or ``vae/``);
* ``StableDiffusionPipeline`` (SD 1.x/2.x) and ``StableDiffusionXLPipeline`` with their ``transformers`` text encoders.

Every model is put into sigma form D(x; sigma) (:class:`Parameterization`):

* discrete VP (DDPM/LDM/SD, epsilon | v_prediction | sample): x_t = alpha x0 + s eps with alpha^2 = alphas_cumprod, so
  x = x_t / alpha = x0 + sigma eps, sigma = s / alpha.  Network input x / sqrt(1 + sigma^2); network timestep from
  sigma by interpolating the model's log-sigma table (section 1.1); eps: D = x - sigma eps;
  v: D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v; sample: D = output.
* flow (``FlowMatch*`` schedulers, ``flow_prediction``): x = (1 - s) x0 + s eps, network input x, timestep s * T,
  velocity v = eps - x0, D = x - s v.
* EDM (``EDM*`` schedulers): D = c_skip x + c_out F(c_in x; c_noise), c_noise = ln(sigma) / 4.

Classifier-free guidance is one batched call on [uncond; cond] (section 1.1, ``CFGPrecond``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Denoiser, ModelSpecError, register_resolver

PIPELINE_COMPONENTS = ("unet", "vae", "vqvae", "text_encoder", "text_encoder_2")
TEXT_KEYS = ("prompts", "prompt", "negative_prompt", "cfg", "cfg_scale", "guidance_scale", "prompt_embeds",
             "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "class_labels")


# ------------------------------------------------------------------------------------------------ noise tables
def alphas_cumprod_from_config(cfg: dict[str, Any], source: str = "scheduler config") -> torch.Tensor:
    """alpha_bar_i (float64, i = 0..T-1) of a diffusers DDPM-type scheduler config (``beta_schedule``: linear,
    scaled_linear, squaredcos_cap_v2, or ``trained_betas``)."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    else:
        kind = cfg.get("beta_schedule", "linear")
        b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
        if kind == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal cosine alpha_bar, beta capped at 0.999
            f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        else:
            raise ModelSpecError(
                f"{source}: beta_schedule {kind!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2"
            )
    if cfg.get("rescale_betas_zero_snr"):
        raise ModelSpecError(
            f"{source}: rescale_betas_zero_snr=true gives sigma_max = inf, which sigma-form samplers cannot start "
            "from; set it to false in the scheduler config"
        )
    return torch.cumprod(1 - betas, 0)


class VPTable:
    """The discrete sigma table sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i) (increasing in i) and the
    continuous sigma <-> timestep map by linear interpolation of log sigma (ALGORITHMS.md section 1.1)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        self.sigmas = ((1 - ac) / ac).sqrt()
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep in [0, T-1] (clamped at the table ends)."""
        ls = torch.as_tensor(sigma, dtype=torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        table = self.log_sigmas.to(ls.device)
        hi = torch.searchsorted(table, ls).clamp(1, table.numel() - 1)
        lo = hi - 1
        w = (ls - table[lo]) / (table[hi] - table[lo])
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.sigmas.numel() - 1)
        lo = t.floor().long().clamp(max=self.sigmas.numel() - 2)
        w = t - lo
        table = self.log_sigmas.to(t.device)
        return ((1 - w) * table[lo] + w * table[lo + 1]).exp()


@dataclass
class Parameterization:
    """How a diffusers network output maps to D(x; sigma) (module docstring; ALGORITHMS.md section 1.1)."""

    kind: str  # "vp" | "flow" | "edm"
    prediction: str  # "epsilon" | "v_prediction" | "sample" | "flow_prediction"
    num_train_timesteps: int = 1000
    table: VPTable | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    cm_noise: bool = False

    @classmethod
    def from_scheduler_config(cls, cfg: dict[str, Any], source: str = "scheduler config") -> Parameterization:
        name = str(cfg.get("_class_name", ""))
        pred = str(cfg.get("prediction_type", "epsilon"))
        T = int(cfg.get("num_train_timesteps", 1000))
        if "FlowMatch" in name or pred == "flow_prediction":
            shift = float(cfg.get("shift", 1.0))
            s = torch.linspace(1.0, 1.0 / T, T, dtype=torch.float64)
            s = shift * s / (1 + (shift - 1) * s)
            return cls("flow", "flow_prediction", T, None, float(s.min()), float(s.max()))
        if name.startswith("EDM"):
            if pred not in ("epsilon", "v_prediction"):
                raise ModelSpecError(f"{source}: EDM prediction_type {pred!r} is not supported (epsilon, v_prediction)")
            return cls("edm", pred, T, None, float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)),
                       float(cfg.get("sigma_data", 0.5)), cfg.get("precondition_type", "edm") == "cm_edm")
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise ModelSpecError(
                f"{source}: prediction_type {pred!r} is not supported; expected epsilon, v_prediction, sample or "
                "flow_prediction"
            )
        table = VPTable(alphas_cumprod_from_config(cfg, source))
        return cls("vp", pred, T, table, float(table.sigmas[0]), float(table.sigmas[-1]))

    @property
    def family_prediction(self) -> str:
        """The ``Denoiser.prediction`` label."""
        if self.kind == "flow":
            return "flow"
        if self.kind == "edm":
            return "edm"
        return {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[self.prediction]

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """Scale of the network input (sigma: [B] float64 or float32)."""
        if self.kind == "vp":
            return 1 / (1 + sigma**2).sqrt()
        if self.kind == "edm":
            return 1 / (sigma**2 + self.sigma_data**2).sqrt()
        return torch.ones_like(sigma)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Network timestep for sigma: interpolated discrete index (vp), s * T (flow), ln(sigma) / 4 (edm)."""
        if self.kind == "vp":
            return self.table.sigma_to_t(sigma)
        if self.kind == "flow":
            return sigma.to(torch.float64) * self.num_train_timesteps
        c = 0.25 * sigma.to(torch.float64).log()
        return c * 1000 if self.cm_noise else c

    def denoised(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) from the network output ``out`` (sigma broadcast to x)."""
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if self.kind == "flow":
            return x - s * out
        if self.kind == "edm":
            sd = self.sigma_data
            c_skip = sd**2 / (s**2 + sd**2)
            c_out = s * sd / (s**2 + sd**2).sqrt()
            return c_skip * x + (c_out if self.prediction == "epsilon" else -c_out) * out
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return x / (1 + s**2) - s / (1 + s**2).sqrt() * out
        return out

    def model_sigmas(self) -> torch.Tensor | None:
        return None if self.table is None else self.table.sigmas.to(torch.float32)


# ------------------------------------------------------------------------------------------------ text prompts
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


# ------------------------------------------------------------------------------------------------ the denoiser
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
        latent = vae is not None
        if param.kind == "edm":
            self.default_schedule = ("polynomial", 7.0)
        elif latent:
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

    # -- bottleneck (AMED, ALGORITHMS.md section 4.1)
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
        if self.text.sdxl and out["pooled"] is None:
            raise ValueError(f"{self.name}: SDXL needs pooled_prompt_embeds together with prompt_embeds")
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
        cfg = self.vae.config
        sf = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        vdt = next(self.vae.parameters()).dtype
        imgs = []
        for part in x.split(chunk):
            z = (part / sf + shift).to(vdt)
            img = self.vae.decode(z, return_dict=False)[0]
            imgs.append(((img.float() + 1) / 2).clamp(0, 1))
        return torch.cat(imgs)

    def identity(self) -> dict[str, Any]:
        d = super().identity()
        d["name"] = self.name
        return d


# ------------------------------------------------------------------------------------------------ loading
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"{path}: cannot read {what} ({exc}); the file is truncated or not JSON") from exc


def check_safetensors(path: Path) -> list[str]:
    """Keys of a safetensors file; truncated/corrupt files raise :class:`ModelSpecError` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError
        raise ModelSpecError(
            f"{path}: not a readable .safetensors file ({exc}); the file is truncated or corrupt - download or "
            "convert it again"
        ) from exc


def _component_weights(folder: Path) -> list[Path]:
    """The safetensors weights of one component folder; refuses pickle-only folders (never unpickled)."""
    st = sorted(folder.glob("*.safetensors"))
    if st:
        for f in st:
            check_safetensors(f)
        return st
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl"))
    if pickles:
        raise ModelSpecError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); adasde loads .safetensors only. Convert once with "
            "`model.save_pretrained(folder, safe_serialization=True)` in a trusted environment"
        )
    return []


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    names = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if not isinstance(dtype, torch.dtype):
        if dtype not in names:
            raise ModelSpecError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
        dtype = names[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 is not supported for convolutions on CPU; using fp32", stacklevel=3)
        return torch.float32
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU does not support bf16; using fp16", stacklevel=3)
        return torch.float16
    return dtype


ALLOWED_LIBRARIES = ("diffusers", "transformers")  # the libraries a model_index.json / config.json may name


def _check_library(lib: str, where: str) -> None:
    """Refuse a component library outside :data:`ALLOWED_LIBRARIES` before importing anything it names."""
    if str(lib).split(".")[0] not in ALLOWED_LIBRARIES:
        raise ModelSpecError(f"{where}: names the library {str(lib)[:60]!r} for a component; only "
                             f"{', '.join(ALLOWED_LIBRARIES)} are loaded (model_index.json). Fix or replace the file")


def _class(lib: str, name: str, where: str) -> type:
    _check_library(lib, where)
    try:
        return getattr(importlib.import_module(lib), name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"{where}: needs the '{lib}' package: pip install 'adasde[diffusers]'") from exc
    except AttributeError as exc:
        raise ModelSpecError(f"{where}: {lib} has no class {name!r} (too old a version?)") from exc


def _diffusers() -> Any:
    try:
        import diffusers
    except ModuleNotFoundError as exc:
        raise ModelSpecError("diffusers:/single-file: specs need diffusers and transformers: "
                             "pip install 'adasde[diffusers]'") from exc
    return diffusers


def build_module(lib: str, cls_name: str, folder: Path, dtype: torch.dtype,
                 state_dict: dict[str, torch.Tensor] | None = None, source: str | None = None) -> nn.Module:
    """One model component from ``folder`` (config + safetensors), or from its config plus ``state_dict``
    (checked strictly: missing/unexpected keys or wrong shapes raise :class:`ModelSpecError` naming ``source``)."""
    cls = _class(lib, cls_name, str(folder))
    config_name = "config.json"
    _read_json(folder / config_name, f"{cls_name} config ({config_name})")
    if state_dict is None:
        if not _component_weights(folder):
            raise ModelSpecError(f"{folder}: no .safetensors weights for {cls_name}")
        try:
            kw: dict[str, Any] = {"torch_dtype": dtype} if lib == "diffusers" else {"dtype": dtype}
            if lib == "diffusers":
                kw["use_safetensors"] = True
            return cls.from_pretrained(str(folder), local_files_only=True, **kw)
        except ModelSpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - diffusers/transformers raise many types
            raise ModelSpecError(f"{folder}: cannot load {cls_name} ({type(exc).__name__}: {exc})") from exc
    if lib == "diffusers":
        model = cls.from_config(cls.load_config(str(folder)))
    else:
        cfg_cls = _class(lib, "AutoConfig", str(folder))
        model = cls(cfg_cls.from_pretrained(str(folder), local_files_only=True))
    load_checked(model, state_dict, source or str(folder), f"{cls_name} config in {folder}")
    return model.to(dtype)


def load_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict`` with an error that lists missing/unexpected keys and wrong shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    # transformers' CLIP keeps a non-persistent-like position_ids buffer in some versions
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs config {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(v: list[str]) -> str:
            return ", ".join(v[:4]) + (f" ... ({len(v)} in all)" if len(v) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing keys {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {few(shapes)}")
        raise ModelSpecError(
            f"{source}: the weights do not fit the {what} ({'; '.join(parts)}); the checkpoint is of another "
            "model family or the --config folder is wrong"
        )
    model.load_state_dict(sd, strict=False)


def _family(index_class: str, unet_cfg: dict[str, Any], param: Parameterization, latent: bool) -> str:
    if param.kind == "edm":
        return "edm"
    if unet_cfg.get("addition_embed_type") == "text_time" or "XL" in index_class:
        return "sdxl"
    if "StableDiffusion" in index_class:
        return {768: "sd15", 1024: "sd2"}.get(int(unet_cfg.get("cross_attention_dim") or 0), "sd")
    if latent:
        return "ldm"
    return "flow" if param.kind == "flow" else "ddpm"


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(folder, model_index or None) for a pipeline folder, a bare UNet folder or a ``unet/`` subfolder."""
    if not path.exists():
        raise ModelSpecError(f"{path}: no such folder")
    if path.is_file():
        raise ModelSpecError(
            f"{path}: diffusers: expects a folder (model_index.json or a UNet config.json); for a single "
            f".safetensors checkpoint use  single-file:{path} --config DIR"
        )
    if (path / "model_index.json").is_file():
        return path, _read_json(path / "model_index.json", "pipeline index (model_index.json)")
    if (path / "config.json").is_file():
        return path, None
    raise ModelSpecError(
        f"{path}: not a diffusers folder: expected model_index.json (a saved pipeline) or config.json + "
        "scheduler_config.json (a UNet folder)"
    )


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence diffusers/transformers info logs and per-file progress bars while loading local folders."""
    import diffusers.utils.logging as dlog

    try:
        import transformers.utils.logging as tlog
    except ModuleNotFoundError:  # transformers only needed for text pipelines
        tlog = None
    saved = dlog.get_verbosity(), (tlog.get_verbosity() if tlog else None)
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if tlog:
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(saved[0])
        dlog.enable_progress_bar()
        if tlog:
            tlog.set_verbosity(saved[1])
            tlog.enable_progress_bar()


def load_folder(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                expect: str | None = None, overrides: dict[str, dict[str, torch.Tensor]] | None = None,
                source: str | None = None, default_cfg: float = 1.0) -> DiffusersDenoiser:
    """Load a local diffusers folder (module docstring) as a :class:`DiffusersDenoiser`.

    ``expect``: ``"pixel" | "latent" | "text" | "sd" | "sdxl"`` - raise :class:`ModelSpecError` when the folder is of
    another family.  ``overrides``: component name -> state dict taking the place of the folder's weights
    (single-file checkpoints; ``source`` names that file in errors).
    """
    _diffusers()
    with quiet_hub_logs():
        return _load_folder(path, device, dtype, expect, overrides, source, default_cfg)


def _load_folder(path: str | Path, device: torch.device | str | None, dtype: torch.dtype | str | None,
                 expect: str | None, overrides: dict[str, dict[str, torch.Tensor]] | None, source: str | None,
                 default_cfg: float) -> DiffusersDenoiser:
    root, index = _locate(Path(path).expanduser())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = _resolve_dtype(dtype, dev)
    overrides = dict(overrides or {})
    src = source or str(root)
    if index is None:  # a bare UNet folder
        ucfg = _read_json(root / "config.json", "UNet config")
        sched = root / "scheduler_config.json"
        if not sched.is_file():
            sched = root.parent / "scheduler" / "scheduler_config.json"
        if not sched.is_file():
            raise ModelSpecError(
                f"{root}: no scheduler config (looked for {root / 'scheduler_config.json'} and {sched}); the noise "
                "schedule (betas, prediction_type) is needed to wrap the UNet - copy the scheduler_config.json of the "
                "pipeline it came from"
            )
        components = {"unet": ["diffusers", ucfg.get("_class_name", "UNet2DModel")]}
        folders = {"unet": root}
        index_class = ""
    else:
        index_class = str(index.get("_class_name", ""))
        components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
                      and v[0] is not None}
        for lib, *_ in components.values():
            _check_library(lib, str(root / "model_index.json"))
        if "unet" not in components:
            kinds = ", ".join(sorted(components)) or "none"
            raise ModelSpecError(
                f"{root}: {index_class or 'this pipeline'} has no 'unet' component (has: {kinds}); adasde wraps "
                "UNet-based diffusers pipelines (DDPM/LDM/Stable Diffusion/SDXL)"
            )
        folders = {k: root / k for k in components}
        sched = root / "scheduler" / "scheduler_config.json"
        ucfg = _read_json(folders["unet"] / "config.json", "UNet config (unet/config.json)")
    scfg = _read_json(sched, "scheduler config")
    param = Parameterization.from_scheduler_config(scfg, str(sched))
    unet_cls = components["unet"][1]
    if ucfg.get("_class_name") and ucfg["_class_name"] != unet_cls:
        raise ModelSpecError(
            f"{folders['unet'] / 'config.json'}: is a {ucfg['_class_name']} but {root / 'model_index.json'} expects a "
            f"{unet_cls}; the folder mixes model families"
        )
    if unet_cls not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ModelSpecError(f"{root}: unet is a {unet_cls}; supported: UNet2DModel, UNet2DConditionModel")
    text = "text_encoder" in components
    if unet_cls == "UNet2DConditionModel" and not text:
        raise ModelSpecError(
            f"{root}: a UNet2DConditionModel needs its text encoder(s); give the whole StableDiffusionPipeline / "
            "StableDiffusionXLPipeline folder (model_index.json with unet, vae, text_encoder, tokenizer, scheduler)"
        )
    if text and "StableDiffusion" not in index_class:
        raise ModelSpecError(f"{root}: text-conditioned pipeline {index_class!r} is not supported "
                             "(StableDiffusionPipeline, StableDiffusionXLPipeline)")
    vae_name = "vae" if "vae" in components else "vqvae" if "vqvae" in components else None
    latent = vae_name is not None
    family = _family(index_class, ucfg, param, latent)
    want = {"pixel": not latent, "latent": latent, "text": text, "sd": text and family != "sdxl",
            "sdxl": family == "sdxl"}
    if expect is not None:
        if expect not in want:
            raise ModelSpecError(f"unknown expect={expect!r}; use one of {', '.join(want)}")
        if not want[expect]:
            kind = index_class or unet_cls
            raise ModelSpecError(
                f"{src}: is a {kind} ({family}, {'latent' if latent else 'pixel'}, "
                f"{'text-conditioned' if text else 'no text encoder'}) but a {expect} model was expected"
                + ("; give a StableDiffusionPipeline / StableDiffusionXLPipeline folder" if expect in ("text", "sd",
                                                                                                   "sdxl") else "")
            )
    unknown = sorted(set(overrides) - set(components))
    if unknown:
        raise ModelSpecError(f"{src}: has weights for {unknown} but {root} has no such component "
                             f"(components: {', '.join(sorted(components))})")
    mods: dict[str, nn.Module] = {}
    for name in ("unet", vae_name, "text_encoder", "text_encoder_2"):
        if name is None or name not in components:
            continue
        lib, cls_name = components[name]
        sd = overrides.get(name)
        if sd is None and not folders[name].is_dir():
            raise ModelSpecError(f"{folders[name]}: missing component folder for {cls_name}")
        if sd is None and not _component_weights(folders[name]):
            raise ModelSpecError(
                f"{folders[name]}: {cls_name} has no .safetensors weights here"
                + (f" and {src} has no '{name}.' keys" if source else "")
            )
        mods[name] = build_module(lib, cls_name, folders[name], dt, sd, src)
    vae = mods.get(vae_name) if vae_name else None
    if vae is not None and dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.float()  # e.g. the SDXL VAE overflows in fp16
    bundle = None
    if text:
        pipe = _text_pipeline(root, index_class, components, mods, scfg)
        vsf = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        size = ucfg.get("sample_size", 64)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        bundle = TextEncoderBundle(pipe, family == "sdxl", (int(size[0]) * vsf, int(size[1]) * vsf))
    den = DiffusersDenoiser(mods["unet"], param, family=family, name=Path(src).name or src, vae=vae,
                            vae_kind=vae_name, text=bundle, default_cfg=default_cfg)
    return den.to(dev)


def _text_pipeline(root: Path, index_class: str, components: dict[str, list], mods: dict[str, nn.Module],
                   scfg: dict[str, Any]) -> Any:
    """The diffusers pipeline object (used only for ``encode_prompt``) around the already-loaded modules."""
    diffusers = _diffusers()
    pipe_cls = getattr(diffusers, index_class, None)
    if pipe_cls is None:
        raise ModelSpecError(f"{root}: diffusers has no pipeline class {index_class!r}")
    kw: dict[str, Any] = {}
    params = inspect.signature(pipe_cls.__init__).parameters
    for name in params:
        if name == "self":
            continue
        if name in mods:
            kw[name] = mods[name]
        elif name.startswith("tokenizer") and name in components:
            lib, cls_name = components[name]
            tok_cls = _class(lib, cls_name, str(root / name))
            try:
                kw[name] = tok_cls.from_pretrained(str(root / name), local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                raise ModelSpecError(f"{root / name}: cannot load the {cls_name} tokenizer ({exc})") from exc
        elif name == "scheduler":
            kw[name] = diffusers.DDIMScheduler.from_config(scfg) if "FlowMatch" not in scfg.get("_class_name", "") \
                else diffusers.FlowMatchEulerDiscreteScheduler.from_config(scfg)
        elif name == "requires_safety_checker":
            kw[name] = False
        elif name == "force_zeros_for_empty_prompt":
            idx = _read_json(root / "model_index.json", "pipeline index")
            kw[name] = bool(idx.get("force_zeros_for_empty_prompt", True))
        elif params[name].default is inspect.Parameter.empty:
            kw[name] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe_cls(**kw)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             **kw: Any) -> DiffusersDenoiser:
    if not rest:
        raise ModelSpecError("diffusers: spec needs a folder, e.g. diffusers:/models/stable-diffusion-v1-5")
    if kw.get("config") is not None:
        raise ModelSpecError(f"diffusers:{rest}: --config is for single-file:FILE specs; a diffusers folder carries "
                             "its own configs")
    kw.pop("config", None)
    return load_folder(os.path.expanduser(rest), device=device, dtype=dtype, **kw)


register_resolver("diffusers", _resolve)
