"""``adm:FILE.pt`` (guided-diffusion ADM, optionally with its noise-aware classifier) and ``cm:FILE.pt`` (the
consistency-models EDM-trained pixel U-Nets such as ``edm_bedroom256_ema.pt``).

Both read plain ``state_dict`` files with the original key names (``time_embed.*``, ``label_emb.*``,
``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``, ``out.*``) through ``torch.load(weights_only=True)``
(or ``.safetensors``), into our :class:`~.networks.adm.ADMUNet`.  The architecture is built in for the released files
(:data:`~.networks.adm.RELEASED`, by file name: ``256x256_diffusion``, ``256x256_diffusion_uncond``,
``256x256_classifier``, ``edm_bedroom256_ema``) and otherwise read from the tensor names and shapes
(:func:`~.networks.adm.infer_config`); a mismatch is a one-line error listing the keys.

Spec forms (keywords of ``load_model`` in brackets):

* ``adm:FILE.pt`` - eps-prediction VP model, learned-sigma outputs (2C channels: the first C are eps), linear beta
  schedule 1e-4 .. 0.02 over 1000 steps.  Sigma form (docs/ALGORITHMS.md section 1.1): x = x_t / sqrt(alpha_bar),
  sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i) (the 1000-entry ``model_sigmas``), network input
  x / sqrt(1 + sigma^2), timestep = the continuous index of sigma in the table (log-sigma interpolation),
  D = x - sigma eps.  Default schedule: discrete.  Class-conditional models take ``class_labels``.
* ``adm:FILE.pt --classifier CLS.pt`` / ``adm:FILE.pt?classifier=CLS.pt`` [``classifier=``]: the same model under
  classifier guidance (:class:`~.guidance.ClassifierGuided`) with rate ``rate=R`` [``guidance_rate=``, default 1]
  towards ``classes=3,7`` [``classes=``] or the per-call ``class_labels``.
* ``cm:FILE.pt``: EDM preconditioning with sigma_data 0.5 (c_skip = s_d^2 / (sigma^2 + s_d^2), c_out =
  sigma s_d / sqrt(sigma^2 + s_d^2), c_in = 1 / sqrt(sigma^2 + s_d^2)) and network time 250 ln(sigma)
  (consistency models' ``1000 * 0.25 * ln(sigma)``); sigma in [0.002, 80]; default schedule time-uniform rho 1.

``clip=1`` [``clip=True``]: clamp x0 (after guidance) to [-1, 1], as the release's ADM wrapper and guided-diffusion's
``clip_denoised`` do; off by default (a clamp zeroes gradients outside the data range).

Options for files whose architecture is inferred: ``size=N`` [``size=``] (image size, else parsed from the file name
as ``NxN`` or a trailing number such as ``bedroom256``), ``head_channels=N`` [``head_channels=``, default 64].
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..runtime import dtype as _dtype
from .base import Denoiser, ModelSpecError, register_resolver
from .edm_pickle import class_indices
from .guidance import ClassifierGuided
from .networks import build_and_load
from .networks.adm import ADMConfig, ADMUNet, infer_config, released_config
from .parameterisation import VPTable, alphas_cumprod_from_config
from .single_file import read_checkpoint

LINEAR_BETAS = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}
CM_RANGE = (0.002, 80.0)


def adm_table() -> VPTable:
    """guided-diffusion's linear schedule (1000 steps, beta 1e-4 .. 0.02) as a sigma table."""
    return VPTable(alphas_cumprod_from_config(LINEAR_BETAS, "guided-diffusion linear schedule"))


def _view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


class _ADMBase(Denoiser):
    def __init__(self, net: ADMUNet, family: str, source: str):
        super().__init__()
        self.net, self.family, self.source = net, family, source
        cfg = net.cfg
        self.num_classes = int(cfg.num_classes or 0)
        self.sample_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)

    def _labels(self, extra: dict[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return class_indices(extra.get("class_labels"), self.num_classes, x.shape[0], x.device, self.family)

    def _run(self, x_in: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        wdt = next(self.net.parameters()).dtype
        out = self.net(x_in.to(wdt), t.to(torch.float32), y)
        self._bottleneck = self.net.bottleneck
        return out[:, : x_in.shape[1]]


class ADMDenoiser(_ADMBase):
    """guided-diffusion eps model in sigma form (module docstring); ``clip`` clamps x0 to [-1, 1]."""

    prediction = "eps"

    def __init__(self, net: ADMUNet, family: str, source: str = "", clip: bool = False):
        super().__init__(net, family, source)
        self.clip = bool(clip)
        self.table = adm_table()
        self.model_sigmas = self.table.sigmas.to(torch.float32)
        self.sigma_min, self.sigma_max = float(self.table.sigmas[0]), float(self.table.sigmas[-1])
        self.default_schedule = ("discrete", 1.0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = sigma.to(torch.float64)
        eps = self._run(_view(1 / (1 + s**2).sqrt(), x) * x, self.table.sigma_to_t(s), self._labels(extra, x))
        d = x - _view(s, x) * eps.to(x.dtype)
        return d.clamp(-1, 1) if self.clip else d


class CMDenoiser(_ADMBase):
    """Consistency-models EDM U-Net (EDM preconditioning, sigma_data 0.5, time 250 ln sigma)."""

    prediction = "edm"
    sigma_data = 0.5

    def __init__(self, net: ADMUNet, family: str, source: str = ""):
        super().__init__(net, family, source)
        self.sigma_min, self.sigma_max = CM_RANGE
        self.default_schedule = ("time_uniform", 1.0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s, sd = sigma.to(torch.float64), self.sigma_data
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        f = self._run(_view(c_in, x) * x, 250.0 * (s + 1e-44).log(), self._labels(extra, x))
        return _view(c_skip, x) * x + _view(c_out, x) * f.to(x.dtype)


class ADMClassifier(nn.Module):
    """The noise-aware ADM classifier in sigma form: ``forward(x, sigma) -> logits`` evaluates the network at
    x_t = x / sqrt(1 + sigma^2) and the table timestep of sigma (as the diffusion model)."""

    def __init__(self, net: ADMUNet, source: str = ""):
        super().__init__()
        self.net, self.source, self.table = net, source, adm_table()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        wdt = next(self.net.parameters()).dtype
        return self.net((_view(1 / (1 + s**2).sqrt(), x) * x).to(wdt), self.table.sigma_to_t(s).float())


def _size_from_name(name: str) -> int | None:
    m = re.search(r"(\d+)x\1", name) or re.search(r"(\d+)(?!.*\d)", name)
    return int(m.group(1)) if m else None


def build_network(path: Path, sd: dict[str, torch.Tensor], *, size: int | None = None, head_channels: int = 64,
                  want: str = "unet") -> ADMUNet:
    """Our ADM network for the state dict ``sd`` of ``path`` (built-in config by file name, else inferred)."""
    cfg: ADMConfig | None = released_config(path.stem)
    if cfg is None or (size and size != cfg.image_size):
        try:
            cfg = infer_config(sd, size or (None if "out.2.positional_embedding" in sd else _size_from_name(path.stem)),
                               int(head_channels))
        except (ValueError, ZeroDivisionError) as exc:
            hint = " (pass size=N)" if "image size" in str(exc) else ""
            raise ModelSpecError(f"{path}: not a guided-diffusion / consistency-models state dict ({exc}){hint}") \
                from None
    if (cfg.pool is not None) != (want == "classifier"):
        kind = "a classifier (EncoderUNetModel)" if cfg.pool else "a diffusion U-Net"
        raise ModelSpecError(f"{path}: this file is {kind}; pass it as "
                             f"{'--classifier' if cfg.pool else 'the model'}")
    net = build_and_load(lambda: ADMUNet(cfg), sd, str(path),
                         f"ADM architecture {cfg.image_size}px, {cfg.model_channels} channels")
    return net.eval().requires_grad_(False)


def _finish(m: nn.Module, device: Any, dtype: Any) -> Any:
    return m.eval().requires_grad_(False).to(device=device or "cpu", dtype=_dtype(dtype) or torch.float32)


def load_adm(file: str | os.PathLike, device: Any = None, dtype: Any = None, *, size: int | None = None,
             head_channels: int = 64, clip: bool = False) -> ADMDenoiser:
    path = Path(file).expanduser()
    net = build_network(path, read_checkpoint(path), size=size, head_channels=head_channels)
    cfg = net.cfg
    if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
        raise ModelSpecError(f"{path}: {cfg.out_channels} output channels for {cfg.in_channels} input channels; "
                             "expected eps (C) or eps + learned variance (2C)")
    size, n = cfg.image_size, int(cfg.num_classes or 0)
    if n == 1000:
        family = f"adm-imagenet{size}"
    elif path.stem == f"{size}x{size}_diffusion_uncond":
        family = f"adm-imagenet{size}-uncond"
    else:
        family = f"adm-{size}{'-cond' if n else ''}"
    return _finish(ADMDenoiser(net, family, str(path), clip), device, dtype)


def load_adm_classifier(file: str | os.PathLike, device: Any = None, dtype: Any = None, *,
                        head_channels: int = 64) -> ADMClassifier:
    path = Path(file).expanduser()
    net = build_network(path, read_checkpoint(path), head_channels=head_channels, want="classifier")
    return _finish(ADMClassifier(net, str(path)), device, dtype)


def load_cm(file: str | os.PathLike, device: Any = None, dtype: Any = None, *, size: int | None = None,
            head_channels: int = 64) -> CMDenoiser:
    path = Path(file).expanduser()
    net = build_network(path, read_checkpoint(path), size=size, head_channels=head_channels)
    cfg = net.cfg
    if cfg.out_channels != cfg.in_channels:
        raise ModelSpecError(f"{path}: {cfg.out_channels} output channels; a consistency-models EDM U-Net predicts "
                             f"{cfg.in_channels} (is this a guided-diffusion file? use adm:)")
    size = cfg.image_size
    if "bedroom" in path.name.lower():
        family = "cm-lsun_bedroom" + ("" if size == 256 else str(size))
    else:
        family = f"cm-{size}"
    return _finish(CMDenoiser(net, family, str(path)), device, dtype)


_OPTION_KEYS = ("classifier", "size", "head_channels", "rate", "guidance_rate", "classes", "clip")


def parse_spec(rest: str) -> tuple[str, dict[str, str]]:
    """``FILE [--classifier C] [?key=value&...]`` -> (FILE, options)."""
    opts: dict[str, str] = {}
    if "?" in rest:
        rest, query = rest.split("?", 1)
        for part in filter(None, query.split("&")):
            k, sep, v = part.partition("=")
            if not sep or k not in _OPTION_KEYS:
                raise ModelSpecError(f"{rest}?{query}: unknown option {part!r}; known: {', '.join(_OPTION_KEYS)}")
            opts[k] = v
    m = re.fullmatch(r"\s*(.+?)\s+--classifier(?:\s+|=)(\S+)\s*", rest)
    if m:
        rest, opts["classifier"] = m.group(1), m.group(2)
    return rest.strip(), opts


def _int(v: Any, what: str) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what}={v!r}: expected an integer") from None


def _classes(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return [int(c) for c in v.split(",") if c.strip()]
        except ValueError:
            raise UsageError(f"classes={v!r}: expected comma-separated class indices, e.g. classes=207,360") from None
    return v


def _resolve_adm(rest: str, device: Any = None, dtype: Any = None, **kw: Any) -> Denoiser:
    file, opts = parse_spec(rest)
    if not file:
        raise ModelSpecError("adm: spec needs a file, e.g. adm:256x256_diffusion.pt --classifier 256x256_classifier.pt")
    opts.update({k: v for k, v in kw.items() if k in _OPTION_KEYS and v is not None})
    hc = _int(opts.get("head_channels"), "head_channels") or 64
    clip = str(opts.get("clip", "0")).lower() in ("1", "true", "yes")
    den = load_adm(file, device, dtype, size=_int(opts.get("size"), "size"), head_channels=hc,
                   clip=clip and not opts.get("classifier"))  # with guidance the guided x0 is clamped
    if not opts.get("classifier"):
        return den
    cls = load_adm_classifier(opts["classifier"], device, dtype, head_channels=hc)
    rate = opts.get("guidance_rate", opts.get("rate", 1.0))
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise UsageError(f"guidance rate {rate!r}: expected a number") from None
    return ClassifierGuided(den, cls, _classes(opts.get("classes")), rate, clip)


def _resolve_cm(rest: str, device: Any = None, dtype: Any = None, **kw: Any) -> Denoiser:
    file, opts = parse_spec(rest)
    if not file:
        raise ModelSpecError("cm: spec needs a file, e.g. cm:edm_bedroom256_ema.pt")
    if opts.get("classifier") or kw.get("classifier"):
        raise ModelSpecError(f"cm:{file}: --classifier is for adm: models")
    opts.update({k: v for k, v in kw.items() if k in ("size", "head_channels") and v is not None})
    return load_cm(file, device, dtype, size=_int(opts.get("size"), "size"),
                   head_channels=_int(opts.get("head_channels"), "head_channels") or 64)


register_resolver("adm", _resolve_adm)
register_resolver("cm", _resolve_cm)
