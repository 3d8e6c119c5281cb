"""Held-out teacher loss and the scan initialisation of the intermediate-time table r (docs/ALGORITHMS.md section 3.5).

Why the scan: with the paper's random start (raw r ~ N(0, 1), i.e. r in about 0.27 .. 0.73) some seeds end in a
collapsed solution.  On the controlled-error mixture at NFE 3 the last-step loss as a function of r has two basins
separated by a barrier near r = 0.5: a good one at r ~ 0.1 and a flat plateau towards r -> 1, where the intermediate
point s = t_{n+1}^r t_n^{1-r} sits on sigma_min and the step degenerates into an Euler step (about 180 x the good
loss).  A start above the barrier slides onto the plateau, where the sigmoid saturates and the run never leaves it.
The scan evaluates, step by step along the student's own trajectory on a held-out batch, the step loss for a few
values of r and starts each row at the best one; the other tables keep their seeded random start.

The held-out batch uses trajectory indices that training never reaches, so its loss is an honest estimate of how well
the student follows the teacher (the quantity recipes are chosen by; the FD metric's network is never used).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..runtime import rank_world
from ..samplers.common import SeededNoise
from ..samplers.presets import initial_noise
from .engine import LoopConfig, condition_rng, sample_seed
from .teacher import teacher_trajectory

R_CANDIDATES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HELDOUT_INDEX = 1 << 40  # first trajectory index of the held-out batch (training uses 0 .. trajectories - 1)
HELDOUT_ITERATION = -1  # the ``iteration`` argument of ``condition_fn`` for the held-out batch
INIT_MODES = ("scan", "random")

StudentStep = Callable[[int, torch.Tensor, torch.Tensor | None, dict], torch.Tensor]


def _rows(extra: dict, n: int, lo: int, hi: int) -> dict:
    """Rows ``lo:hi`` of the per-sample entries (tensors / lists of length ``n``) of ``extra``."""
    out = {}
    for k, v in extra.items():
        if (torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n) or (isinstance(v, (list, tuple)) and len(v) == n):
            out[k] = v[lo:hi]
        else:
            out[k] = v
    return out


class HeldOut:
    """A fixed batch of held-out trajectories: noise, teacher states at the student grid, churn noise per step.

    The same batch on every process (a function of the seed only, so the result does not depend on the number of
    processes); model calls run in chunks of the per-process training batch, so it needs no more memory than training.
    """

    def __init__(self, model: Callable, cfg: LoopConfig, size: int | None = None, chunk: int | None = None) -> None:
        n = int(size or min(cfg.batch, 64))
        self.chunk = max(1, int(chunk or cfg.batch // rank_world()[1]))
        seeds = [sample_seed(cfg.seed, HELDOUT_INDEX + i) for i in range(n)]
        self.x = initial_noise(seeds, cfg.shape, 1.0 if cfg.flow else cfg.sigmas[0], device=cfg.device,
                               dtype=cfg.dtype)
        extra: dict = {}
        if cfg.condition_fn is not None:
            extra = dict(cfg.condition_fn(HELDOUT_ITERATION, condition_rng(cfg.seed + 1, HELDOUT_ITERATION)) or {})
            extra = _rows(extra, cfg.batch, 0, n)
            extra = {k: v.to(cfg.device) if torch.is_tensor(v) else v for k, v in extra.items()}
        self.extra, self.n = extra, n
        parts = [teacher_trajectory(model, self.x[lo:hi], cfg.fine, cfg.M, cfg.teacher, _rows(extra, n, lo, hi),
                                    cfg.flow, options=cfg.teacher_options) for lo, hi in self._chunks()]
        self.ys = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]
        noise = SeededNoise(self.x, seeds)
        steps = len(cfg.sigmas) - 1
        self.eps: list[torch.Tensor | None] = [None] + [noise() for _ in range(steps - 1)]
        self.steps = steps

    def _chunks(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.chunk, self.n)) for lo in range(0, self.n, self.chunk)]

    def step(self, student_step: StudentStep, n: int, x: torch.Tensor) -> torch.Tensor:
        """Student step ``n`` on the whole held-out batch (chunked; for students without state between steps)."""
        eps = self.eps[n]
        return torch.cat([student_step(n, x[lo:hi], None if eps is None else eps[lo:hi],
                                       _rows(self.extra, self.n, lo, hi)) for lo, hi in self._chunks()])

    def step_loss(self, n: int, x_next: torch.Tensor) -> float:
        return float(((x_next - self.ys[n]) ** 2).sum()) / self.n

    @torch.no_grad()
    def losses(self, student_step: StudentStep) -> list[float]:
        """Per-step squared L2 of the student's own trajectory (no teacher forcing) against the teacher.  Chunk by
        chunk over whole trajectories, so students that keep a history between steps see one trajectory batch."""
        out = [0.0] * self.steps
        for lo, hi in self._chunks():
            x, extra = self.x[lo:hi], _rows(self.extra, self.n, lo, hi)
            for n in range(self.steps):
                eps = self.eps[n]
                x = student_step(n, x, None if eps is None else eps[lo:hi], extra)
                out[n] += float(((x - self.ys[n][lo:hi]) ** 2).sum()) / self.n
        return out


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@torch.no_grad()
def scan_r_(raw_r: torch.Tensor, student_step: StudentStep, held: HeldOut,
            candidates: tuple[float, ...] = R_CANDIDATES) -> list[float]:
    """Set each row of the raw r table (in place; r = sigmoid(raw)) to the candidate with the lowest held-out step
    loss, step by step along the student's trajectory; K > 1 rows keep their spread around the chosen mean.
    Returns the chosen r per step."""
    x, chosen = held.x, []
    for n in range(held.steps):
        row = raw_r[n].clone()
        spread = row - row.mean()
        best: tuple[float, float, torch.Tensor] | None = None
        for p in candidates:
            raw_r[n] = _logit(p) + spread
            x_next = held.step(student_step, n, x)
            loss = held.step_loss(n, x_next)
            if math.isfinite(loss) and (best is None or loss < best[0]):
                best = (loss, p, x_next)
        if best is None:  # every candidate diverged: keep the seeded start
            raw_r[n] = row
            x = held.step(student_step, n, x)
            chosen.append(float(torch.sigmoid(row).mean()))
            continue
        raw_r[n] = _logit(best[1]) + spread
        x = best[2]
        chosen.append(best[1])
    return chosen


@torch.no_grad()
def scan_total_(param: torch.Tensor, index: tuple[int, ...], student_step: StudentStep, held: HeldOut,
                candidates: tuple[float, ...] = R_CANDIDATES) -> float:
    """Set the raw value ``param[index]`` (in place) to ``logit(p)`` for the candidate p whose whole student
    trajectory has the lowest held-out loss (for starts that are not one table row per step: the r-head bias of the
    AMED predictor, or rows of multistep solvers whose history a per-step scan would disturb).  Returns the chosen
    p; the start is kept when every candidate diverges."""
    keep = param[index].clone()
    best: tuple[float, float] | None = None
    for p in candidates:
        param[index] = _logit(p)
        total = sum(held.losses(student_step))
        if math.isfinite(total) and (best is None or total < best[0]):
            best = (total, p)
    if best is None:
        param[index] = keep
        return float(torch.sigmoid(keep))
    param[index] = _logit(best[1])
    return best[1]
