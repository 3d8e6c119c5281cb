"""The EDM networks (Karras et al. 2022, appendix F.2/F.3): DDPM++ / NCSN++ ``SongUNet`` and ADM ``DhariwalUNet``.

Our own implementation of the published architectures, with the parameter and buffer names of NVIDIA's released
pickles so their tensors load one-to-one (``model.enc.32x32_conv.weight``, ``model.dec.16x16_block3.qkv.bias``, ...):

* blocks are held in two ``ModuleDict``s, ``enc`` and ``dec``, keyed ``"{res}x{res}_{kind}"``; the forward pass
  walks them in insertion order, pushing every encoder output (except ``aux`` entries) as a skip and concatenating a
  skip whenever a decoder block expects more input channels than it receives;
* a ``UNetBlock`` is GroupNorm -> SiLU -> conv (with optional 2x resampling by the FIR filter ``resample_filter``),
  an embedding-dependent affine (additive for DDPM++/NCSN++, scale-and-shift for ADM), GroupNorm -> SiLU -> dropout
  -> conv, a skip path (1x1 conv when the shape changes) and optional multi-head self-attention, all scaled by
  ``skip_scale``;
* the noise embedding is sinusoidal (``PositionalEmbedding``, DDPM++/ADM) or random Fourier features
  (``FourierEmbedding``, NCSN++), followed by two linear layers; class labels (one-hot) enter through ``map_label``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _fir(taps: Sequence[float]) -> torch.Tensor:
    f = torch.tensor([float(t) for t in taps], dtype=torch.float32, device="cpu")  # CPU even under a meta build
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """A placeholder initialisation (the weights always come from a file); ``uniform_`` only, so that building on
    the meta device runs no tensor arithmetic."""
    bound = 1 / math.sqrt(max(fan_in, 1))
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class Linear(nn.Module):
    """Fully connected layer (``weight`` [out, in], optional ``bias``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _uniform(out_features, in_features, fan_in=in_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """``kernel`` x ``kernel`` convolution (``kernel=0``: resampling only) with optional 2x up/down resampling by the
    separable FIR filter ``resample_filter`` (registered as a buffer, as in the released files).  ``fused``: the
    resampling is merged into the convolution's padding (NCSN++ residual encoder path)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = in_channels * kernel * kernel
        self.weight = _uniform(out_channels, in_channels, kernel, kernel, fan_in=fan_in) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _fir(resample_filter) if (up or down) else None)

    def _resample(self, x: torch.Tensor, f: torch.Tensor, channels: int, pad: int) -> torch.Tensor:
        if self.up:
            return F.conv_transpose2d(x, (4 * f).expand(channels, 1, -1, -1), groups=channels, stride=2, padding=pad)
        return F.conv2d(x, f.expand(channels, 1, -1, -1), groups=channels, stride=2, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        wp = 0 if w is None else w.shape[-1] // 2
        fp = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and self.up:
            x = F.conv2d(self._resample(x, f, self.in_channels, wp + fp), w)
        elif self.fused_resample and w is not None and self.down:
            x = self._resample(F.conv2d(x, w, padding=wp + fp), f, self.out_channels, 0)
        else:
            if f is not None:
                x = self._resample(x, f, self.in_channels, fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with optional resampling and self-attention (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        rs = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, **rs)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            k = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, k, up=up, down=down, **rs)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        res = x
        h = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + p))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (res if self.skip is None else self.skip(res))) * self.skip_scale
        if self.num_heads:
            b, c, hh, ww = h.shape
            # channel layout of qkv: [head][channel][q|k|v]
            q, k, v = self.qkv(self.norm2(h)).reshape(b * self.num_heads, c // self.num_heads, 3, hh * ww).unbind(2)
            d = k.shape[1]
            w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(d)).softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", w, v)
            h = (self.proj(a.reshape(b, c, hh, ww)) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x f_i), sin(x f_i)], f_i = (1 / max_positions)^(i / (n/2 - endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        args = torch.outer(x, ((1.0 / self.max_positions) ** i).to(x.dtype))
        return torch.cat([args.cos(), args.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)] with the frozen buffer ``freqs``."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.empty(num_channels // 2).uniform_(-2 * scale, 2 * scale))  # from the file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([args.cos(), args.sin()], dim=1)


class _EDMUNet(nn.Module):
    """Shared forward helpers; ``bottleneck`` holds the lowest-resolution decoder input block output of the last
    call (the U-Net middle, used by AMED)."""

    enc: nn.ModuleDict
    dec: nn.ModuleDict

    def _encoder_blocks(self, r: int, count: int, cin: int, channels: int, attention: bool, blk: dict,
                        skips: list[int]) -> int:
        """Append one encoder level's ``count`` blocks, the same in both networks, recording each output width in
        ``skips``; returns the width out of the level."""
        for i in range(count):
            self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, channels, attention=attention, **blk)
            cin = channels
            skips.append(channels)
        return cin

    def _decoder_level(self, r: int, lowest: bool, count: int, cin: int, channels: int, attend: Sequence[int],
                       blk: dict, skips: list[int]) -> int:
        """Append one decoder level, laid out alike in both networks: at the lowest resolution two middle blocks (the
        first with attention), elsewhere one upsampling block; then ``count`` blocks, each taking the next skip
        connection from ``skips``, with attention in the blocks numbered in ``attend``. Returns the output width."""
        if lowest:
            self.dec[f"{r}x{r}_in0"] = UNetBlock(cin, cin, attention=True, **blk)
            self.dec[f"{r}x{r}_in1"] = UNetBlock(cin, cin, **blk)
        else:
            self.dec[f"{r}x{r}_up"] = UNetBlock(cin, cin, up=True, **blk)
        for i in range(count):
            self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin + skips.pop(), channels, attention=i in attend, **blk)
            cin = channels
        return cin

    def _labels(self, emb: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.map_label is None:
            return None
        if class_labels is None:
            class_labels = torch.zeros(emb.shape[0], self.map_label.in_features, device=emb.device)
        return class_labels.to(emb.dtype)


class SongUNet(_EDMUNet):
    """DDPM++ (``embedding_type='positional'``, standard encoder) / NCSN++ (``'fourier'``, residual encoder,
    [1, 3, 3, 1] filter) U-Net, EDM appendix F.2."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        super().__init__()
        if embedding_type not in ("positional", "fourier") or encoder_type not in ("standard", "skip", "residual") \
                or decoder_type not in ("standard", "skip"):
            raise ValueError(f"unsupported SongUNet options {embedding_type}/{encoder_type}/{decoder_type}")
        self.label_dropout = label_dropout
        emb_ch, noise_ch = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        blk = dict(emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                   resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise_ch, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        self.map_label = Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        skips: list[int] = []
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
                skips.append(cout)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **blk)
                skips.append(cout)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                               resample_filter=resample_filter, fused_resample=True)
                    caux = cout
            cout = self._encoder_blocks(r, num_blocks, cout, model_channels * mult, r in attn_resolutions, blk, skips)

        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            attend = (num_blocks,) if r in attn_resolutions else ()
            cout = self._decoder_level(r, level == last, num_blocks + 1, cout, model_channels * mult, attend, blk,
                                       skips)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                         resample_filter=resample_filter)
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(cout, out_channels, 3)
        self.bottleneck: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos] order for DDPM++/NCSN++
        labels = self._labels(emb, class_labels)
        if labels is not None:
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips: list[torch.Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out: torch.Tensor | None = None
        side = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                side = block(x)
            elif "aux_conv" in name:
                side = block(F.silu(side))
                out = side if out is None else side + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
                if name.endswith("_in1"):
                    self.bottleneck = x
        return out


class DhariwalUNet(_EDMUNet):
    """ADM U-Net as re-implemented in EDM (appendix F.3): scale-and-shift blocks, 64-channel attention heads."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        blk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        skips: list[int] = []
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **blk)
            skips.append(cout)
            cout = self._encoder_blocks(r, num_blocks, cout, model_channels * mult, r in attn_resolutions, blk, skips)

        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            attend = range(num_blocks + 1) if r in attn_resolutions else ()
            cout = self._decoder_level(r, level == last, num_blocks + 1, cout, model_channels * mult, attend, blk,
                                       skips)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)
        self.bottleneck: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        labels = self._labels(emb, class_labels)
        if labels is not None:
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in self.dec.items():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if name.endswith("_in1"):
                self.bottleneck = x
        return self.out_conv(F.silu(self.out_norm(x)))


NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
LAYERS = ("Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding")
