"""``adasde bench solvers``: every sampler of ``samplers.SAMPLERS`` at NFE 3..10 on the exact Gaussian-mixture testbed
and on its controlled-error variant, with exact metrics and their finite-n floors (docs/TESTBEDS.md sections 1.2, 1.4);
writes ``bench/results/solvers.md``.

* Testbeds: ``testbed:fmnist-gmm`` (K = 10 class-conditional PPCA mixture fitted to Fashion-MNIST, rank 32, d = 784)
  and ``testbed:fmnist-gmm-error`` (the controlled-error denoiser of that mixture, testbeds.gmm.controlled_error).
  ``--quick`` uses the synthetic ``testbed:gmm`` / ``testbed:gmm-error`` (d = 64) with few samples: a smoke run.
* Grids and schedules as in the papers (samplers/presets.py, docs/ALGORITHMS.md sections 2 and 7.1): 1-call-per-step
  solvers N = NFE + 1 points, no AFS; 2-call solvers AFS at odd NFE; polynomial rho 7 (euler, heun, dpm_2, ipndm,
  amed_plugin), logSNR (dpmpp_2m, dpmpp_3m, unipc), time-uniform rho 1 (adasde, amed).  Learned solvers run
  *untrained* here (AdaSDE/AMED = DPM-Solver-2 midpoint; AMED-Plugin = iPNDM with geometric midpoints); distilled
  coefficients are benchmarked by ``adasde bench distill``.
* The same exact start x_T ~ p(x; sigma_max) for every solver (no initialisation error, docs/TESTBEDS.md section 1.1);
  sampling stops at sigma_min (no final denoising), as in the papers.  Every sampler's NFE is counted by a wrapper and
  checked against ``samplers.nfe``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import machine, md_table, today, write_report

NFES = tuple(range(3, 11))
CROSSING_NFES = (20, 50)
TRAINING_FREE = ("euler", "heun", "dpm_2", "ipndm", "dpmpp_2m", "dpmpp_3m", "unipc")
METRICS = (("fd", "FD to exact moments"), ("rmse", "RMSE to the reference ODE solve (same x_T)"),
           ("tv", "mode-weight TV"), ("sw2", "sliced W2"), ("mmd2", "unbiased MMD^2 (x 1e3)"))


class CountingModel(torch.nn.Module):
    """Wraps a denoiser and counts its calls (one batched call = 1 NFE)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner, self.calls = model, 0
        for k in ("sigma_min", "sigma_max", "sample_shape", "flow", "prediction", "family"):
            setattr(self, k, getattr(model, k))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.calls += 1
        return self.inner(x, sigma, **extra)


def _solve(name: str, model: CountingModel, xT: torch.Tensor, target_nfe: int) -> tuple[torch.Tensor, int, str]:
    from ..samplers import SAMPLERS, nfe
    from ..samplers.presets import PAPER_SCHEDULES, preset

    sigmas, options = preset(name, target_nfe, model.sigma_min, model.sigma_max)
    expected = nfe(name, sigmas, **options)
    model.calls = 0
    with torch.no_grad():
        x = SAMPLERS[name](model, xT.clone(), sigmas, extra_args={"seed": 0}, disable=True, **options)
    if model.calls != expected:
        raise RuntimeError(f"{name}: {model.calls} model calls but samplers.nfe says {expected} (grid {len(sigmas)})")
    kind, rho = PAPER_SCHEDULES.get(name, ("polynomial", 7.0))
    sched = kind if kind != "polynomial" else f"{kind} rho {rho:g}"
    setting = f"{sched}, N = {len(sigmas)}, AFS {options.get('afs', False)}"
    return x, model.calls, setting


def _bench_testbed(spec: str, n: int, nfes: tuple[int, ...], solvers: tuple[str, ...], ref_steps: int,
                   bar: tqdm, seed: int) -> dict[str, Any]:
    from ..models import load_model
    from ..testbeds import fd_floor, mmd2_unbiased, reference_solve
    from ..testbeds.metrics import ExactReference, mode_tv, sliced_w2

    model = load_model(spec)
    target = model.target
    exact = ExactReference(target, n, seed + 1)  # moments + exact samples for SW2 / MMD (never the x_T's data)
    xT = model.sample_prior(n, seed).to(torch.float32)
    counter = CountingModel(model)
    t0 = time.perf_counter()
    ref = reference_solve(counter, xT, ref_steps)
    ref_calls = counter.calls
    ref_half = reference_solve(model, xT, ref_steps // 2)
    ref_time = time.perf_counter() - t0
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    # floors: the same metrics for independent exact samples of the same size
    extra = [target.sample(n, seed + 2 + i) for i in range(3)]
    mmds = [mmd2_unbiased(e, exact.samples, exact.bandwidth, exact.yy_term) for e in extra]
    floors = {
        "fd": fd_floor(target, n, moments=exact.moments, seed=seed + 2),
        "sw2": statistics.fmean(sliced_w2(e, exact.samples) for e in extra),
        "tv": statistics.fmean(mode_tv(e, target) for e in extra),
        "mmd2": statistics.fmean(mmds),
        "mmd2_sd": statistics.pstdev(mmds),
    }
    ref_metrics = exact.evaluate(flat(ref))
    ref_metrics["rmse_half"] = math.sqrt(float((flat(ref) - flat(ref_half)).double().pow(2).mean()))
    rows: dict[tuple[str, int], dict[str, float]] = {}
    settings: dict[tuple[str, int], str] = {}
    t1 = time.perf_counter()
    for name in solvers:
        for k in nfes:
            try:
                x, calls, setting = _solve(name, counter, xT, k)
            except (ValueError, NotImplementedError) as exc:  # a solver that cannot run at this NFE
                settings[(name, k)] = f"not run: {exc}"
                bar.update(1)
                continue
            m = exact.evaluate(flat(x), reference_solution=flat(ref))
            if not all(math.isfinite(v) for v in m.values()):
                m = {key: float("nan") for key in m}
            rows[(name, k)] = m
            settings[(name, k)] = setting
            bar.update(1)
    # where Heun overtakes Euler (paper tables: near NFE 10 on CIFAR-10; docs/TESTBEDS.md section 1.3: later on a GMM)
    crossing = {}
    for name in ("euler", "heun"):
        for k in CROSSING_NFES:
            if name in solvers:
                x, _, _ = _solve(name, counter, xT, k)
                crossing[(name, k)] = exact.evaluate(flat(x), reference_solution=flat(ref))
    return {"spec": spec, "model": model, "floors": floors, "crossing": crossing,
            "ref": ref_metrics, "rows": rows, "settings": settings,
            "ref_nfe": ref_calls, "ref_time": ref_time, "time": time.perf_counter() - t1,
            "bandwidth": exact.bandwidth}


def _fmt(v: float | None, key: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "mmd2":
        v = 1e3 * v
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"


def _patterns(res: dict[str, Any], nfes: tuple[int, ...]) -> list[str]:
    """The known pattern of the paper tables (docs/ALGORITHMS.md sections 7.1, 7.4), checked on FD; reported anyway."""
    rows, out = res["rows"], []
    fd = lambda s, k: rows.get((s, k), {}).get("fd", float("nan"))  # noqa: E731
    low = [k for k in nfes if k <= 5 and ("heun", k) in rows and ("euler", k) in rows]
    if low:
        worse = [k for k in low if fd("heun", k) > fd("euler", k)]
        out.append(f"- Heun worse than Euler at low NFE (polynomial rho 7): at NFE {worse} of {low} "
                   f"({'pattern reproduced' if len(worse) == len(low) else 'pattern only partly reproduced'}); "
                   + ", ".join(f"NFE {k}: heun {fd('heun', k):.1f} vs euler {fd('euler', k):.1f}" for k in low))
    high = [k for k in nfes if k >= 9 and ("heun", k) in rows and ("euler", k) in rows]
    if high:
        out.append("- Heun vs Euler at high NFE: " + ", ".join(
            f"NFE {k}: heun {fd('heun', k):.1f} vs euler {fd('euler', k):.1f}" for k in high))
    cross = res.get("crossing", {})
    for k in CROSSING_NFES:
        if ("euler", k) in cross and ("heun", k) in cross:
            e, h = cross[("euler", k)], cross[("heun", k)]
            out.append(f"- NFE {k} (extra runs): heun FD {h['fd']:.2f} / RMSE {h['rmse']:.4f} vs "
                       f"euler FD {e['fd']:.2f} / RMSE {e['rmse']:.4f}")
    for k in (3, 5, 7):
        cands = [(fd(s, k), s) for s in TRAINING_FREE if (s, k) in rows and math.isfinite(fd(s, k))]
        if k in nfes and cands:
            best = min(cands)
            tag = "ipndm is the strongest training-free solver" if best[1] == "ipndm" else \
                f"the strongest training-free solver is {best[1]}, not ipndm (ipndm {fd('ipndm', k):.2f})"
            out.append(f"- NFE {k}: {tag} (FD {best[0]:.2f}); ranking: "
                       + " < ".join(s for _, s in sorted(cands)))
    return out


def run(quick: bool = False, n: int | None = None, nfes: tuple[int, ...] = NFES, solvers: tuple[str, ...] | None = None,
        ref_steps: int | None = None, specs: tuple[str, ...] | None = None, seed: int = 0,
        out_dir: str | None = None, threads: int | None = 1) -> str:
    """Run the benchmark (module docstring) and write ``solvers.md``; returns the report text."""
    from ..samplers import SAMPLERS
    from ..testbeds import denoiser_error

    if threads:
        torch.set_num_threads(threads)
    if quick:
        n, nfes, ref_steps = n or 200, nfes if nfes != NFES else (3, 5, 6), ref_steps or 50
        specs = specs or ("testbed:gmm", "testbed:gmm-error")
    n, ref_steps = n or 2000, ref_steps or 200
    specs = specs or ("testbed:fmnist-gmm", "testbed:fmnist-gmm-error")
    solvers = tuple(solvers or SAMPLERS)
    unknown = [s for s in solvers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; choose from {', '.join(SAMPLERS)}")
    t0 = time.perf_counter()
    results = []
    with tqdm(total=len(specs) * len(solvers) * len(nfes), desc="bench solvers", unit="run") as bar:
        for spec in specs:
            results.append(_bench_testbed(spec, n, nfes, solvers, ref_steps, bar, seed))
    elapsed = time.perf_counter() - t0
    parts = [f"""# Solvers on the exact Gaussian-mixture testbed (NFE {nfes[0]}..{nfes[-1]})

Machine: {machine()}. Date: {today()}. Wall time: {elapsed / 60:.1f} min{' (--quick smoke run)' if quick else ''}.

Settings: {n} samples per run from the *same* exact start x_T ~ p(x; sigma_max = 80) (seed {seed}); sigma in
[0.002, 80]; no final denoising step (papers' convention); float32 sampling, float64 metrics. Grids as in the
papers (samplers/presets.py): 1-call solvers N = NFE + 1 without AFS; 2-call solvers (heun, dpm_2, adasde, amed,
amed_plugin) AFS at odd NFE; polynomial rho 7 for euler/heun/dpm_2/ipndm/amed_plugin, logSNR for dpmpp_2m/dpmpp_3m/
unipc, time-uniform rho 1 for adasde/amed. adasde/amed/amed_plugin run **untrained** (AdaSDE = AMED = DPM-Solver-2
midpoint on the time-uniform grid; AMED-Plugin = iPNDM with geometric midpoints); distilled coefficients are in
`bench/results/distill.md`. Every run's model calls were counted and equal `samplers.nfe`.

Metrics (testbeds/metrics.py, against the exact target, docs/TESTBEDS.md section 1.2): FD = Frechet distance to
the exact moments m*, S*; RMSE = root-mean-square difference to a Heun reference solve ({ref_steps} steps, rho 7)
of the *same* denoiser from the same x_T (pure discretisation error; on the error testbed the reference itself carries
the denoiser's error); TV = mode-weight total variation (argmax-likelihood component vs pi); SW2 = sliced W2 over 256
fixed directions vs {n} exact samples; MMD^2 = unbiased RBF MMD^2 (bandwidth = median distance of the exact samples,
fixed) vs the same exact samples, shown x 1e3. "floor" = the same metric for *exact* samples of the same size.

Reading notes: (1) 2-call solvers on few points take a few huge steps; the last interval of the time-uniform grid is
sigma 1.29 -> 0.002 at N = 4 and 0.65 -> 0.002 at N = 6, whose geometric midpoint (r = 0.5: 0.051, 0.036) is far
below the scale where the mixture's posterior mean changes (component residual std 0.12-0.26), so the untrained
midpoint step extrapolates a large direction over the whole interval; the learned AdaSDE/AMED coefficients move this
point (r ~ 0.15 at the last step, docs/ALGORITHMS.md section 3.7).  (2) Heun's trapezoidal step fails likewise on the
rho-7 grid at low NFE (the known "Heun collapse").  (3) On the `-error` testbed even the reference solve carries the
denoiser's error (its FD is above the floor): that gap is what no ODE solver can remove.
"""]
    for res in results:
        model, fl, ref = res["model"], res["floors"], res["ref"]
        title = f"## `{res['spec']}` (d = {model.mixture.d}, K = {model.mixture.K}, rank {model.mixture.r})"
        parts.append(title)
        if res["spec"].endswith("-error"):
            errs = denoiser_error(model, [80.0, 10.0, 2.0, 0.5, 0.1, 0.02, 0.002], n=min(n, 512))
            parts.append("Controlled-error denoiser (testbeds.gmm.controlled_error: means shifted by 0.15 component "
                         "std along fixed random directions, covariances x 1.25, responsibilities tempered by 1.5) "
                         "vs the exact denoiser on exact noisy samples:\n\n" + md_table(
                             ["sigma", "RMSE(D_err - D)", "RMSE(D - y) (posterior spread)", "rel. score error"],
                             [[f"{e['sigma']:g}", f"{e['rmse']:.4f}", f"{e['posterior_rmse']:.4f}",
                               f"{e['rel_score_error']:.3f}"] for e in errs]) + "\n")
        parts.append(
            f"Floors (exact samples, n = {n}): FD {fl['fd']:.3f}, TV {fl['tv']:.4f}, SW2 {fl['sw2']:.4f}, "
            f"MMD^2 x 1e3 {1e3 * fl['mmd2']:.4f} ± {1e3 * fl['mmd2_sd']:.4f}.  Reference solve ({res['ref_nfe']} "
            f"NFE, {res['ref_time']:.1f} s): FD {ref['fd']:.3f}, TV {ref['tv']:.4f}, SW2 {ref['sw2']:.4f}, MMD^2 x 1e3 "
            f"{1e3 * ref['mmd2']:.4f}; its own discretisation error (RMSE to the half-step solve) "
            f"{ref['rmse_half']:.2e}. Solver runs: {res['time']:.0f} s.\n")
        for key, label in METRICS:
            head = ["solver"] + [f"NFE {k}" for k in nfes]
            body = [[name] + [_fmt(res["rows"].get((name, k), {}).get(key), key) for k in nfes]
                    for name in dict.fromkeys(s for s, _ in res["settings"])]
            parts.append(f"### {label}\n\n" + md_table(head, body) + "\n")
        pats = _patterns(res, nfes)
        if pats:
            parts.append("### Paper pattern check (FD)\n\n" + "\n".join(pats) + "\n")
        notrun = [f"{s} NFE {k}: {v}" for (s, k), v in res["settings"].items() if v.startswith("not run")]
        if notrun:
            parts.append("Not run: " + "; ".join(notrun) + "\n")
    text = "\n".join(parts)
    write_report("solvers", text, out_dir)
    return text
