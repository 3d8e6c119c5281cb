"""A small EDM-preconditioned convolutional U-Net for 28x28x1 Fashion-MNIST (docs/TESTBEDS.md section 3.1).

No attention (too slow on CPU, docs/TESTBEDS.md section 3.1): GroupNorm + SiLU residual blocks with scale/shift noise
conditioning, average-pool downsampling and nearest-neighbour upsampling.  The network ``F`` is wrapped in the EDM
preconditioning of docs/ALGORITHMS.md section 1.1 (Karras et al. 2022, Table 1):

    D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)),
    c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = ln(s) / 4,  sd = sigma_data = 0.5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..loaders.base import Denoiser


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet` (stored in the weights' JSON metadata)."""

    in_channels: int = 1
    channels: tuple[int, ...] = (16, 48, 96)  # per resolution level: 28, 14, 7
    blocks: tuple[int, ...] = (1, 1, 2)  # residual blocks per encoder level (decoder: same count)
    mid_blocks: int = 2
    emb_dim: int = 128
    fourier_dim: int = 64
    groups: int = 8
    dropout: float = 0.0
    sigma_data: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        d = dict(d)
        for key in ("channels", "blocks"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        cfg = cls(**d)
        if len(cfg.channels) != len(cfg.blocks) or not cfg.channels:
            raise ValueError(f"U-Net config: channels {cfg.channels} and blocks {cfg.blocks} must have equal length")
        return cfg


class FourierEmbedding(nn.Module):
    """Sinusoidal features of the scalar c_noise at fixed geometric frequencies 2^-2 .. 2^5 (deterministic)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = 2 * math.pi * torch.logspace(-2, 5, half, base=2.0)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(ch, groups)
    return nn.GroupNorm(g, ch, eps=1e-6)


class ResBlock(nn.Module):
    """GN-SiLU-conv, noise scale/shift, GN-SiLU-(dropout)-conv, skip; output scaled by sqrt(1/2) (EDM DDPM++)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm0 = _norm(cin, groups)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm1 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) * math.sqrt(0.5)


class UNet(nn.Module):
    """The raw network F(c_in x, c_noise) of EDM; ``self.bottleneck`` holds the middle feature map of the last call."""

    def __init__(self, cfg: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or UNetConfig()
        self.cfg = cfg
        E, g, p = cfg.emb_dim, cfg.groups, cfg.dropout
        self.fourier = FourierEmbedding(cfg.fourier_dim)
        self.emb = nn.Sequential(nn.Linear(cfg.fourier_dim, E), nn.SiLU(), nn.Linear(E, E), nn.SiLU())
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.enc = nn.ModuleList()
        cur = ch[0]
        for c, n in zip(ch, cfg.blocks):
            level = nn.ModuleList()
            for _ in range(n):
                level.append(ResBlock(cur, c, E, g, p))
                cur = c
            self.enc.append(level)
        self.mid = nn.ModuleList([ResBlock(cur, cur, E, g, p) for _ in range(cfg.mid_blocks)])
        self.dec = nn.ModuleList()
        for c, n in reversed(list(zip(ch, cfg.blocks))):
            level = nn.ModuleList()
            for j in range(n):
                level.append(ResBlock(cur + (c if j == 0 else 0), c, E, g, p))
                cur = c
            self.dec.append(level)
        self.norm_out = _norm(cur, g)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.bottleneck: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.emb(self.fourier(c_noise).to(self.emb[0].weight.dtype)).to(x.dtype)
        h = self.conv_in(x)
        skips = []
        for i, level in enumerate(self.enc):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            for block in level:
                h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        self.bottleneck = h.detach()
        for level in self.dec:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = torch.cat([h, skip], dim=1)
            for block in level:
                h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def edm_precond(sigma: torch.Tensor, sigma_data: float = 0.5) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of EDM (docs/ALGORITHMS.md section 1.1), shapes as ``sigma``."""
    s2 = sigma * sigma
    d2 = sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = sigma.clamp(min=1e-20).log() / 4
    return c_skip, c_out, c_in, c_noise


class FMNISTDenoiser(Denoiser):
    """The embedded Fashion-MNIST model as a :class:`loaders.Denoiser`: D(x; s) per docs/ALGORITHMS.md section 1.1.

    ``x`` is ``[N, 1, 28, 28]`` in data units ([-1, 1] images plus noise), ``sigma`` a ``[N]`` vector.  The U-Net
    runs in the module's dtype; the preconditioning and the returned D are in ``x``'s dtype.
    """

    family = "builtin-fmnist"
    prediction = "edm"
    flow = False
    sigma_min = 0.002
    sigma_max = 80.0
    sample_shape = (1, 28, 28)
    default_schedule = ("polynomial", 7.0)  # measured best on this model: bench/results/builtin.md

    def __init__(self, cfg: UNetConfig | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg or UNetConfig()
        self.unet = UNet(self.cfg)
        self.meta: dict[str, Any] = dict(meta or {})

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"builtin:fmnist expects x of shape [N, 1, 28, 28], got {tuple(x.shape)}")
        if sigma.numel() != x.shape[0]:
            raise ValueError(f"builtin:fmnist: sigma has {sigma.numel()} entries for a batch of {x.shape[0]}")
        calc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        s = sigma.to(device=x.device, dtype=calc).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_precond(s, self.cfg.sigma_data)
        xc = x.to(calc)
        net_dtype = self.unet.conv_in.weight.dtype
        f = self.unet((c_in * xc).to(net_dtype), c_noise.reshape(-1))
        self._bottleneck = self.unet.bottleneck
        return (c_skip * xc + c_out * f.to(calc)).to(x.dtype)


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters())
