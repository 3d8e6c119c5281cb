"""``adasde bench refine``: does endpoint refinement (distill/refine.py, docs/ALGORITHMS.md section 3.9) win?

1. Controlled-error Gaussian mixture (``testbed:gmm-error``, docs/TESTBEDS.md section 1.4): for each NFE and
   distillation seed, AdaSDE (the per-NFE recipe, distill/recipes.py) and AMED-Solver (its defaults) are distilled at
   the same trajectory budget and then refined with ``refine(model, coeffs)`` defaults.  Each record is scored before
   and after by the exact Frechet distance of its samples to the target's true moments (testbeds.metrics); every
   repeat has its own block of sampling seeds, the same before and after and for the training-free baselines.  The
   held-out endpoint losses and the keep decision come from ``training["refine"]``.  No image-feature network chooses
   or scores anything.
2. The shipped built-in model files (``coefficients/data/builtin-fmnist-{adasde,amed}-nfe*.safetensors``): their
   refinement records as stored (no sampling).

Writes ``bench/results/<name>.md`` (bench/common.write_report).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import machine, md_table, today, write_report
from .distill import sample_solver

NFES = (3, 5, 7, 9)
METHODS = ("adasde", "amed")
BASELINES = ("ipndm", "dpmpp_3m", "unipc")
BUILTIN_NFES = (3, 5, 7, 9)
LABEL = {"adasde": "AdaSDE", "amed": "AMED-Solver", "ipndm": "iPNDM", "dpmpp_3m": "DPM-Solver++(3M)",
         "unipc": "UniPC"}
ROBUST_LIMIT = 2.0  # acceptance: no seed's FD above 2x the median seed's


@dataclass
class Cell:
    """One distillation seed of one method at one NFE, before and after refinement."""

    method: str
    nfe: int
    seed: int
    fd_before: float
    fd_after: float
    held_before: float
    held_after: float
    kept: bool
    distill_s: float
    refine_s: float
    grid_before: list[float] = field(default_factory=list)
    grid_after: list[float] = field(default_factory=list)


def worst_over_median(vals: list[float]) -> float:
    """Largest value / median value (the robustness ratio; acceptance: at most 2)."""
    return max(vals) / statistics.median(vals)


def _mean_sd(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.4f} ± {sd:.4f}"


def _robust(vals: list[float]) -> str:
    """worst / median, in bold when it breaks the acceptance limit."""
    r = worst_over_median(vals)
    return f"**{r:.2f}**" if r > ROBUST_LIMIT else f"{r:.2f}"


def _grid(vals: list[float]) -> str:
    return " / ".join(f"{v:.4g}" for v in vals)


def measure_gmm(model_spec: str, nfes: tuple[int, ...], repeats: int, trajectories: int, samples: int,
                refine_overrides: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Distil, refine and score every (method, NFE, seed) cell on the testbed (module docstring, part 1)."""
    from ..distill import distill
    from ..distill.amed import distill_amed
    from ..distill.recipes import recipe
    from ..distill.refine import refine
    from ..models import load_model
    from ..samplers.presets import initial_noise
    from ..testbeds.metrics import fd_floor, frechet_distance, reference_solve

    model = load_model(model_spec)
    target = model.target
    blocks = [list(range(10**6 + k * samples, 10**6 + (k + 1) * samples)) for k in range(repeats)]
    noise = [initial_noise(b, model.sample_shape, model.sigma_max) for b in blocks]
    cells: list[Cell] = []
    base: dict[tuple[str, int], list[float]] = {}
    recipes: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="adasde-bench-refine-") as tmp, \
            tqdm(total=len(nfes) * repeats * len(METHODS), desc="bench refine", unit="run",
                 disable=not progress) as bar:
        # every refinement here starts from the same converged endpoints (same model, teacher, seed, batch): cache
        # them once; a matching cache gives bit-identical results (tests/test_refine.py)
        endpoints = str(Path(tmp) / "endpoints.safetensors")
        for nfe in nfes:
            recipes[nfe] = {**recipe(nfe, getattr(model, "family", None)), "trajectories": trajectories}
            for rep in range(repeats):
                for meth in METHODS:
                    t0 = time.perf_counter()
                    if meth == "adasde":
                        start = distill(model, nfe=nfe, seed=rep, **recipes[nfe])
                    else:
                        start = distill_amed(model, nfe=nfe, seed=rep, trajectories=trajectories)
                    t1 = time.perf_counter()
                    out = refine(model, start, endpoints=endpoints, **refine_overrides)
                    t2 = time.perf_counter()
                    rec = out.training["refine"]
                    fd_b = frechet_distance(sample_solver(model, meth, nfe, noise[rep], blocks[rep], start), target)
                    fd_a = frechet_distance(sample_solver(model, meth, nfe, noise[rep], blocks[rep], out), target)
                    cells.append(Cell(meth, nfe, rep, fd_b, fd_a, float(rec["heldout_before"]),
                                      float(rec["heldout_after"]), bool(rec["kept"]), t1 - t0, t2 - t1,
                                      [float(v) for v in start.sigmas.tolist()],
                                      [float(v) for v in out.sigmas.tolist()]))
                    bar.update()
                for name in BASELINES:
                    x = sample_solver(model, name, nfe, noise[rep], blocks[rep])
                    base.setdefault((name, nfe), []).append(frechet_distance(x, target))
        floor = fd_floor(target, samples)
        ref_fd = [frechet_distance(reference_solve(model, x, n_steps=200), target) for x in noise]
    return {"cells": cells, "baselines": base, "floor": floor, "reference": ref_fd, "recipes": recipes}


def builtin_records(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The refinement record of each shipped built-in file (module docstring, part 2); ``status`` says
    ``refined`` / ``no refine record`` / ``missing`` / ``unreadable: ...``."""
    from .. import coefficients

    d = Path(folder) if folder else Path(coefficients.__file__).resolve().parent / "data"
    out = []
    for kind in METHODS:
        for nfe in BUILTIN_NFES:
            path = d / f"builtin-fmnist-{kind}-nfe{nfe}.safetensors"
            row: dict[str, Any] = {"file": path.name, "kind": kind, "nfe": nfe}
            if not path.exists():
                out.append({**row, "status": "missing"})
                continue
            try:
                c = coefficients.load(path)
            except Exception as exc:  # noqa: BLE001 - report the file, keep the others
                out.append({**row, "status": f"unreadable: {type(exc).__name__}"})
                continue
            rec = c.training.get("refine")
            row["grid_now"] = [float(v) for v in c.sigmas.tolist()]
            if not isinstance(rec, dict):
                out.append({**row, "status": "no refine record"})
                continue
            out.append({**row, "status": "refined", "before": float(rec["heldout_before"]),
                        "after": float(rec["heldout_after"]), "kept": bool(rec["kept"]),
                        "start": [float(v) for v in rec.get("start_sigmas", [])],
                        "seconds": rec.get("seconds"), "endpoint_seconds": rec.get("endpoint_seconds"),
                        "settings": {k: rec.get(k) for k in ("trajectories", "passes", "heldout", "batch", "lr",
                                                              "teacher")}})
    return out


def _gmm_section(g: dict[str, Any], nfes: tuple[int, ...], repeats: int, trajectories: int, samples: int,
                 refine_overrides: dict[str, Any]) -> list[str]:
    cells: list[Cell] = g["cells"]
    by = {(c.method, c.nfe): [x for x in cells if x.method == c.method and x.nfe == c.nfe] for c in cells}
    summary = []
    for meth in METHODS:
        for nfe in nfes:
            cs = by.get((meth, nfe), [])
            if not cs:
                continue
            b, a = [c.fd_before for c in cs], [c.fd_after for c in cs]
            summary.append([LABEL[meth], nfe, _mean_sd(b), _mean_sd(a),
                            f"{statistics.fmean(a) / statistics.fmean(b):.3f}",
                            " / ".join(f"{v:.4f}" for v in b), " / ".join(f"{v:.4f}" for v in a),
                            f"{sum(c.kept for c in cs)}/{len(cs)}", _robust(b), _robust(a)])
    detail = [[LABEL[c.method], c.nfe, c.seed, f"{c.fd_before:.4f}", f"{c.fd_after:.4f}",
               f"{c.fd_after / c.fd_before:.3f}", f"{c.held_before:.4g}", f"{c.held_after:.4g}",
               f"{c.held_after / c.held_before:.3f}", "yes" if c.kept else "no", f"{c.distill_s:.1f}",
               f"{c.refine_s:.1f}"] for c in sorted(cells, key=lambda c: (METHODS.index(c.method), c.nfe, c.seed))]
    brows = [[LABEL[name], *(_mean_sd(g["baselines"].get((name, k), [])) for k in nfes)] for name in BASELINES]
    ref_settings = ", ".join(f"{k} {v}" for k, v in sorted(refine_overrides.items())) or "all defaults"
    rec_rows = [[k, *(g["recipes"][k].get(n) for n in ("M", "scale_dir", "gamma_max", "lr", "batch"))]
                for k in nfes if k in g["recipes"]]
    lines = [
        "## 1. Controlled-error Gaussian mixture (testbed:gmm-error)", "",
        f"Exact Fréchet distance (lower is better) of {samples} samples to the target mixture's true moments. "
        f"Distillation seeds {' / '.join(map(str, range(repeats)))}; repeat k samples its own block of seeds "
        f"(10^6 + k·{samples} ...), the same block before and after refinement and for the baselines. Finite-sample "
        f"floor {g['floor']:.4f}. 200-step Heun reference solve of this (erroneous) denoiser's ODE from the same "
        f"noise blocks: {_mean_sd(g['reference'])} (the converged solution refinement is trained towards; a "
        "few-step solver can land below it when its own error happens to cancel part of the denoiser's).", "",
        f"Stage 1: AdaSDE with the per-NFE recipe (distill/recipes.py) and AMED-Solver with its defaults "
        f"(distill_amed: Heun teacher M = 1, lr 5e-3, batch 128, teacher forcing), both {trajectories} trajectories, "
        f"AFS. Stage 2: `refine(model, coeffs)` with {ref_settings} (endpoint trajectories from refine seed 0 for "
        "every distillation seed, so the repeats differ only in stage 1; the converged endpoints are computed once "
        "and reused). AdaSDE recipe rows used:", "",
        md_table(["NFE", "M", "scale_dir", "gamma_max", "lr", "batch"], rec_rows), "",
        "### FD before and after refinement", "",
        "after/before: ratio of the means. Worst/median: the largest per-seed FD over the median per-seed FD "
        f"(acceptance: at most {ROBUST_LIMIT:g}; bold when above). Kept: refinements whose held-out endpoint loss "
        "fell.", "",
        md_table(["Method", "NFE", "FD before (mean ± sd)", "FD after (mean ± sd)", "after/before",
                  "per seed before", "per seed after", "kept", "worst/median before", "worst/median after"],
                 summary), "",
        "### Per seed", "",
        "Held-out: the endpoint loss of training[\"refine\"] (squared endpoint error summed over dimensions, mean "
        "over the held-out trajectories) before and after; seconds: wall time of each stage on this busy machine.",
        "",
        md_table(["Method", "NFE", "seed", "FD before", "FD after", "FD after/before", "held-out before",
                  "held-out after", "held-out after/before", "kept", "distill s", "refine s"], detail), "",
        "### Training-free baselines on the same sampling seeds (paper grids, no AFS)", "",
        md_table(["Solver", *(f"NFE {k}" for k in nfes)], brows), "",
        "### Refined grids (seed 0)", "",
        md_table(["Method", "NFE", "grid before", "grid after", "kept"],
                 [[LABEL[c.method], c.nfe, _grid(c.grid_before), _grid(c.grid_after), "yes" if c.kept else "no"]
                  for c in cells if c.seed == 0]), "",
        "### Verdicts (measured)", "",
    ]
    lines += _verdicts(by, g, nfes)
    return lines


def _verdicts(by: dict[tuple[str, int], list[Cell]], g: dict[str, Any], nfes: tuple[int, ...]) -> list[str]:
    out = []
    for meth in METHODS:
        for nfe in nfes:
            cs = by.get((meth, nfe), [])
            if not cs:
                continue
            b = statistics.fmean(c.fd_before for c in cs)
            a = statistics.fmean(c.fd_after for c in cs)
            worse = [c.seed for c in cs if c.fd_after > c.fd_before]
            misled = [c.seed for c in cs if c.kept and c.fd_after > c.fd_before]
            line = (f"- {LABEL[meth]} NFE {nfe}: FD {b:.4f} → {a:.4f} ({100 * (a / b - 1):+.1f} %): refinement "
                    f"{'wins' if a < b else '**LOSES**'} on the mean")
            if worse:
                line += (f"; FD rose for seed(s) {', '.join(map(str, worse))}"
                         + (f" (kept anyway, the held-out endpoint loss fell: {', '.join(map(str, misled))})"
                            if misled else ""))
            best = min(BASELINES, key=lambda n: statistics.fmean(g["baselines"][(n, nfe)]))
            bv = statistics.fmean(g["baselines"][(best, nfe)])
            line += (f"; best baseline {LABEL[best]} {bv:.4f} → refined {LABEL[meth]} "
                     f"{'beats' if a < bv else 'does NOT beat'} it")
            ref = statistics.fmean(g["reference"])
            if b < ref < a:
                line += (f"; stage 1 was already below the converged solution's FD ({ref:.4f}) and refinement, "
                         "which fits the converged endpoints, moved it above")
            for when, vals in (("before", [c.fd_before for c in cs]), ("after", [c.fd_after for c in cs])):
                if len(vals) > 1 and worst_over_median(vals) > ROBUST_LIMIT:
                    line += f"; robustness FAILS {when} (worst/median {worst_over_median(vals):.2f})"
            out.append(line + ".")
    return out + [""]


def _builtin_section(rows: list[dict[str, Any]], folder: str | None) -> list[str]:
    table = []
    for r in rows:
        if r["status"] != "refined":
            table.append([r["file"], r["status"], "—", "—", "—", "—", _grid(r.get("grid_now", [])) or "—", "—", "—"])
            continue
        table.append([r["file"], "refined", f"{r['before']:.5g}", f"{r['after']:.5g}",
                      f"{r['after'] / r['before']:.3f}", "yes" if r["kept"] else "no", _grid(r["start"]),
                      _grid(r["grid_now"]), "" if r["seconds"] is None else f"{float(r['seconds']):.0f}"])
    where = "the shipped coefficient folder (coefficients/data)" if folder is None else f"`{folder}`"
    settings = sorted({", ".join(f"{k} {v}" for k, v in r["settings"].items()) for r in rows
                       if r["status"] == "refined"})
    lines = [
        "## 2. Built-in Fashion-MNIST model: the shipped files' refinement records", "",
        f"Read from {where}; nothing is sampled. Held-out: the endpoint loss recorded by `adasde distill` "
        "(training[\"refine\"]); grid before: the distilled grid refinement started from; grid after: the grid in "
        "the file (the same as before when the refinement was not kept). Seconds: the training part of refinement "
        "as recorded. A file without a record shows its own grid under \"grid before\".", "",
        md_table(["File", "status", "held-out before", "held-out after", "after/before", "kept", "grid before",
                  "grid after", "seconds"], table), "",
    ]
    if settings:
        lines += ["Refinement settings recorded: " + "; ".join(settings) + ".", ""]
    missing = [r["file"] for r in rows if r["status"] != "refined"]
    if missing:
        lines += [f"No refinement record in: {', '.join(missing)} (files written before refinement existed, or "
                  "distilled with --no-refine).", ""]
    lost = [r["file"] for r in rows if r["status"] == "refined" and not r["kept"]]
    if lost:
        lines += [f"Refinement not kept (held-out loss did not fall): {', '.join(lost)}.", ""]
    return lines


def run(model_spec: str = "testbed:gmm-error", nfes: tuple[int, ...] = NFES, repeats: int = 5,
        trajectories: int = 4000, samples: int = 2000, refine_overrides: dict[str, Any] | None = None,
        builtin_dir: str | None = None, threads: int = 1, out_dir: str | None = None, name: str = "refine",
        progress: bool = True, command: str = "adasde bench refine") -> str:
    """Run both parts and write ``bench/results/<name>.md``; returns the report text."""
    torch.set_num_threads(threads)
    overrides = dict(refine_overrides or {})
    t0 = time.perf_counter()
    g = measure_gmm(model_spec, nfes, repeats, trajectories, samples, overrides, progress)
    rows = builtin_records(builtin_dir)
    elapsed = time.perf_counter() - t0
    lines = [
        "# Endpoint refinement: does it win? (distill/refine.py)", "",
        f"{today()} — {machine()}. Total wall time {elapsed / 60:.1f} min. Command: `{command}`.", "",
        "Refinement learns the student's interior grid points jointly with its coefficients against converged Heun "
        "endpoints from the same noise and keeps the result only when a held-out endpoint loss falls "
        "(docs/ALGORITHMS.md section 3.9). Nothing here is chosen or scored by an image-feature network.", "",
    ]
    lines += _gmm_section(g, nfes, repeats, trajectories, samples, overrides)
    lines += _builtin_section(rows, builtin_dir)
    text = "\n".join(lines)
    path = write_report(name, text, out_dir)
    print(text)
    print(f"wrote {path}")
    return text
