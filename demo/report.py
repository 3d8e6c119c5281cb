"""Offline report of ``adasde demo``: sample grids (PNG), inline SVG charts, one self-contained HTML page.

No network assets: every image is a file beside ``report.html`` and every chart is inline SVG, so the page renders in
a browser with no connection.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, scale: int = 2) -> Path:
    """Write images (N x C x H x W floats in [0, 1], C = 1 or 3) as one PNG grid with 2-px white gutters, atomically.

    The grid has ``min(nrow, N)`` columns; each cell is ``scale`` x ``scale`` pixels per image pixel (nearest)."""
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_grid: expected images [N>0, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if nrow < 1 or scale < 1:
        raise ValueError(f"save_grid: nrow={nrow} and scale={scale} must be >= 1")
    x = images.detach().float().nan_to_num(0.0).clamp(0, 1).cpu()
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    pad = 2
    canvas = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    arr = (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = arr[i]
    img = Image.fromarray(canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        img.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def svg_line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    width: int = 640,
    height: int = 380,
    highlight: str | None = None,
) -> str:
    """A small dependency-free SVG line chart: one polyline with markers per series, axes, ticks and a legend.

    Points whose y is None, NaN or infinite (or <= 0 with ``log_y``) are not drawn; a series keeps its polyline
    through the remaining points (none when fewer than two remain) and its legend entry.  Colours follow the order of
    ``series`` (:data:`PALETTE`); ``highlight`` names a series drawn with a thicker line.
    """

    def ok(y: float | None) -> bool:
        return y is not None and math.isfinite(y) and (y > 0 or not log_y)

    pts = [(x, y) for s in series.values() for x, y in s if ok(y) and math.isfinite(x)]
    if not pts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{html.escape(title)}: no finite values'
                "</text></svg>")
    ml, mr, mt, mb = 64, 150, 36, 48
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    f = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    y0, y1 = f(min(ys)), f(max(ys))
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    pad_y = 0.06 * (y1 - y0)
    y0, y1 = y0 - pad_y, y1 + pad_y
    if not log_y:
        y0 = min(y0, 0.0) if min(ys) >= 0 and y0 < 0.5 * y1 else y0
    sx = lambda v: ml + (v - x0) / (x1 - x0) * (width - ml - mr)  # noqa: E731
    sy = lambda v: mt + (1 - (f(v) - y0) / (y1 - y0)) * (height - mt - mb)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}'
           "</text>",
           f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="black"/>']
    for xv in sorted(set(xs)):
        out.append(f'<line x1="{sx(xv):.1f}" y1="{height - mb}" x2="{sx(xv):.1f}" y2="{height - mb + 4}" '
                   'stroke="black"/>')
        out.append(f'<text x="{sx(xv):.1f}" y="{height - mb + 17}" text-anchor="middle">{xv:g}</text>')
    for yv in (_log_ticks(10**y0, 10**y1) if log_y else _nice_ticks(y0, y1)):
        py = sy(yv)
        out.append(f'<line x1="{ml - 4}" y1="{py:.1f}" x2="{width - mr}" y2="{py:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ml - 6}" y="{py + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2}" y="{height - 10}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{(mt + height - mb) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(mt + height - mb) / 2})">{html.escape(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [(x, y) for x, y in s if ok(y) and math.isfinite(x)]
        wide = 3 if name == highlight else 1.6
        if len(good) > 1:
            poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            out.append(f'<polyline class="series" data-name="{html.escape(name)}" points="{poly}" fill="none" '
                       f'stroke="{color}" stroke-width="{wide}"/>')
        for x, y in good:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}"/>')
        ly = mt + 8 + 18 * i
        out.append(f'<line x1="{width - mr + 12}" y1="{ly}" x2="{width - mr + 32}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="{wide}"/>')
        out.append(f'<text x="{width - mr + 38}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (multiples of 1, 2, 2.5 or 5 times a power of ten) inside [lo, hi] (lo < hi)."""
    mag = 10 ** math.floor(math.log10((hi - lo) / max(n, 1)))

    def count(step: float) -> int:
        return math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1

    step = min((m * mag for m in (1, 2, 2.5, 5, 10)), key=lambda st: (abs(count(st) - (n + 1)), -st))
    first = math.ceil(lo / step - 1e-9)
    ticks = [float(f"{k * step:.12g}") for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(t) < 1e-12 * step else t for t in ticks]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Round values for a log axis over [lo, hi] (0 < lo < hi): 1, 2, 5 x 10^k when at most 8 of them fit, else
    powers of ten (every k-th decade beyond 8); nice linear ticks when fewer than three of 1, 2, 5 x 10^k fit."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [t for t in (m * 10.0**k for k in decades for m in (1, 2, 5)) if lo <= t <= hi]
    if len(ticks) < 3:
        return [t for t in _nice_ticks(lo, hi) if t > 0]
    if len(ticks) > 8:
        ticks = [t for t in (10.0**k for k in decades) if lo <= t <= hi]
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    return ticks


def coefficient_chart(tables: Mapping[str, Sequence[float]], title: str) -> str:
    """Learned per-step values (r, a, c, gamma ...) against the step index, one series each, linear axes."""
    series = {k: [(float(i), float(v)) for i, v in enumerate(vals)] for k, vals in tables.items()}
    return svg_line_chart(series, title, "student step n", "value", width=520, height=300)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]], best_col: int | None = None) -> str:
    """An HTML table (cells escaped, floats with 3 decimals); every cell of ``best_col`` holding its smallest finite
    number is bold and has class ``best``."""
    best = None
    if best_col is not None:
        vals = [r[best_col] for r in rows if _number(r[best_col])]
        best = min(vals) if vals else None
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for j, v in enumerate(r):
            txt = html.escape(f"{v:.3f}" if isinstance(v, float) else str(v))
            if best is not None and j == best_col and _number(v) and v == best:
                cells.append(f'<td class="best"><b>{txt}</b></td>')
            else:
                cells.append(f"<td>{txt}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def inline_svg(svg: str) -> str:
    """An SVG document for embedding in HTML: without the namespace declaration (the HTML parser supplies it), so the
    page holds no ``http://`` string at all."""
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} td.best {{ background: #e8f4e8; }} .grids {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 13px; text-align: center; }}
.note {{ color: #555; font-size: 13px; }} img.grid {{ image-rendering: pixelated; border: 1px solid #ccc; }}
</style></head><body>
{body}
</body></html>
"""


def write_html(path: str | os.PathLike, title: str, body: str) -> Path:
    """Write ``body`` into the page template atomically (temporary file + rename; on failure the previous file is
    left as it was and the temporary file is removed)."""
    path = Path(path)
    page = PAGE.format(title=html.escape(title), body=body)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
