"""``adasde bench policy``: what the defaults give.  FD-FMNIST of the built-in model at one NFE for the plan every
door makes without flags (``coefficients="auto"``) against the same sampler with the shipped file named explicitly,
untrained AdaSDE on the model's grid, the training-free solvers, and optionally a file distilled with
``adasde distill`` defaults (``--distilled FILE``).  Same seeds for every row, several disjoint seed blocks.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .common import machine, md_table, today, write_report

SHIPPED = Path(__file__).resolve().parents[1] / "coefficients" / "data"


def run(nfe: int = 5, samples: int = 2000, blocks: int = 2, distilled: str | None = None, batch: int = 500,
        out_dir: str | None = None, progress: bool = True, command: str = "") -> str:
    from ..demo.run import FDScorer
    from ..generate import generate_all
    from ..models import load_model
    from ..policy import plan

    model = load_model("builtin:fmnist").eval()
    scorer = FDScorer()
    shipped = SHIPPED / f"builtin-fmnist-adasde-nfe{nfe}.safetensors"
    runs: list[tuple[str, str, object]] = [
        ("adasde, no flags (auto)", "adasde", "auto"),
        (f"adasde --coeffs {shipped.name}", "adasde", shipped),
        ("adasde --coeffs untrained (model's grid)", "adasde", "untrained"),
        ("dpmpp_3m", "dpmpp_3m", "auto"),
        ("ipndm", "ipndm", "auto"),
        ("euler", "euler", "auto"),
    ]
    if distilled:
        runs.insert(2, (f"adasde --coeffs {Path(distilled).name} (distil defaults)", "adasde", Path(distilled)))
    rows, t0 = [], time.perf_counter()
    for label, sampler, choice in runs:
        p = plan(model, sampler, nfe=nfe, coefficients=choice)
        fds = []
        for b in range(blocks):
            seeds = range(b * samples, (b + 1) * samples)
            fds.append(scorer(generate_all(model, p, seeds, batch=batch, progress=progress).float() / 255))
        spread = statistics.stdev(fds) if len(fds) > 1 else 0.0
        rows.append((label, p.nfe, p.describe().split(", ", 4)[-1], fds, statistics.mean(fds), spread))
    base = rows[1][4]
    table = md_table(["run", "NFE", "plan", "FD-FMNIST per seed block", "mean ± sd", "/ named shipped file"],
                     [[r[0], r[1], r[2], ", ".join(f"{v:.2f}" for v in r[3]), f"{r[4]:.2f} ± {r[5]:.2f}",
                       f"{r[4] / base:.3f}"] for r in rows])
    text = f"""# Defaults: what `adasde sample --nfe {nfe}` and `adasde distill` give without flags

Machine: {machine()}. Date: {today()}. Wall time: {(time.perf_counter() - t0) / 60:.1f} min.
Command: `{command or f'adasde bench policy --nfe {nfe} --samples {samples} --blocks {blocks}'}`

Built-in Fashion-MNIST model, FD-FMNIST (Frechet distance in our classifier's features against the test set; not
FID), {samples} images per seed block, {blocks} disjoint seed blocks, the same seeds for every row.  The last column
divides by the row that names the shipped file explicitly (`--coeffs`): the automatic choice must be within 5 %.

{table}
"""
    path = write_report("policy", text, out_dir)
    return text + f"\nwritten to {path}\n"
