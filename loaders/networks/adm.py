"""The guided-diffusion ADM U-Net and its noise-aware classifier (Dhariwal & Nichol 2021, section 3 and appendix),
also the architecture of the consistency-models EDM checkpoints.

Our own implementation with the original parameter names, so ``.pt`` state dicts load unchanged:

* ``time_embed.{0,2}``: sinusoidal timestep features (cos first, then sin; 10000 max period) -> Linear -> SiLU ->
  Linear; ``label_emb``: class embedding added to it (class-conditional models);
* ``input_blocks.N`` / ``middle_block`` / ``output_blocks.N``: sequences of ``ResBlock`` (``in_layers.{0,2}``,
  ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``; scale-shift norm when ``use_scale_shift_norm``;
  nearest-up / average-pool resampling inside the block when ``resblock_updown``), ``AttentionBlock`` (``norm``,
  ``qkv``, ``proj_out``) and conv ``Downsample`` (``op``) / ``Upsample`` (``conv``);
* ``out.{0,2}``: GroupNorm -> SiLU -> conv (the U-Net), or GroupNorm -> SiLU -> ``AttentionPool2d`` (the classifier:
  ``positional_embedding``, ``qkv_proj``, ``c_proj``).

GroupNorm (32 groups) and the attention softmax run in float32.  The attention channel layout is ``"legacy"``
([head][q|k|v][channel], guided-diffusion's default) or ``"qkv_first"`` ([q|k|v][head][channel]: guided-diffusion's
``use_new_attention_order``, the classifier's pooling head and the consistency-models flash attention, whose
``qkv``/``proj_out`` are 1x1 *2-D* convolutions, ``attn_conv2d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM U-Net (``pool=None``) or encoder classifier (``pool='attention'``)."""

    image_size: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[int, ...]
    in_channels: int = 3
    num_classes: int | None = None
    num_head_channels: int = 64
    num_heads: int = 1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    attention_order: str = "legacy"
    attn_conv2d: bool = False
    pool: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def heads(self, channels: int) -> int:
        return self.num_heads if self.num_head_channels <= 0 else max(channels // self.num_head_channels, 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2)) (zero-padded for odd ``dim``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(ch: int) -> GroupNorm32:
    return GroupNorm32(32, ch)


def _attention(qkv: torch.Tensor, heads: int, order: str) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) v per head; qkv [B, 3C, T] -> [B, C, T]."""
    b, width, length = qkv.shape
    d = width // (3 * heads)
    if order == "legacy":
        q, k, v = qkv.reshape(b * heads, 3 * d, length).split(d, dim=1)
    else:
        q, k, v = (t.reshape(b * heads, d, length) for t in qkv.chunk(3, dim=1))
    s = 1 / math.sqrt(math.sqrt(d))
    w = torch.einsum("bct,bcs->bts", q * s, k * s).float().softmax(dim=-1).to(qkv.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(b, heads * d, length)


class Upsample(nn.Module):
    def __init__(self, ch: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, ch: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_ch: int, out_ch: int | None = None, scale_shift: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_ch = out_ch or ch
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(ch, False), Upsample(ch, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(ch, False), Downsample(ch, False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(_norm(out_ch), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, heads: int, order: str = "legacy", conv2d: bool = False):
        super().__init__()
        self.heads, self.order, self.conv2d = heads, order, conv2d
        self.norm = _norm(ch)
        conv = nn.Conv2d if conv2d else nn.Conv1d
        self.qkv = conv(ch, 3 * ch, 1)
        self.proj_out = conv(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *sp = x.shape
        hn = self.norm(x)
        qkv = self.qkv(hn if self.conv2d else hn.reshape(b, c, -1)).reshape(b, 3 * c, -1)
        a = _attention(qkv, self.heads, self.order)
        h = self.proj_out(a.reshape(b, c, *sp) if self.conv2d else a).reshape(b, c, *sp)
        return x + h


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class AttentionPool2d(nn.Module):
    """Classifier head: attention of the mean token over all positions (CLIP-style), ``qkv_first`` layout."""

    def __init__(self, spatial: int, ch: int, head_channels: int, out_ch: int):
        super().__init__()
        b = 1 / math.sqrt(ch)  # placeholder values (the file supplies them); uniform_ keeps meta builds cheap
        self.positional_embedding = nn.Parameter(torch.empty(ch, spatial**2 + 1).uniform_(-b, b))
        self.qkv_proj = nn.Conv1d(ch, 3 * ch, 1)
        self.c_proj = nn.Conv1d(ch, out_ch, 1)
        self.heads = ch // head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(_attention(self.qkv_proj(x), self.heads, "qkv_first"))[:, :, 0]


class ADMUNet(nn.Module):
    """guided-diffusion ``UNetModel`` (``cfg.pool is None``) or ``EncoderUNetModel`` (``cfg.pool == 'attention'``):
    ``forward(x, timesteps, y=None)``; ``bottleneck`` holds the ``middle_block`` output of the last call."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.cfg = cfg
        mc, ted = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes, ted,
                                          _weight=torch.empty(cfg.num_classes, ted).uniform_(-1, 1))

        def res(cin: int, cout: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(cin, ted, cout, cfg.use_scale_shift_norm, **kw)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.heads(c), cfg.attention_order, cfg.attn_conv2d)

        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(res(ch, ch, down=True) if cfg.resblock_updown
                                                         else Downsample(ch, cfg.conv_resample)))
                chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch), attn(ch), res(ch))
        if cfg.pool is None:
            self.output_blocks = nn.ModuleList()
            for level in range(len(cfg.channel_mult) - 1, -1, -1):
                mult = cfg.channel_mult[level]
                for i in range(cfg.num_res_blocks + 1):
                    layers = [res(ch + chans.pop(), int(mc * mult))]
                    ch = int(mc * mult)
                    if ds in cfg.attention_ds:
                        layers.append(attn(ch))
                    if level and i == cfg.num_res_blocks:
                        layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                      else Upsample(ch, cfg.conv_resample))
                        ds //= 2
                    self.output_blocks.append(EmbedSequential(*layers))
            self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        elif cfg.pool == "attention":
            self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                     AttentionPool2d(cfg.image_size // ds, ch, cfg.num_head_channels,
                                                     cfg.out_channels))
        else:
            raise ValueError(f"classifier pool {cfg.pool!r} is not supported")
        self.bottleneck: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(x.dtype))
        if self.cfg.num_classes:
            if y is None:
                raise ValueError("class-conditional ADM model called without class labels")
            emb = emb + self.label_emb(y.long())
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        self.bottleneck = h
        if self.cfg.pool is not None:
            return self.out(h)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def infer_config(sd: dict[str, torch.Tensor], image_size: int | None, num_head_channels: int = 64) -> ADMConfig:
    """The ``ADMConfig`` of a guided-diffusion / consistency-models state dict, read from its key names and tensor
    shapes.  Only the attention head width is not recorded in the tensors (``num_head_channels``, 64 in every
    released model); ``image_size`` is needed for U-Nets (fully convolutional) and read from the pooling head of
    classifiers.  Raises ``ValueError`` (message names the missing key) for other layouts."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"missing tensor {key!r}")
        return tuple(sd[key].shape)

    mc = shape("time_embed.0.weight")[1]
    in_ch = shape("input_blocks.0.0.weight")[1]
    ch0 = shape("input_blocks.0.0.weight")[0]
    n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    classifier = "out.2.positional_embedding" in sd
    emb_out = shape("input_blocks.1.0.emb_layers.1.weight")[0]
    scale_shift = emb_out == 2 * shape("input_blocks.1.0.out_layers.3.weight")[0]
    conv2d = any(k.endswith(".qkv.weight") and sd[k].ndim == 4 for k in sd)
    spatial = None
    if classifier:
        tokens = shape("out.2.positional_embedding")[1] - 1  # one token per position plus the mean token
        spatial = math.isqrt(tokens)
        if spatial * spatial != tokens:
            raise ValueError(f"pooling head has {tokens} position tokens, not a square grid")
        out_ch = shape("out.2.c_proj.weight")[0]
    if not classifier:
        outs = [int(k.split(".")[1]) for k in sd if k.startswith("output_blocks.")]
        if not outs or "out.2.weight" not in sd:
            raise ValueError("neither a U-Net (output_blocks.*, out.2.weight) nor an attention-pool classifier "
                             "(out.2.positional_embedding)")
        n_out = 1 + max(outs)
        out_ch = shape("out.2.weight")[0]
        # the first output block holding an upsampler (a layer after the ResBlock that is not attention) closes
        # level L-1: its index is num_res_blocks
        layers: dict[int, set[int]] = {}
        for k in sd:
            if k.startswith("output_blocks."):
                parts = k.split(".")
                layers.setdefault(int(parts[1]), set()).add(int(parts[2]))
        nrb = None
        for j in range(n_out):
            if any(m > 0 and f"output_blocks.{j}.{m}.qkv.weight" not in sd for m in layers.get(j, ())):
                nrb = j
                break
        if nrb is None:  # one level only
            nrb = n_out - 1
        levels = n_out // (nrb + 1)
    else:
        # L levels hold 1 + L * nrb + (L - 1) = L (nrb + 1) input blocks
        levels, nrb = _classifier_levels(sd, n_in)
    updown = any(f"input_blocks.{i}.0.in_layers.2.weight" in sd for i in _down_indices(levels, nrb))
    mult, attn_ds, ds = [], [], 1
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        mult.append(shape(f"input_blocks.{first + nrb - 1}.0.out_layers.3.weight")[0] // mc)
        if f"input_blocks.{first}.1.qkv.weight" in sd:
            attn_ds.append(ds)
        ds *= 2
    if ch0 != mult[0] * mc:
        raise ValueError(f"input conv has {ch0} channels, expected {mult[0] * mc}")
    num_classes = shape("label_emb.weight")[0] if "label_emb.weight" in sd else None
    conv_resample = updown or any(f"input_blocks.{i}.0.op.weight" in sd for i in _down_indices(levels, nrb))
    if image_size is None:
        if spatial is None:
            raise ValueError("the image size is not recorded in a U-Net state dict")
        image_size = spatial * 2 ** (levels - 1)
    return ADMConfig(image_size=image_size, model_channels=mc, out_channels=out_ch, num_res_blocks=nrb,
                     attention_ds=tuple(attn_ds), channel_mult=tuple(mult), in_channels=in_ch,
                     num_classes=num_classes, num_head_channels=num_head_channels, use_scale_shift_norm=scale_shift,
                     resblock_updown=updown, conv_resample=conv_resample,
                     attention_order="qkv_first" if conv2d else "legacy", attn_conv2d=conv2d,
                     pool="attention" if classifier else None)


def _down_indices(levels: int, nrb: int) -> list[int]:
    return [(level + 1) * (nrb + 1) for level in range(levels - 1)]


def _classifier_levels(sd: dict[str, torch.Tensor], n_in: int) -> tuple[int, int]:
    """(levels, num_res_blocks) of an encoder: the layout with n_in = L (nrb + 1) input blocks whose resample blocks
    keep their channel count and whose first block of a level is a ResBlock."""
    for nrb in range(1, n_in):
        if n_in % (nrb + 1):
            continue
        levels = n_in // (nrb + 1)
        ok = True
        for i in _down_indices(levels, nrb):
            if f"input_blocks.{i}.1.qkv.weight" in sd or f"input_blocks.{i}.0.skip_connection.weight" in sd:
                ok = False
        if ok:
            return levels, nrb
    raise ValueError(f"cannot split {n_in} input blocks into levels")


# Built-in configurations of the released checkpoints (guided-diffusion README flags; consistency-models launch.sh).
RELEASED = {
    "256x256_diffusion": ADMConfig(256, 256, 6, 2, (8, 16, 32), (1, 1, 2, 2, 4, 4), num_classes=1000),
    "256x256_diffusion_uncond": ADMConfig(256, 256, 6, 2, (8, 16, 32), (1, 1, 2, 2, 4, 4)),
    "256x256_classifier": ADMConfig(256, 128, 1000, 2, (8, 16, 32), (1, 1, 2, 2, 4, 4), pool="attention"),
    "edm_bedroom256_ema": ADMConfig(256, 256, 3, 2, (8, 16, 32), (1, 1, 2, 2, 4, 4), use_scale_shift_norm=False,
                                    attention_order="qkv_first", attn_conv2d=True),
}


def released_config(name: str) -> ADMConfig | None:
    return RELEASED.get(name)


__all__ = ["ADMConfig", "ADMUNet", "RELEASED", "infer_config", "released_config", "timestep_embedding"]
