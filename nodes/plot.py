"""Loss curve + coefficient chart as an IMAGE tensor ``[1, H, W, 3]`` in [0, 1] (matplotlib if installed, else PIL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

TABLES = ("r", "a", "c", "gamma", "w")


def _tables(coeffs: Any) -> dict[str, list[float]]:
    out = {}
    for k in TABLES:
        t = getattr(coeffs, k, None) if coeffs is not None else None
        if torch.is_tensor(t) and t.numel():
            out[k] = [float(v) for v in t.detach().float().reshape(t.shape[0], -1).mean(-1).cpu()]
    return out


def chart(losses: Sequence[float], coeffs: Any = None, title: str = "AdaSDE distillation",
          size: tuple[int, int] = (768, 384)) -> torch.Tensor:
    """Left: loss per iteration (log scale when positive); right: per-step coefficients (mean over K)."""
    try:
        return _chart_mpl(losses, coeffs, title, size)
    except ImportError:
        return _chart_pil(losses, coeffs, title, size)


def _chart_mpl(losses: Sequence[float], coeffs: Any, title: str, size: tuple[int, int]) -> torch.Tensor:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 96
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ys = [float(v) for v in losses]
    if ys:
        ax1.plot(range(1, len(ys) + 1), ys, color="#2a7ab0", marker="." if len(ys) < 50 else None)
        if min(ys) > 0:
            ax1.set_yscale("log")
    ax1.set_title("loss")
    ax1.set_xlabel("iteration")
    ax1.grid(alpha=0.3)
    for k, v in _tables(coeffs).items():
        ax2.plot(range(len(v)), v, marker="o", label=k)
    ax2.set_title("coefficients per step")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(rgba.copy())[None]


def _chart_pil(losses: Sequence[float], coeffs: Any, title: str, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 4), title, fill="black")

    def plot(series: Sequence[float], box: tuple[int, int, int, int], color: str) -> None:
        x0, y0, x1, y1 = box
        d.rectangle(box, outline="#888")
        if len(series) < 1:
            return
        lo, hi = min(series), max(series)
        hi = hi if hi > lo else lo + 1
        n = max(len(series) - 1, 1)
        pts = [(x0 + (x1 - x0) * i / n, y1 - (y1 - y0) * (v - lo) / (hi - lo)) for i, v in enumerate(series)]
        d.line(pts, fill=color, width=2) if len(pts) > 1 else d.point(pts, fill=color)

    plot([float(v) for v in losses], (20, 30, w // 2 - 10, h - 20), "#2a7ab0")
    colors = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]
    for (_, v), c in zip(_tables(coeffs).items(), colors):
        plot(v, (w // 2 + 10, 30, w - 20, h - 20), c)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]
