"""``adasde bench builtin``: FD-FMNIST of the built-in Fashion-MNIST model, per solver and NFE (issue 4).

* A high-NFE reference (Heun on the polynomial rho-7 grid, >= 35 NFE) against the test-set statistics.
* The solver table at NFE 3, 5, 7, 9: AdaSDE and AMED with the shipped (distilled) coefficients, untrained AdaSDE
  (= DPM-Solver-2) and the training-free solvers with the paper schedules (samplers/presets.py), each over 3 disjoint
  seed ranges of ``--samples`` images (mean and spread).
* The train-vs-test FD-FMNIST floor (real images against real images).

FD-FMNIST is the Frechet distance in the penultimate features of our Fashion-MNIST classifier; it is not FID.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import machine, md_table, today, write_report

TABLE_SOLVERS = ("adasde", "amed", "dpm_2", "ipndm", "dpmpp_3m", "unipc", "euler")
NFES = (3, 5, 7, 9)


def run(samples: int = 5000, seeds: int = 3, nfes: tuple[int, ...] = NFES, solvers: tuple[str, ...] = TABLE_SOLVERS,
        ref_nfe: int = 35, batch: int = 500, out_dir: str | None = None) -> str:
    from ..demo.run import FDScorer, _generate, _shipped
    from ..loaders import load_model

    model = load_model("builtin:fmnist").eval()
    scorer = FDScorer()
    rows: dict[tuple[str, int], list[float]] = {}
    missing: list[str] = []
    plan = []
    for name in solvers:
        for k in nfes:
            c = None
            if name in ("adasde", "amed"):
                c = _shipped(name, k)
                if c is None:
                    missing.append(f"{name} NFE {k}")
                    continue
            plan.append((name, k, c))
    t0 = time.perf_counter()
    total = (len(plan) * seeds + 1) * samples
    with tqdm(total=total, desc="bench builtin", unit="img") as bar:
        # high-NFE reference: heun, N = ref_nfe // 2 + 1 points, no AFS -> 2 (N - 1) calls
        n_ref = ref_nfe // 2 + 1
        ref_nfe_used = 2 * (n_ref - 1)
        ref_imgs = _generate_heun(model, n_ref, list(range(samples)), batch, bar)
        ref_fd = scorer(ref_imgs)
        for name, k, c in plan:
            for s in range(seeds):
                seed_list = list(range(s * samples, (s + 1) * samples))
                imgs = _generate(model, name, k, seed_list, c, batch, bar)
                rows.setdefault((name, k), []).append(scorer(imgs))
    elapsed = time.perf_counter() - t0
    floor = _floor()

    def cell(v: list[float]) -> str:
        if not v:
            return "-"
        m = statistics.fmean(v)
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{m:.3f} ± {sd:.3f}"

    table_rows = [[name] + [cell(rows.get((name, k), [])) for k in nfes] for name in solvers]
    best = {k: min((statistics.fmean(v), n) for (n, kk), v in rows.items() if kk == k) for k in nfes
            if any(kk == k for (_, kk) in rows)}
    verdict = []
    if ("adasde", 5) in rows:
        a5 = statistics.fmean(rows[("adasde", 5)])
        for other in ("ipndm", "dpmpp_3m", "amed", "unipc"):
            if (other, 5) in rows:
                o5 = statistics.fmean(rows[(other, 5)])
                verdict.append(f"- NFE 5: AdaSDE {a5:.3f} vs {other} {o5:.3f}: "
                               f"{'AdaSDE better' if a5 < o5 else 'AdaSDE NOT better'}")
    text = f"""# Built-in Fashion-MNIST model: FD-FMNIST per solver and NFE

Machine: {machine()}. Date: {today()}. Wall time: {elapsed / 60:.1f} min.

FD-FMNIST = Frechet distance in the 128-d penultimate features of our Fashion-MNIST classifier, against the
statistics of the 10,000 test images (`builtin/stats/fmnist_test.npz`). It is **not FID** and not comparable to
published numbers. {samples} images per run, {seeds} disjoint seed ranges (mean ± standard deviation); initial noise
per seed, same seeds for every solver. Schedules as in the papers (samplers/presets.py): polynomial rho 7 for euler,
dpm_2, ipndm; logSNR for dpmpp_3m and unipc; the distilled grid (time-uniform rho 1) for AdaSDE and AMED; AFS for the
two-call-per-step solvers at odd NFE. `dpm_2` on the paper's polynomial grid is the untrained baseline.

- Floor (train images vs test images, 10,000 each): **{floor:.3f}**
- High-NFE reference (Heun, {ref_nfe_used} NFE, polynomial rho 7, {samples} images): **{ref_fd:.3f}**

{md_table(["solver"] + [f"NFE {k}" for k in nfes], table_rows)}

Best per NFE: {", ".join(f"NFE {k}: {n} ({v:.3f})" for k, (v, n) in best.items())}

{chr(10).join(verdict)}
{("Missing coefficient files (not run): " + ", ".join(missing)) if missing else ""}
"""
    write_report("builtin", text, out_dir)
    return text


def _generate_heun(model: Any, n: int, seeds: list[int], batch: int, bar: tqdm) -> torch.Tensor:
    from ..samplers import SAMPLERS, get_sigmas
    from ..samplers.presets import initial_noise

    sigmas = get_sigmas("polynomial", n, model.sigma_min, model.sigma_max, rho=7.0)
    out = []
    for i in range(0, len(seeds), batch):
        s = seeds[i: i + batch]
        x = initial_noise(s, model.sample_shape, model.sigma_max)
        with torch.no_grad():
            out.append(model.decode(SAMPLERS["heun"](model, x, sigmas, disable=True)).float())
        bar.update(len(s))
    return torch.cat(out)


def _floor() -> float:
    from ..evaluation import fd_fmnist_reference, frechet_distance

    tr, te = fd_fmnist_reference("train"), fd_fmnist_reference("test")
    res = frechet_distance(tr.mu, tr.sigma, te.mu, te.sigma)
    return float(getattr(res, "value", res))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("builtin", help="FD-FMNIST of the built-in model per solver and NFE -> "
                              "bench/results/builtin.md")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    p.add_argument("--solvers", nargs="+", default=list(TABLE_SOLVERS))
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out-dir", default=None, help="write builtin.md here instead of bench/results")

    def _run(a: argparse.Namespace) -> int:
        print(run(a.samples, a.seeds, tuple(a.nfes), tuple(a.solvers), batch=a.batch, out_dir=a.out_dir))
        return 0

    p.set_defaults(func=_run)
