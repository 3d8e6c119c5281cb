"""``adasde bench guidance``: classifier guidance (``cg``) on the built-in Fashion-MNIST model.

The unconditional ``builtin:fmnist`` model is steered towards requested classes by the noise-conditional classifier
``builtin:fmnist-noisy-classifier`` (docs/ALGORITHMS.md section 11).  For every solver and NFE the same seeds are
sampled without and with guidance (seed s requests class ``classes[s mod len(classes)]``); the score is the share of
images that the *clean* FD-FMNIST classifier (``builtin/classifier.py``, a different network, trained on clean images
only) assigns to the requested class, plus the FD-FMNIST of the guided and unguided images (against the test set;
small n, so only a within-row comparison).  The grids and coefficient files are those ``adasde sample`` picks.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import machine, md_table, today, write_report

SOLVERS = ("adasde", "euler", "dpmpp_3m")
NFES = (3, 5, 9)


def _accuracy(clf: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        pred = clf(images.float().div(255)).argmax(1)
    return float((pred == labels).float().mean())


def run(samples: int = 300, nfes: tuple[int, ...] = NFES, solvers: tuple[str, ...] = SOLVERS,
        classes: str = "0,1,2,3,4,5,6,7,8,9", rates: tuple[float, ...] = (2.0, 8.0), batch: int = 100, seed0: int = 0,
        out_dir: str | None = None, progress: bool = True) -> str:
    from ..builtin.classifier import load_classifier
    from ..conditioning import _seed_classes, build_conditioning, parse_classes
    from ..demo.run import FDScorer
    from ..generate.loop import generate_all
    from ..models import load_model
    from ..policy import plan

    den = load_model("builtin:fmnist").eval()
    conds = {r: build_conditioning(den, guidance="cg", guidance_rate=r, classes=classes) for r in rates}
    cond = conds[rates[0]]
    cls_list = parse_classes(classes)
    seeds = list(range(seed0, seed0 + samples))
    labels = _seed_classes(seeds, cls_list, 10)
    clean = load_classifier()
    scorer = FDScorer()
    rows, secs = [], {}
    t0 = time.perf_counter()
    cells = [(s, k) for s in solvers for k in nfes]
    for name, k in tqdm(cells, desc="bench guidance", disable=not progress):
        p = plan(den, name, nfe=k)
        res = {}
        for rate in (0.0, *rates):
            t = time.perf_counter()
            model = conds[rate].model if rate else den
            imgs = generate_all(model, p, seeds, batch=batch, extra_for=cond.extra_for, progress=False)
            secs[(name, k, rate)] = time.perf_counter() - t
            res[rate] = (_accuracy(clean, imgs, labels), scorer(imgs.float() / 255))
        grid = f"{p.schedule[0]} {p.schedule[1]:g}" + (f", {p.coeffs_path.rsplit('/', 1)[-1]}" if p.coeffs_path
                                                        else ", untrained" if p.source in ("untrained", "fallback")
                                                        else "")
        rows.append([name, k, grid, f"{100 * res[0.0][0]:.1f} %"]
                    + [f"**{100 * res[r][0]:.1f} %**" for r in rates]
                    + [f"{res[r][1]:.1f}" for r in (0.0, *rates)]
                    + [f"{1000 * secs[(name, k, 0.0)] / samples:.1f} / "
                       f"{1000 * secs[(name, k, rates[-1])] / samples:.1f}"])
    elapsed = time.perf_counter() - t0
    meta = cond.model.classifier.meta.get("training", {})
    acc = dict(sorted(meta.get("test_accuracy_by_sigma", {}).items(), key=lambda kv: float(kv[0])))
    rate_list = " ".join(f"{r:g}" for r in rates)
    text = f"""# Classifier guidance on the built-in Fashion-MNIST model

Machine: {machine()}. Date: {today()}. Wall time: {elapsed / 60:.1f} min.
Command: `adasde bench guidance --samples {samples} --nfes {' '.join(map(str, nfes))} --solvers {' '.join(solvers)} \
--classes {classes} --rates {rate_list}`

`builtin:fmnist` (unconditional) sampled from seeds {seeds[0]}..{seeds[-1]} without guidance and with classifier
guidance (`--guidance cg --classifier builtin:fmnist-noisy-classifier --guidance-rate R`, R = {rate_list}), seed s
requesting class classes[s mod {len(cls_list or [])}] of `--classes {classes}`. **Requested-class accuracy** =
share of images that the clean FD-FMNIST classifier (`builtin/classifier.py`, trained on clean images only, 92.2 %
test accuracy) assigns to the requested class; without guidance it is the chance that an unconditional sample
happens to be of that class (about 10 % for all ten classes). FD-FMNIST against the test-set statistics with
n = {samples} (large finite-sample bias: compare within a row only). Grids and coefficients as `adasde sample` picks
them (shipped AdaSDE coefficient files; the paper schedules for the training-free solvers). Times are wall-clock on
a CPU shared with other jobs (indicative only).

Noise-conditional classifier (`builtin/weights/fmnist_noisy_classifier.safetensors`): test accuracy by sigma
{', '.join(f'{s}: {100 * v:.1f} %' for s, v in acc.items())}.

{md_table(["solver", "NFE", "grid", "accuracy unguided"] + [f"accuracy R={r:g}" for r in rates]
         + ["FD unguided"] + [f"FD R={r:g}" for r in rates] + [f"ms / image (unguided / R={rates[-1]:g})"], rows)}
"""
    write_report("guidance", text, out_dir)
    return text
