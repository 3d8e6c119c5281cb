"""``adasde bench recipes``: choose the AdaSDE recipe per NFE (distill/recipes.py) by held-out teacher loss.

For each NFE, candidates are the published per-NFE settings (bench/distill.py ``adasde_settings``) and one-factor
changes of them (lr, batch, scale_dir, gamma_max); each is distilled for every seed and scored by the squared L2
distance of the student's own trajectory to one common reference teacher (dpm2, M = 3) at the student grid points,
summed over steps and averaged over a held-out batch whose noise no run trains on.  The common teacher makes
candidates with different M comparable.  No image-feature network is involved.  Writes ``bench/results/<name>.md``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .common import machine, md_table, today, write_report

NFES = (3, 5, 7, 9)
HELDOUT_SEEDS = range(7_000_000, 7_000_256)


def candidates(nfe: int) -> list[tuple[str, dict[str, Any]]]:
    """The published per-NFE settings and one-factor changes of them."""
    from .distill import adasde_settings

    base = dict(adasde_settings(nfe), batch=32)
    out = [("published", base)]
    out.append(("lr 0.1" if base["lr"] != 0.1 else "lr 0.2", dict(base, lr=0.1 if base["lr"] != 0.1 else 0.2)))
    out.append(("batch 64", dict(base, batch=64)))
    sd = 0.1 if base["scale_dir"] == 0.05 else 0.05
    out.append((f"scale_dir {sd}", dict(base, scale_dir=sd)))
    gm = 0.02 if base["gamma_max"] == 0.01 else 0.01
    out.append((f"gamma_max {gm}", dict(base, gamma_max=gm)))
    return out


def reference_loss(model: Any, coeffs: Any, x: torch.Tensor, ys: list[torch.Tensor], seeds: list[int]) -> float:
    """Sum over steps of the mean squared L2 distance of the student's states to the reference teacher's."""
    from ..samplers.adasde import adasde_step
    from ..samplers.common import SeededNoise

    s = coeffs.sigmas.tolist()
    noise = SeededNoise(x, seeds)
    total, cur = 0.0, x
    with torch.no_grad():
        for n in range(len(s) - 1):
            eps = noise() if n > 0 else None
            row = {k: getattr(coeffs, k)[n].to(x.dtype) for k in ("r", "a", "c", "gamma", "w")}
            cur, _, _ = adasde_step(model, cur, s[n], s[n + 1], row["r"], row["a"], row["c"], row["gamma"],
                                    row["w"], noise=eps, afs=coeffs.afs and n == 0)
            total += float(((cur - ys[n]) ** 2).sum()) / x.shape[0]
    return total


def run(model_spec: str = "testbed:gmm-error", nfes: tuple[int, ...] = NFES, seeds: int = 2,
        trajectories: int = 10_000, name: str = "recipes", out_dir: str | None = None) -> str:
    from ..distill import distill, teacher_trajectory
    from ..models import load_model
    from ..samplers.presets import initial_noise
    from ..samplers.schedules import teacher_sigmas

    torch.set_num_threads(1)
    model = load_model(model_spec)
    t0 = time.perf_counter()
    held = list(HELDOUT_SEEDS)
    x = initial_noise(held, model.sample_shape, model.sigma_max)
    rows, best = [], {}
    for nfe in nfes:
        n = (nfe + 1) // 2 + 1
        fine = teacher_sigmas("time_uniform", n, 3, model.sigma_min, model.sigma_max, 1.0,
                              dtype=torch.float64).tolist()
        ys = teacher_trajectory(model, x, fine, 3, "dpm2")
        scored = []
        for label, st in candidates(nfe):
            vals = []
            for seed in range(seeds):
                c = distill(model, trajectories=trajectories, seed=seed, **st)
                vals.append(reference_loss(model, c, x, ys, held))
            scored.append((statistics.fmean(vals), label, st, vals))
        scored.sort(key=lambda t: t[0])
        best[nfe] = scored[0]
        for mean, label, st, vals in scored:
            rows.append([nfe, label, st["M"], st["scale_dir"], st["gamma_max"], st["lr"], st["batch"],
                         f"{mean:.4f}", " / ".join(f"{v:.4f}" for v in vals), "**best**" if label == best[nfe][1]
                         else ""])
    elapsed = time.perf_counter() - t0
    lines = [
        f"# AdaSDE recipes per NFE ({model_spec})", "",
        f"{today()} — {machine()}. Wall time {elapsed / 60:.1f} min. Produced by `adasde bench recipes --model "
        f"{model_spec} --seeds {seeds} --trajectories {trajectories} --nfe {' '.join(map(str, nfes))}`.", "",
        "Held-out teacher loss (lower is better): squared L2 distance of the student's trajectory to a common "
        f"reference teacher (dpm2, M = 3) at the student grid points, summed over steps, mean over {len(held)} "
        "held-out trajectories; per candidate the mean over distillation seeds "
        f"{' / '.join(map(str, range(seeds)))}. Time-uniform grid, AFS, K = 1, cosine lr, scan start, "
        f"{trajectories} trajectories. Candidates: the published per-NFE settings and one-factor changes.", "",
        md_table(["NFE", "candidate", "M", "scale_dir", "gamma_max", "lr", "batch", "held-out loss",
                  "per seed", ""], rows), "",
    ]
    text = "\n".join(lines)
    path = write_report(name, text, out_dir)
    print(text)
    print(f"wrote {path}")
    return text
