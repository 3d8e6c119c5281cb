"""``adasde bench builtin``: FD-FMNIST of the built-in Fashion-MNIST model, per solver and NFE.

* A high-NFE reference (Heun on the polynomial rho-7 grid, >= 35 NFE) against the test-set statistics.
* The solver table at NFE 3, 5, 7, 9: AdaSDE and AMED with the shipped (distilled) coefficients and the training-free
  solvers with the paper schedules (samplers/presets.py), each over 3 disjoint seed ranges (mean and spread);
  ``--samples`` images per run at the headline NFE, ``--samples-other`` at the others.
* The train-vs-test FD-FMNIST floor (real images against real images).

Runs are spread over ``--workers`` processes (one CPU thread each).  FD-FMNIST is the Frechet distance in the
penultimate features of our Fashion-MNIST classifier; it is not FID.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import machine, md_table, today, write_report

TABLE_SOLVERS = ("adasde", "amed", "ipndm", "dpmpp_3m", "unipc", "euler")
NFES = (3, 5, 7, 9)
_W: dict[str, Any] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)
    from ..demo.run import FDScorer
    from ..models import load_model

    _W["model"] = load_model("builtin:fmnist").eval()
    _W["scorer"] = FDScorer()


def _job(name: str, nfe: int, seed0: int, n: int, batch: int) -> tuple[str, int, int, float, float]:
    """FD-FMNIST of ``n`` images of solver ``name`` at ``nfe`` calls from seeds ``seed0 ..``; (..., fd, seconds)."""
    from ..demo.run import _generate, _shipped

    model, scorer = _W["model"], _W["scorer"]
    seeds = list(range(seed0, seed0 + n))
    t = time.perf_counter()
    coeffs = _shipped(name, nfe) if name in ("adasde", "amed") else None
    imgs = _generate(model, name, nfe, seeds, coeffs, batch, None)  # heun: polynomial rho 7, nfe/2 + 1 points
    return name, nfe, seed0, scorer(imgs), time.perf_counter() - t


def run(samples: int = 5000, samples_other: int = 2000, seeds: int = 3, nfes: tuple[int, ...] = NFES,
        solvers: tuple[str, ...] = TABLE_SOLVERS, headline: int = 5, ref_nfe: int = 36, ref_samples: int = 5000,
        batch: int = 500, workers: int = 2, out_dir: str | None = None, progress: bool = True) -> str:
    """Run the benchmark (module docstring) and write its report (``common.write_report``: an existing
    ``bench/results/builtin.md`` is kept unless ``out_dir`` is given); returns the report text."""
    from ..demo.run import _shipped

    missing = [f"{s} NFE {k}" for s in solvers if s in ("adasde", "amed") for k in nfes
               if _shipped(s, k) is None]
    jobs = [("heun", ref_nfe, 0, ref_samples)]
    for name in solvers:
        for k in nfes:
            if f"{name} NFE {k}" in missing:
                continue
            n = samples if k == headline else samples_other
            jobs += [(name, k, s * n, n) for s in range(seeds)]
    cost = {j: j[3] * j[1] for j in jobs}
    jobs.sort(key=lambda j: -cost[j])  # longest first keeps the pool busy
    rows: dict[tuple[str, int], list[float]] = {}
    secs: dict[tuple[str, int], float] = {}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool, \
            tqdm(total=sum(cost.values()), desc="bench builtin", unit="img-NFE", disable=not progress) as bar:
        futs = {pool.submit(_job, *j, batch): j for j in jobs}
        for f in as_completed(futs):
            name, k, _, fd, dt = f.result()
            rows.setdefault((name, k), []).append(fd)
            secs[(name, k)] = secs.get((name, k), 0.0) + dt
            bar.update(cost[futs[f]])
    elapsed = time.perf_counter() - t0
    ref_fd = rows.pop(("heun", ref_nfe))[0]
    floor = _floor()

    def cell(v: list[float]) -> str:
        if not v:
            return "-"
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{statistics.fmean(v):.2f} ± {sd:.2f}"

    table_rows = [[name] + [cell(rows.get((name, k), [])) for k in nfes] for name in solvers]
    best = {}
    for k in nfes:
        cands = [(statistics.fmean(v), n) for (n, kk), v in rows.items() if kk == k]
        if cands:
            best[k] = min(cands)
    verdict = []
    for k in nfes:
        if ("adasde", k) not in rows:
            continue
        a = statistics.fmean(rows[("adasde", k)])
        for other in ("ipndm", "dpmpp_3m", "unipc", "amed", "euler"):
            if (other, k) in rows:
                o = statistics.fmean(rows[(other, k)])
                verdict.append(f"- NFE {k}: AdaSDE {a:.2f} vs {other} {o:.2f}: "
                               f"{'AdaSDE better' if a < o else '**AdaSDE NOT better**'}")
    def per_image(name: str, k: int) -> str:
        n = (samples if k == headline else samples_other) * seeds
        return f"{1000 * secs[(name, k)] / n:.2f}"

    speed = [[name, k, per_image(name, k)] for name in solvers for k in nfes if (name, k) in secs]
    text = f"""# Built-in Fashion-MNIST model: FD-FMNIST per solver and NFE

Machine: {machine()}; {workers} worker processes, 1 thread each. Date: {today()}. Wall time: {elapsed / 60:.1f} min.
Command: `adasde bench builtin --samples {samples} --samples-other {samples_other} --seeds {seeds} --workers {workers}`

FD-FMNIST = Frechet distance in the 128-d penultimate features of our Fashion-MNIST classifier, against the
statistics of the 10,000 test images (`builtin/stats/fmnist_test.npz`). It is **not FID** and not comparable to
published numbers. {seeds} disjoint seed ranges per cell (mean ± standard deviation): {samples} images per run at
NFE {headline}, {samples_other} at the other NFEs (FD has a finite-sample bias that shrinks with n, so compare within a
column, not across columns). Initial noise per seed, the same seeds for every solver. Grids: the distilled grid of
the shipped coefficient files (`coefficients/data/`, polynomial rho 7) for AdaSDE and AMED; the paper schedules
(samplers/presets.py) for the others: polynomial rho 7 for euler and ipndm, logSNR for dpmpp_3m and unipc. AFS for the
two-call-per-step solvers at odd NFE.

- Floor (train images vs test images, 60,000 / 10,000): **{floor:.3f}**
- High-NFE reference (Heun, {ref_nfe} NFE, polynomial rho 7, {ref_samples} images): **{ref_fd:.2f}**

{md_table(["solver"] + [f"NFE {k}" for k in nfes], table_rows)}

Best per NFE: {", ".join(f"NFE {k}: {n} ({v:.2f})" for k, (v, n) in best.items())}

{chr(10).join(verdict)}
{("Missing coefficient files (not run): " + ", ".join(missing)) if missing else ""}

CPU time per image (ms, one thread, including FD features):

{md_table(["solver", "NFE", "ms / image"], speed)}
"""
    path = write_report("builtin", text, out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return text


def _floor() -> float:
    from ..evaluation import fd_fmnist_reference, frechet_distance

    tr, te = fd_fmnist_reference("train"), fd_fmnist_reference("test")
    res = frechet_distance(tr.mu, tr.sigma, te.mu, te.sigma)
    return float(getattr(res, "value", res))
