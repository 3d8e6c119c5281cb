"""Offline report of ``adasde demo``: sample grids (PNG), inline SVG charts, one self-contained HTML page.

No network assets: every image is a file beside ``report.html`` and every chart is inline SVG, so the page renders in
a browser with no connection.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Collection, Mapping, Sequence
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


Point = tuple  # (x, y) or (x, y, err): err draws an error bar y - err .. y + err


def svg_line_chart(
    series: Mapping[str, Sequence[Point]],
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    width: int = 640,
    height: int = 380,
    highlight: str | None = None,
    subtitle: str | None = None,
    refs: Sequence[tuple[str, float]] = (),
    hollow: Mapping[str, Collection[float]] | None = None,
) -> str:
    """A small dependency-free SVG line chart: one polyline with markers per series, axes, ticks and a legend.

    Points are ``(x, y)`` or ``(x, y, err)``; ``err`` (optional per point) draws a vertical error bar ``y +- err``
    (clipped at the bottom of a log axis).  Points whose y is None, NaN or infinite (or <= 0 with ``log_y``) are not
    drawn; a series keeps its polyline through the remaining points (none when fewer than two remain) and its legend
    entry.  Colours follow the order of ``series`` (:data:`PALETTE`); ``highlight`` names a series drawn with a
    thicker line.  ``subtitle`` is a second line under the title (e.g. the sample size).  ``refs`` are labelled
    horizontal reference lines (anchors such as a data floor), included in the y range.  ``hollow[name]`` lists x
    values whose markers are drawn hollow (points measured differently, explained by the caller).

    The SVG has a ``viewBox``, so with CSS ``max-width: 100%; height: auto`` it scales to narrow screens; the legend
    sits under the plot in as many columns as fit, so nothing is cut off.
    """

    def ok(y: float | None) -> bool:
        return y is not None and math.isfinite(y) and (y > 0 or not log_y)

    def err_of(p: Sequence) -> float:
        e = p[2] if len(p) > 2 else None
        return float(e) if e is not None and math.isfinite(e) and e > 0 else 0.0

    hollow = hollow or {}
    pts = [(p[0], p[1]) for s in series.values() for p in s if ok(p[1]) and math.isfinite(p[0])]
    if not pts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" class="chart">'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{html.escape(title)}: no finite values'
                "</text></svg>")
    # legend under the plot: columns of equal width, as many as fit
    names = list(series)
    col_w = 44 + 7 * max(len(n) for n in names)
    ncols = max(1, min(len(names), (width - 40) // col_w))
    legend_h = 18 * math.ceil(len(names) / ncols) + 6
    ml, mr, mt, mb = 64, 20, (52 if subtitle else 36), 48 + legend_h
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    hi_err = [p[1] + err_of(p) for s in series.values() for p in s if ok(p[1]) and math.isfinite(p[0])]
    lo_err = [p[1] - err_of(p) for s in series.values() for p in s if ok(p[1]) and math.isfinite(p[0])]
    ref_vals = [v for _, v in refs if ok(v)]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    f = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    lo_all = [v for v in lo_err + ys + ref_vals if ok(v)]
    y0, y1 = f(min(lo_all)), f(max(hi_err + ys + ref_vals))
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    pad_y = 0.06 * (y1 - y0)
    y0, y1 = y0 - pad_y, y1 + pad_y
    if not log_y:
        y0 = min(y0, 0.0) if min(lo_all) >= 0 and y0 < 0.5 * y1 else y0
    bottom = height - mb
    sx = lambda v: ml + (v - x0) / (x1 - x0) * (width - ml - mr)  # noqa: E731
    sy = lambda v: mt + (1 - (f(v) - y0) / (y1 - y0)) * (bottom - mt)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" class="chart" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}'
           "</text>"]
    if subtitle:
        out.append(f'<text x="{width / 2}" y="37" text-anchor="middle" class="subtitle">{html.escape(subtitle)}</text>')
    out += [f'<line x1="{ml}" y1="{bottom}" x2="{width - mr}" y2="{bottom}" stroke="black"/>',
            f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{bottom}" stroke="black"/>']
    for xv in sorted(set(xs)):
        out.append(f'<line x1="{sx(xv):.1f}" y1="{bottom}" x2="{sx(xv):.1f}" y2="{bottom + 4}" stroke="black"/>')
        out.append(f'<text x="{sx(xv):.1f}" y="{bottom + 17}" text-anchor="middle">{xv:g}</text>')
    for yv in (_log_ticks(10**y0, 10**y1) if log_y else _nice_ticks(y0, y1)):
        py = sy(yv)
        out.append(f'<line x1="{ml - 4}" y1="{py:.1f}" x2="{width - mr}" y2="{py:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ml - 6}" y="{py + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2}" y="{bottom + 34}" text-anchor="middle">{html.escape(xlabel)}'
               "</text>")
    out.append(f'<text x="16" y="{(mt + bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(mt + bottom) / 2})">{html.escape(ylabel)}</text>')
    for label, v in refs:
        if not ok(v):
            continue
        py = sy(v)
        out.append(f'<line class="ref" data-name="{html.escape(label)}" x1="{ml}" y1="{py:.1f}" x2="{width - mr}" '
                   f'y2="{py:.1f}" stroke="#555" stroke-dasharray="6 4"/>')
        out.append(f'<text class="ref-label" x="{ml + 6}" y="{py - 4:.1f}" fill="#333" font-size="11">'
                   f"{html.escape(label)}</text>")
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [p for p in s if ok(p[1]) and math.isfinite(p[0])]
        wide = 3 if name == highlight else 1.6
        if len(good) > 1:
            poly = " ".join(f"{sx(p[0]):.1f},{sy(p[1]):.1f}" for p in good)
            out.append(f'<polyline class="series" data-name="{html.escape(name)}" points="{poly}" fill="none" '
                       f'stroke="{color}" stroke-width="{wide}"/>')
        for p in good:
            x, y, e = p[0], p[1], err_of(p)
            if e > 0:
                lo = y - e if ok(y - e) else 10**y0
                top, bot = sy(y + e), sy(lo)
                out.append(f'<path class="errorbar" data-name="{html.escape(name)}" d="M{sx(x):.1f},{top:.1f} '
                           f'V{bot:.1f} M{sx(x) - 4:.1f},{top:.1f} h8 M{sx(x) - 4:.1f},{bot:.1f} h8" '
                           f'stroke="{color}" fill="none"/>')
            if x in hollow.get(name, ()):
                out.append(f'<circle class="hollow" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="white" '
                           f'stroke="{color}" stroke-width="2.5"/>')
            else:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}"/>')
        r, q = divmod(i, ncols)
        lx, ly = ml + q * col_w, bottom + 52 + 18 * r
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{color}" stroke-width="{wide}"/>')
        out.append(f'<text x="{lx + 26}" y="{ly + 4}">{html.escape(name)}</text>')
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
    number is bold and has class ``best``.  Wrap it in ``<div class="table-wrap">`` to scroll on narrow screens."""
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
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 12px; color: #222;
  line-height: 1.4; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
.table-wrap {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} td.best {{ background: #e8f4e8; }} .grids {{ display: flex; flex-wrap: wrap; gap: 16px; }}
svg.chart {{ max-width: 100%; height: auto; display: block; }}
figure {{ margin: 0; max-width: 100%; }} figcaption {{ font-size: 13px; text-align: center; }}
.note {{ color: #555; font-size: 13px; }}
img.grid, img.sn {{ image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; height: auto; }}
.same-noise {{ overflow-x: auto; max-width: 100%; }}
.sn-row {{ display: flex; flex-wrap: wrap; align-items: center; gap: 6px 12px; margin: 6px 0; }}
.sn-label {{ width: 11em; font-size: 13px; }} .sn-label small {{ color: #555; }}
.sn-row.reference .sn-label {{ font-weight: bold; }}
@media (max-width: 600px) {{
  body {{ margin: 12px auto; }} h1 {{ font-size: 19px; }}
  td, th {{ padding: 3px 5px; font-size: 13px; }}
  .sn-label {{ width: 100%; }}
}}
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


def _crop_zoom(images: torch.Tensor, crop: tuple[int, int, int, int], zoom: int) -> torch.Tensor:
    """``images[..., y:y+h, x:x+w]`` for ``crop = (y, x, h, w)``, enlarged ``zoom`` times (nearest)."""
    y, x, h, w = crop
    if min(h, w) < 1 or y < 0 or x < 0 or y + h > images.shape[-2] or x + w > images.shape[-1]:
        raise ValueError(f"same_noise_rows: crop {crop} (y, x, h, w) is outside the {tuple(images.shape[-2:])} images")
    part = images[..., y: y + h, x: x + w]
    return part.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)


def same_noise_rows(
    rows: Mapping[str, torch.Tensor],
    reference: torch.Tensor | None,
    out_dir: str | os.PathLike,
    seeds: Sequence[int] | None = None,
    reference_label: str = "reference",
    notes: Mapping[str, str] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    zoom: int = 4,
    scale: int = 3,
    prefix: str = "same-noise",
) -> str:
    """HTML of a "same starting noise" comparison: one row per solver, the images of the same seeds side by side
    (column j of every row starts from the noise of ``seeds[j]``), and a reference row (e.g. the model's converged
    many-step result for those seeds, or real images) first.

    ``rows`` maps a row label to images ``[N, C, H, W]`` in [0, 1]; ``reference`` has the same shape (or None).  Each
    row is written as ``<out_dir>/<prefix>-<k>.png`` (one strip, ``scale`` x enlarged).  With a reference, every row
    states its mean absolute pixel difference to it (0-255 scale).  ``crop = (y, x, h, w)`` adds, per row, a strip of
    that region enlarged ``zoom`` times, for differences too small to see at full view.  ``notes`` adds a short line
    under a row's label (e.g. the coefficient source).
    """
    if not rows:
        raise ValueError("same_noise_rows: no rows")
    shapes = {tuple(v.shape) for v in rows.values()}
    if reference is not None:
        shapes.add(tuple(reference.shape))
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"same_noise_rows: every row needs the same [N, C, H, W] shape, got {sorted(shapes)}")
    n = next(iter(shapes))[0]
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"same_noise_rows: {len(seeds)} seeds for {n} images per row")
    out_dir = Path(out_dir)
    notes = notes or {}
    entries = ([(reference_label, reference, True)] if reference is not None else []) + \
        [(k, v, False) for k, v in rows.items()]
    parts = ['<div class="same-noise">']
    if seeds is not None:
        parts.append(f'<p class="note">Seeds {html.escape(", ".join(str(s) for s in seeds))}, left to right; '
                     "every row starts from the same noise per column.</p>")
    for k, (label, imgs, is_ref) in enumerate(entries):
        imgs = imgs.detach().float().cpu().clamp(0, 1)
        path = save_grid(imgs, out_dir / f"{prefix}-{k}.png", nrow=n, scale=scale)
        with Image.open(path) as im:
            w, h = im.size
        sub = notes.get(label, "")
        if reference is not None and not is_ref:
            diff = float((imgs - reference.detach().float().cpu().clamp(0, 1)).abs().mean()) * 255
            sub = (sub + "; " if sub else "") + f"mean |difference| to {reference_label}: {diff:.1f} / 255"
        label_html = html.escape(label) + (f"<br><small>{html.escape(sub)}</small>" if sub else "")
        cls = "sn-row reference" if is_ref else "sn-row"
        cells = [f'<div class="sn-label">{label_html}</div>',
                 f'<img class="sn" src="{html.escape(path.name)}" alt="{html.escape(label)}: same-noise samples" '
                 f'width="{w}" height="{h}">']
        if crop is not None:
            zpath = save_grid(_crop_zoom(imgs, crop, zoom), out_dir / f"{prefix}-{k}-zoom.png", nrow=n, scale=1)
            with Image.open(zpath) as im:
                zw, zh = im.size
            cells.append(f'<img class="sn zoom" src="{html.escape(zpath.name)}" alt="{html.escape(label)}: zoomed '
                         f'crop" width="{zw}" height="{zh}">')
        parts.append(f'<div class="{cls}" data-name="{html.escape(label)}">' + "".join(cells) + "</div>")
    if crop is not None:
        y, x, h, w = crop
        parts.append(f'<p class="note">Zoomed: rows {y}-{y + h - 1}, columns {x}-{x + w - 1} of each image, '
                     f"{zoom} x.</p>")
    parts.append("</div>")
    return "\n".join(parts)


def read_anchors(path: str | os.PathLike | None = None) -> list[tuple[str, float]]:
    """Absolute FD-FMNIST anchors from the committed benchmark ``bench/results/builtin.md``: the data floor (train
    images vs test images) and the converged model (high-NFE Heun).  Missing file or lines give fewer anchors."""
    import re

    p = Path(path) if path else Path(__file__).resolve().parents[1] / "bench" / "results" / "builtin.md"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    m = re.search(r"Floor \(train images vs test images[^)]*\):\s*\*\*([0-9.]+)\*\*", text)
    if m:
        out.append((f"data floor {m.group(1)} (train vs test images)", float(m.group(1))))
    m = re.search(r"High-NFE reference \(Heun, (\d+) NFE[^)]*?(?:, ([0-9,]+) images)?\):\s*\*\*([0-9.]+)\*\*", text)
    if m:
        n = f", {m.group(2)} images" if m.group(2) else ""
        out.append((f"converged model {m.group(3)} (Heun {m.group(1)} NFE{n})", float(m.group(3))))
    return out
