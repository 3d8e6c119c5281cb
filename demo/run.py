"""``adasde demo``: distillation, few-step sampling and scoring on a CPU in a few minutes.

1. load the built-in Fashion-MNIST diffusion model (``builtin:fmnist``);
2. distil AdaSDE coefficients at the headline NFE (``--quick`` reuses the shipped ones);
3. sample with AdaSDE, AMED, ipndm, dpmpp_3m, unipc and euler at equal NFE (same seeds, same initial noise);
4. score every run with FD-FMNIST (Frechet distance in the features of our Fashion-MNIST classifier against the
   test-set statistics; *not* FID and not comparable to published FIDs);
5. write ``report.html`` (offline) with sample grids, FD-FMNIST against NFE per solver and the learned coefficients,
   and print the table.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import AdasdeError
from . import report

DEMO_SOLVERS = ("adasde", "amed", "ipndm", "dpmpp_3m", "unipc", "euler")
SAME_NOISE_SEEDS = 6  # columns of the same-noise comparison
REFERENCE_NFE = 35  # the model's converged result (Heun), the reference row
LEARNED = ("adasde", "amed")


@dataclass
class DemoConfig:
    out: Path = Path("adasde-demo")
    quick: bool = False
    nfe: int = 5
    chart_nfes: Sequence[int] = (3, 5, 7, 9)
    samples: int = 1000  # images per (solver, headline NFE)
    chart_samples: int = 250  # images per (solver, other NFE)
    trajectories: int = 1600
    refine_trajectories: int = 640  # endpoint refinement of the grid (docs/ALGORITHMS.md section 3.9); 0 = off
    schedule: tuple[str, float] = ("polynomial", 7.0)  # as the shipped files; see bench/results/builtin.md
    batch: int = 250
    distill_batch: int = 32
    seed: int = 0
    solvers: Sequence[str] = DEMO_SOLVERS
    device: str = "cpu"
    progress: bool = True


@dataclass
class DemoResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    coefficients: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "amed NFE 3: no shipped coefficients"


class DemoError(AdasdeError, RuntimeError):
    """A demo setting that cannot run (bad numbers, ``--quick`` without shipped coefficients)."""


def check_config(cfg: DemoConfig) -> None:
    """Raise :class:`DemoError` naming the first bad setting."""
    from ..samplers import SAMPLERS

    if cfg.nfe < 1 or any(int(k) < 1 for k in cfg.chart_nfes):
        raise DemoError(f"NFEs must be >= 1, got --nfe {cfg.nfe} and --chart-nfes {list(cfg.chart_nfes)}")
    if cfg.samples < 2 or cfg.chart_samples < 2:
        raise DemoError(f"--samples ({cfg.samples}) and --chart-samples ({cfg.chart_samples}) must be >= 2 "
                        "(FD-FMNIST needs a covariance)")
    if cfg.refine_trajectories < 0:
        raise DemoError(f"--refine-trajectories must be >= 0 (0 = no refinement), got {cfg.refine_trajectories}")
    if cfg.trajectories < 1 or cfg.batch < 1 or cfg.distill_batch < 1:
        raise DemoError(f"trajectories ({cfg.trajectories}), batch ({cfg.batch}) and distill_batch "
                        f"({cfg.distill_batch}) must be >= 1")
    unknown = [n for n in cfg.solvers if n not in SAMPLERS]
    if unknown or not cfg.solvers:
        raise DemoError(f"unknown solvers {unknown or '(none given)'}; choose from {', '.join(sorted(SAMPLERS))}")


def _shipped(kind: str, nfe: int) -> Any:
    """The coefficient record the sampling policy picks for the built-in model at ``nfe``, or None."""
    from ..builtin.unet import FMNISTDenoiser
    from ..policy import ModelInfo, plan

    return plan(ModelInfo.of(FMNISTDenoiser), kind, nfe=nfe).coeffs


class FDScorer:
    """FD-FMNIST: classifier features of generated images against the shipped test-set statistics."""

    def __init__(self, device: str = "cpu") -> None:
        from ..evaluation import fd_fmnist_reference, get_feature_net

        self.net = get_feature_net("fmnist", device=device)
        self.ref = fd_fmnist_reference("test")
        self.device = device

    def stats(self, images: torch.Tensor) -> Any:
        """Feature mean and covariance (``evaluation.RunningStats``) of images in [0, 1]."""
        from ..evaluation import RunningStats

        stats = RunningStats(self.net.dim)
        for chunk in images.split(500):
            stats.update(self.net(chunk.to(self.device)))
        return stats

    def __call__(self, images: torch.Tensor) -> float:
        from ..evaluation import frechet_distance

        stats = self.stats(images)
        res = frechet_distance(stats.mu, stats.sigma, self.ref.mu, self.ref.sigma)
        return float(getattr(res, "value", res))


def _generate(model: Any, name: str, nfe: int, seeds: Sequence[int], coeffs: Any, batch: int,
              bar: tqdm | None) -> torch.Tensor:
    """Images in [0, 1] of solver ``name`` at ``nfe`` calls for the given seeds, through the sampling policy and the
    generation loop (per-seed noise, batch-independent); ``coeffs``: a record for the learned solvers."""
    from ..generate import generate
    from ..policy import plan

    p = plan(model, name, nfe=nfe, coefficients=coeffs if coeffs is not None else "untrained")
    out = []
    for s, imgs in generate(model, p, seeds, batch=batch, progress=False):
        out.append(imgs.float() / 255)
        if bar is not None:
            bar.update(len(s))
    return torch.cat(out)


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run every phase and write the report folder; returns the measured rows.  Raises :class:`DemoError` for a bad
    setting or ``--quick`` without shipped AdaSDE coefficients at the headline NFE (before any work)."""
    from ..models import load_model

    check_config(cfg)
    nfes = sorted(set(int(k) for k in cfg.chart_nfes) | {cfg.nfe})
    res = DemoResult()

    # -- coefficients: shipped files for every NFE; the headline AdaSDE set is distilled here unless --quick
    coeffs: dict[tuple[str, int], Any] = {}
    for kind in LEARNED:
        if kind not in cfg.solvers:
            continue
        for k in nfes:
            c = _shipped(kind, k)
            if c is not None:
                coeffs[(kind, k)] = c
    if cfg.quick and "adasde" in cfg.solvers and ("adasde", cfg.nfe) not in coeffs:
        raise DemoError(f"--quick needs shipped AdaSDE coefficients for the built-in model at NFE {cfg.nfe} (none in "
                        f"the folders of ${_env_var()} or the package's coefficients/data/); run without --quick to "
                        "distil them")

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_model("builtin:fmnist", device=cfg.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scorer = FDScorer(cfg.device)
    res.timings["load"] = time.perf_counter() - t0

    if not cfg.quick and "adasde" in cfg.solvers:
        t = time.perf_counter()
        coeffs[("adasde", cfg.nfe)] = _distil(model, cfg, out)
        res.coefficients = out / f"adasde-builtin-fmnist-nfe{cfg.nfe}.safetensors"
        res.timings["distill"] = time.perf_counter() - t

    # -- sample and score
    t = time.perf_counter()
    plan = []
    for name in cfg.solvers:
        for k in nfes:
            if name in LEARNED and (name, k) not in coeffs:
                res.skipped.append(f"{name} NFE {k}: no shipped coefficients")
                continue
            plan.append((name, k, cfg.samples if k == cfg.nfe else cfg.chart_samples))
    total = sum(n for _, _, n in plan)
    grids: dict[str, Path] = {}
    same: dict[str, torch.Tensor] = {}
    first = cfg.seed * 1_000_000
    with tqdm(total=total, desc="sampling + FD-FMNIST", unit="img", disable=not cfg.progress) as bar:
        for name, k, n in plan:
            seeds = list(range(first, first + n))
            ts = time.perf_counter()
            imgs = _generate(model, name, k, seeds, coeffs.get((name, k)), cfg.batch, bar)
            dt = time.perf_counter() - ts
            fd = scorer(imgs)
            row = {"solver": name, "nfe": k, "fd_fmnist": fd, "n": n, "trained": name in LEARNED,
                   "ms_per_image": 1000 * dt / n}
            if k == cfg.nfe:
                grids[name] = report.save_grid(imgs[:64], out / f"grid-{name}-nfe{k}.png")
                same[name] = imgs[:SAME_NOISE_SEEDS]
                row["chart"] = _chart_point(scorer, imgs, cfg.chart_samples)
            res.rows.append(row)
    res.timings["sample"] = time.perf_counter() - t
    same_html = None
    if same:
        seeds = list(range(first, first + min(SAME_NOISE_SEEDS, cfg.samples)))
        ref = _generate(model, "heun", REFERENCE_NFE, seeds, None, cfg.batch, None)
        notes = {n: ("distilled in this run" if (n, cfg.nfe) == ("adasde", cfg.nfe) and not cfg.quick else
                     "shipped coefficients" if n in LEARNED else "training-free") for n in same}
        same_html = report.same_noise_rows(same, ref, out, seeds=seeds, notes=notes,
                                           reference_label=f"converged model (Heun, {REFERENCE_NFE} NFE)",
                                           crop=(8, 8, 12, 12))
    res.report = _write_report(cfg, res, coeffs, grids, same_noise=same_html)
    results = {"nfe": cfg.nfe, "chart_nfes": nfes, "samples": cfg.samples, "chart_samples": cfg.chart_samples,
               "quick": cfg.quick, "seed": cfg.seed, "rows": res.rows, "timings": res.timings,
               "skipped": res.skipped, "coefficients": res.coefficients.name if res.coefficients else None}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, allow_nan=True))
    tmp.replace(out / "results.json")
    return res


def _chart_point(scorer: FDScorer, imgs: torch.Tensor, n: int) -> dict[str, float]:
    """The headline run scored on the chart's sample size: FD-FMNIST of the first ``n`` images, and the spread
    (standard deviation) over the disjoint seed blocks of ``n`` images the run holds."""
    n = min(n, imgs.shape[0])
    blocks = [scorer(imgs[i: i + n]) for i in range(0, imgs.shape[0] - n + 1, n)]
    err = float(torch.tensor(blocks).std()) if len(blocks) > 1 else 0.0
    return {"n": n, "fd_fmnist": blocks[0], "fd_err": err, "blocks": len(blocks)}


def _env_var() -> str:
    from ..coefficients.lookup import ENV_VAR

    return ENV_VAR


def _distil(model: Any, cfg: DemoConfig, out: Path) -> Any:
    from ..coefficients import save
    from ..distill import distill
    from ..distill.recipes import recipe
    from ..samplers.presets import grid_for_nfe

    n, afs = grid_for_nfe("adasde", cfg.nfe)
    bar = tqdm(total=cfg.trajectories, desc=f"distilling AdaSDE (NFE {cfg.nfe})", unit="traj",
               disable=not cfg.progress)

    def progress(info: Any) -> None:
        done = info.get("trajectories") if isinstance(info, dict) else getattr(info, "trajectories", None)
        loss = info.get("loss") if isinstance(info, dict) else getattr(info, "loss", None)
        if done is not None:
            bar.update(max(0, int(done) - bar.n))
        if loss is not None:
            bar.set_postfix(loss=f"{float(loss):.4g}")

    settings = {**recipe(cfg.nfe, model.family), "batch": cfg.distill_batch, "trajectories": cfg.trajectories}
    coeffs = distill(model, shape=tuple(model.sample_shape), sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                     num_steps=n, afs=afs, schedule=cfg.schedule[0], rho=cfg.schedule[1], seed=cfg.seed,
                     device=cfg.device, progress=progress, **settings)  # the model's recipe, the demo's budget
    bar.close()
    if cfg.refine_trajectories > 0:
        coeffs = _refine(model, coeffs, cfg)
    path = out / f"adasde-builtin-fmnist-nfe{cfg.nfe}.safetensors"
    save(coeffs, path)
    return coeffs


def _refine(model: Any, coeffs: Any, cfg: DemoConfig) -> Any:
    """The grid refinement stage at the demo's budget (a fifth of the trajectories held out)."""
    from ..distill.refine import refine

    bars: dict[str, Any] = {}

    def progress(info: dict[str, Any]) -> None:
        phase = info["phase"]
        if phase not in bars:
            for b in bars.values():
                b.close()
            total = info.get("total", info.get("iterations"))
            desc = "converged endpoints" if phase == "endpoints" else f"refining the grid (NFE {cfg.nfe})"
            bars[phase] = tqdm(total=total, desc=desc, unit="batch" if phase == "endpoints" else "it",
                               disable=not cfg.progress)
        bars[phase].n = info.get("done", info.get("iteration", 0))
        bars[phase].refresh()

    try:
        return refine(model, coeffs, trajectories=cfg.refine_trajectories,
                      heldout=max(cfg.distill_batch, cfg.refine_trajectories // 5), batch=cfg.distill_batch,
                      seed=cfg.seed, device=cfg.device, progress=progress)
    finally:
        for b in bars.values():
            b.close()


def _write_report(cfg: DemoConfig, res: DemoResult, coeffs: dict, grids: dict[str, Path],
                  same_noise: str | None = None) -> Path:
    """Write ``report.html`` (+ the two SVG charts) from the measured rows.

    Rows may carry ``fd_err`` (spread over seed blocks: drawn as an error bar) and ``chart`` = ``{"n", "fd_fmnist"
    [, "fd_err"]}`` (the same solver and NFE scored on the chart's sample size), so that every chart point has one
    sample size; a point measured on another number of images is drawn hollow and the caption says so.
    ``same_noise`` is the HTML of :func:`report.same_noise_rows`, shown when given.
    """
    out = Path(cfg.out)
    head = [r for r in res.rows if r["nfe"] == cfg.nfe]
    head.sort(key=_fd_key)
    learned_at = {k for k in coeffs}
    distilled_here = {("adasde", cfg.nfe)} if (not cfg.quick and ("adasde", cfg.nfe) in learned_at) else set()

    def source(r: dict[str, Any]) -> str:
        if not r["trained"]:
            return "training-free"
        return "distilled in this run" if (r["solver"], r["nfe"]) in distilled_here else "shipped file"

    table = report.html_table(
        ["solver", "NFE", "FD-FMNIST (lower is better)", "images", "ms / image (CPU)", "coefficients"],
        [[r["solver"], r["nfe"], r["fd_fmnist"], r["n"], r["ms_per_image"], source(r)] for r in head], best_col=2)
    # one series per solver in the order of cfg.solvers, so every solver keeps its colour (adasde first: red)
    chart_n = cfg.chart_samples
    series: dict[str, list[tuple]] = {}
    hollow: dict[str, set[float]] = {}
    other_n: set[int] = set()
    for name in cfg.solvers:
        pts = []
        for r in sorted((r for r in res.rows if r["solver"] == name), key=lambda r: r["nfe"]):
            pt, alt = r, r.get("chart")
            if r["n"] != chart_n and isinstance(alt, dict) and int(alt.get("n", -1)) == chart_n:
                pt = alt
            if int(pt["n"]) != chart_n:
                hollow.setdefault(name, set()).add(r["nfe"])
                other_n.add(int(r["n"]))
            pts.append((r["nfe"], pt["fd_fmnist"], pt.get("fd_err")))
        if pts:
            series[name] = pts
    subtitle = f"{chart_n} images per point"
    if other_n:
        subtitle += f" (hollow markers: {', '.join(str(n) for n in sorted(other_n))} images)"
    anchors = report.read_anchors()
    chart = report.svg_line_chart(series, "FD-FMNIST against NFE", "NFE (network calls per image)",
                                  "FD-FMNIST (log scale)", log_y=True, highlight="adasde", subtitle=subtitle,
                                  refs=anchors, hollow=hollow)
    (out / "fd_vs_nfe.svg").write_text(chart)
    c = coeffs.get(("adasde", cfg.nfe))
    coef_html = "<p>No AdaSDE coefficients at this NFE.</p>"
    if c is not None:
        tables = {k: [float(v) for v in getattr(c, k)[:, 0].tolist()] for k in ("r", "a", "c")}
        tables["gamma x 100"] = [100 * float(v) for v in c.gamma[:, 0].tolist()]
        coef_svg = report.coefficient_chart(tables, f"Learned AdaSDE coefficients, NFE {cfg.nfe}")
        (out / "coefficients.svg").write_text(coef_svg)
        coef_html = report.inline_svg(coef_svg)
    figs = "".join(_figure(n, p, cfg.nfe) for n, p in grids.items())
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items())
    src = ("AdaSDE coefficients were distilled in this run" if not cfg.quick
           else "AdaSDE coefficients: shipped file (--quick)")
    amed_run = any(r["solver"] == "amed" for r in res.rows)
    amed = ("AMED-Solver uses the shipped coefficients" if any(k[0] == "amed" for k in coeffs)
            else "AMED-Solver was not run: no shipped AMED coefficients for this model")
    skipped = (f'<p class="note">Not run (no coefficients): {html.escape("; ".join(res.skipped))}.</p>'
               if res.skipped else "")
    learned_names = [n for n in ("adasde", "amed") if n in series]
    per_point = []
    for n in learned_names:
        here = sorted(k for (s, k) in distilled_here if s == n)
        shipped = sorted(k for (s, k) in learned_at if s == n and (s, k) not in distilled_here)
        bits = ([f"NFE {', '.join(map(str, here))} distilled in this run"] if here else []) + \
            ([f"NFE {', '.join(map(str, shipped))} from the shipped files"] if shipped else [])
        per_point.append(f"{n}: {'; '.join(bits)}")
    anchor_note = ("Dashed lines: absolute anchors from <code>bench/results/builtin.md</code> (measured on other "
                   "sample sizes; FD-FMNIST shrinks with more images)." if anchors else "")
    err_note = ("Error bars: spread over seed blocks." if any(len(p) > 2 and p[2] for v in series.values() for p in v)
                else "")
    against = "AdaSDE, AMED-Solver and training-free solvers" if amed_run else "AdaSDE against training-free solvers"
    same_html = (f"<h2>Same starting noise</h2>\n{same_noise}" if same_noise else "")
    body = f"""
<h1>adasde demo: {against} at {cfg.nfe} network calls</h1>
<p>Built-in Fashion-MNIST diffusion model (EDM-preconditioned U-Net trained by this project), same seeds and initial
noise for every solver. Quality is FD-FMNIST: the Frechet distance between generated images and the Fashion-MNIST
test set in the feature space of our Fashion-MNIST classifier. It is <b>not FID</b> and not comparable to published
numbers. {src}; {amed}.</p>
<h2>Results at NFE {cfg.nfe}</h2>
<div class="table-wrap">{table}</div>
{skipped}
<h2>FD-FMNIST against NFE</h2>
<div id="chart">{report.inline_svg(chart)}</div>
<p class="note">Each point: {chart_n} images{f" (hollow: {', '.join(map(str, sorted(other_n)))} images)" if other_n
                                             else ""}. Coefficients of the learned solvers per point:
{html.escape("; ".join(per_point)) or "none"}. {anchor_note} {err_note}</p>
{same_html}
<h2>Learned AdaSDE coefficients</h2>
<div id="coefficients">{coef_html}</div>
<h2>Samples at NFE {cfg.nfe} (first {min(64, cfg.samples)} seeds)</h2>
<div class="grids">{figs}</div>
<p class="note">Timings on this machine: {timing}. The headline rows use {cfg.samples} images per solver.</p>
"""
    return report.write_html(out / "report.html", "adasde demo", body)


def _figure(name: str, path: Path, nfe: int) -> str:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return (f'<figure><img class="grid" src="{html.escape(path.name)}" alt="{html.escape(name)} samples" width="{w}" '
            f'height="{h}"><figcaption>{html.escape(name)} (NFE {nfe})</figcaption></figure>')


def _fd_key(r: dict[str, Any]) -> float:
    return r["fd_fmnist"] if math.isfinite(r["fd_fmnist"]) else math.inf


def format_table(rows: list[dict[str, Any]], nfe: int) -> str:
    """The headline rows (NFE ``nfe``) as a plain-text table, best FD-FMNIST first."""
    head = sorted((r for r in rows if r["nfe"] == nfe), key=_fd_key)
    lines = [f"{'solver':<10} {'NFE':>4} {'FD-FMNIST':>10} {'images':>7} {'ms/img':>8}"]
    for r in head:
        fd = r["fd_fmnist"]
        lines.append(f"{r['solver']:<10} {r['nfe']:>4} {fd if math.isfinite(fd) else float('nan'):>10.3f} "
                     f"{r['n']:>7} {r['ms_per_image']:>8.2f}")
    return "\n".join(lines)
