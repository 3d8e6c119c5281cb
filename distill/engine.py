"""The shared distillation loop (docs/ALGORITHMS.md sections 3.5 and 4.4), used by AdaSDE and AMED.

Per iteration (one batch of trajectories):

1. noise ``x_0 = sigma_max z`` with ``z`` drawn per trajectory from ``(seed, global trajectory index)``;
2. teacher states ``y_1 .. y_{N-1}`` on the fine grid, no grad (:mod:`.teacher`);
3. for every student step n: zero the gradients, one student step (grads on), the step loss, ``backward``, sanitise
   non-finite gradients (NaN -> 0, +-inf -> +-1e5, as the reference), average them over ranks, one Adam step.
   ``bptt=True`` keeps the graph (``retain_graph``) and feeds the undetached student state into the next step, so later
   losses also reach earlier rows (AdaSDE); ``bptt=False`` detaches and restarts step n from the teacher state
   ``y_n`` (teacher forcing, AMED);
4. learning rate: cosine annealing to ``eta_min = min(0.01, lr)`` over ``floor(trajectories / batch) + 1`` iterations
   (section 3.5) or constant.

Every model call is checked: a NaN/inf output raises :class:`NonFiniteError` naming the step and the sigma, after the
last good checkpoint was written (it is never overwritten by the failing iteration).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as _ckpt

from ..errors import AdasdeError, UsageError
from ..samplers.common import SeededNoise
from ..samplers.presets import initial_noise
from . import ddp
from .checkpoint import check_resume, load_checkpoint, restore, run_identity, save_checkpoint, weights_fingerprint
from .teacher import teacher_trajectory


class DistillError(AdasdeError, RuntimeError):
    """Distillation stopped (non-finite model output or loss, diverging loss, bad settings)."""


class NonFiniteError(DistillError):
    """The model returned NaN/inf, or a loss became non-finite."""


NAN_REPLACE, INF_REPLACE = 0.0, 1e5  # non-finite gradient replacement (section 3.5, step 3)


def sample_seed(seed: int, index: int) -> int:
    """Seed of trajectory ``index`` (global, across iterations and ranks) of a run with ``seed``."""
    return (int(seed) * 1_000_000_007 + int(index) * 7919 + 0xADA5DE) % (2**62)


def condition_rng(seed: int, iteration: int) -> torch.Generator:
    """The CPU generator handed to ``condition_fn(iteration, rng)``: a function of (seed, iteration) only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(iteration) * 104_729 + 17) % (2**62))


def lr_at(iteration: int, lr: float, trajectories: int, batch: int, cosine: bool) -> float:
    """Section 3.5: cosine annealing, T_max = floor(trajectories / batch) + 1, eta_min = min(0.01, lr) (absolute)."""
    if not cosine:
        return lr
    t_max = trajectories // batch + 1
    eta_min = min(0.01, lr)
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * iteration / t_max)) / 2


class ModelGuard:
    """Calls the model and raises :class:`NonFiniteError` (naming ``where`` and the sigma) on a NaN/inf output."""

    def __init__(self, model: Callable, grad_checkpoint: bool = False):
        self.model = model
        self.where = ""
        self.grad_checkpoint = grad_checkpoint

    def _call(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.model(x, sigma, **extra)
        if not torch.isfinite(out).all():
            s = sigma.detach().flatten()
            lo, hi = float(s.min()), float(s.max())
            at = f"{lo:.6g}" if lo == hi else f"{lo:.6g}..{hi:.6g}"
            raise NonFiniteError(f"the model returned NaN/inf at {self.where}, model called at sigma={at}; "
                                 f"check the model's sigma range and dtype (float16 overflows), or lower lr")
        return out

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.grad_checkpoint and torch.is_grad_enabled() and (x.requires_grad or sigma.requires_grad):
            return _ckpt(self._call, x, sigma, use_reentrant=False, **extra)
        return self._call(x, sigma, **extra)

    def __getattr__(self, name: str) -> Any:  # expose Denoiser attributes (flow, bottleneck, ...)
        if name in ("model", "where", "grad_checkpoint"):
            raise AttributeError(name)
        return getattr(self.model, name)


@dataclass
class LoopConfig:
    """Everything the loop needs besides the student step (see :func:`run`)."""

    shape: tuple[int, ...]
    sigmas: list[float]  # student grid (N points)
    fine: list[float]  # teacher grid
    M: int
    teacher: str
    seed: int
    batch: int
    trajectories: int
    lr: float
    cosine: bool
    bptt: bool
    flow: bool
    device: torch.device
    dtype: torch.dtype
    loss: str = "l2"  # "l2" | "feature" | "l2+feature"
    alpha: float = 20.0
    feature_net: Callable | None = None
    decoder: Callable | None = None
    condition_fn: Callable | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 10
    resume: bool = False
    max_loss_factor: float = 1e4
    teacher_forcing: bool | None = None  # restart step n from y_n; default: not bptt
    teacher_options: dict[str, Any] | None = None  # solver form of the ipndm / dpmpp teacher (AMED-Plugin base)
    settings: dict[str, Any] = field(default_factory=dict)  # identifies the run (compared on resume)


@dataclass
class LoopResult:
    history: list[list[float]]  # per iteration, per-step losses (averaged over ranks)
    iterations: int
    nonfinite_grads: int
    seconds: float
    resumed_from: int


StudentStep = Callable[[int, torch.Tensor, torch.Tensor | None, dict], torch.Tensor]


def _slice_extra(extra: dict, batch: int, lo: int, hi: int) -> dict:
    """The rank's share of per-batch extra_args: tensors/lists with leading dim == global batch are sliced."""
    out = {}
    for k, v in extra.items():
        if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == batch:
            out[k] = v[lo:hi]
        elif isinstance(v, (list, tuple)) and len(v) == batch:
            out[k] = type(v)(v[lo:hi])
        else:
            out[k] = v
    return out


def _move(extra: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in extra.items()}


class Adam:
    """Adam (beta 0.9 / 0.999, eps 1e-8; the update of torch.optim.Adam) on a list of leaf tensors (section 3.5).

    Written out (a dozen lines) because constructing ``torch.optim.Adam`` imports torch._dynamo, which costs seconds
    to tens of seconds per process on a loaded CPU (every run, every DDP worker).  ``state[p]`` holds ``step``,
    ``exp_avg`` and ``exp_avg_sq`` like torch's, so checkpoints keep the same layout.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.betas, self.eps = params, betas, eps
        self.param_groups = [{"lr": lr}]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        b1, b2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.setdefault(p, {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                           "exp_avg_sq": torch.zeros_like(p)})
            st["step"] += 1
            t = float(st["step"])
            st["exp_avg"].lerp_(p.grad, 1 - b1)
            st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - b2**t)).add_(self.eps)
            p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1**t))


def _sanitise_(params: list[torch.Tensor]) -> int:
    """Replace non-finite gradients in place (NaN -> 0, +-inf -> +-1e5); return how many entries were bad."""
    bad = 0
    for p in params:
        if p.grad is None:
            continue
        fin = torch.isfinite(p.grad)
        if not bool(fin.all()):
            bad += int((~fin).sum())
            torch.nan_to_num_(p.grad, nan=NAN_REPLACE, posinf=INF_REPLACE, neginf=-INF_REPLACE)
    return bad


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def resume_settings(model: Callable, cfg: LoopConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the caller's settings, the model identity
    (:func:`checkpoint.run_identity`), the dtype, teacher forcing and the feature network of a feature loss."""
    extra: dict[str, Any] = {"model": run_identity(model), "dtype": str(cfg.dtype),
                             "teacher_forcing": (not cfg.bptt) if cfg.teacher_forcing is None else cfg.teacher_forcing}
    if cfg.loss != "l2" and cfg.feature_net is not None:
        extra["feature_net"] = {"type": f"{type(cfg.feature_net).__module__}.{type(cfg.feature_net).__qualname__}",
                                "fingerprint": weights_fingerprint(cfg.feature_net)}
    return _jsonable({**cfg.settings, **{k: v for k, v in extra.items() if k not in cfg.settings}})


def run(
    model: Callable,
    params: dict[str, torch.Tensor],
    student_step: StudentStep,
    cfg: LoopConfig,
    snapshot: Callable[[], dict[str, Any]],
    progress: Callable[[dict[str, Any]], Any] | None = None,
    guard: ModelGuard | None = None,
) -> LoopResult:
    """Train ``params`` (leaf tensors) with Adam so that ``student_step`` follows the teacher (module docstring).

    ``student_step(n, x_n, eps_n, extra_args) -> x_{n+1}`` (differentiable in the params; eps_n is the churn noise
    of step n, None at n = 0); ``snapshot()`` returns the current effective coefficients for ``progress``.
    ``progress(info)`` is called after every iteration with ``iteration``/``step`` (1-based), ``iterations``,
    ``trajectories``, ``loss`` (sum over steps), ``losses`` (per step), ``lr``, ``elapsed`` and ``coefficients``;
    an exception raised by it stops the run (the checkpoint of that iteration is already written).
    """
    rank, size = ddp.rank_world()
    if cfg.batch % size:
        raise UsageError(f"batch={cfg.batch} must be divisible by the number of processes ({size})")
    local = cfg.batch // size
    steps = len(cfg.sigmas) - 1
    iterations = math.ceil(cfg.trajectories / cfg.batch)
    guard = guard or ModelGuard(model)
    plist = list(params.values())
    opt = Adam(plist, lr=cfg.lr)
    for p in plist:
        p.grad = torch.zeros_like(p)
    settings = resume_settings(model, cfg)
    history: list[list[float]] = []
    start, bad_grads, elapsed0 = 0, 0, 0.0
    ck = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ck is not None and cfg.resume and ck.exists():
        tensors, meta = load_checkpoint(ck)
        check_resume(ck, meta.get("settings", {}), settings)
        restore(params, opt, tensors, meta, ck)
        start, history = int(meta["iteration"]), [list(h) for h in meta["history"]]
        bad_grads, elapsed0 = int(meta.get("nonfinite_grads", 0)), float(meta.get("seconds", 0.0))
    first_loss = sum(history[0]) if history else None
    forcing = (not cfg.bptt) if cfg.teacher_forcing is None else cfg.teacher_forcing
    t0 = time.perf_counter()
    sigma_max = cfg.sigmas[0]
    for it in range(start, iterations):
        lr = lr_at(it, cfg.lr, cfg.trajectories, cfg.batch, cfg.cosine)
        for g in opt.param_groups:
            g["lr"] = lr
        lo = rank * local
        seeds = [sample_seed(cfg.seed, it * cfg.batch + lo + i) for i in range(local)]
        x = initial_noise(seeds, cfg.shape, 1.0 if cfg.flow else sigma_max, device=cfg.device, dtype=cfg.dtype)
        extra: dict = {}
        if cfg.condition_fn is not None:
            extra = dict(cfg.condition_fn(it, condition_rng(cfg.seed, it)) or {})
            extra = _move(_slice_extra(extra, cfg.batch, lo, lo + local), cfg.device)
        noise = SeededNoise(x, seeds)
        losses: list[float] = []
        failure: Exception | None = None
        ys: list[torch.Tensor] = []
        try:
            def where(j: int, ta: float, tb: float, it: int = it) -> None:
                guard.where = f"iteration {it}, teacher interval {j} (sigma {ta:.6g} -> {tb:.6g})"

            ys = teacher_trajectory(guard, x, cfg.fine, cfg.M, cfg.teacher, extra, cfg.flow, on_interval=where,
                                    options=cfg.teacher_options)
            if cfg.loss != "l2":
                with torch.no_grad():
                    feat_t = cfg.feature_net(cfg.decoder(ys[-1]))
        except NonFiniteError as exc:
            failure = exc
        x_cur = x
        for n in range(steps):
            value = float("nan")
            if failure is None:
                try:
                    for p in plist:
                        p.grad.zero_()
                    if forcing and n > 0:
                        x_cur = ys[n - 1]
                    eps = noise() if n > 0 else None
                    guard.where = (f"iteration {it}, student step {n} "
                                   f"(sigma {cfg.sigmas[n]:.6g} -> {cfg.sigmas[n + 1]:.6g})")
                    x_next = student_step(n, x_cur, eps, extra)
                    last = n == steps - 1
                    if last and cfg.loss != "l2":
                        feat_s = cfg.feature_net(cfg.decoder(x_next))
                        d = math.prod(cfg.shape)
                        loss = cfg.alpha * d * ((feat_s - feat_t) ** 2).mean()
                        if cfg.loss == "l2+feature":
                            loss = loss + ((x_next - ys[n]) ** 2).sum() / local
                    else:
                        loss = ((x_next - ys[n]) ** 2).sum() / local
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise NonFiniteError(f"the loss became {value} at {guard.where}; the model outputs were "
                                             f"finite, so the student diverged: lower lr or scale_time/scale_dir")
                    loss.backward(retain_graph=cfg.bptt and not last)
                except NonFiniteError as exc:
                    failure = exc
            failed, (value,) = ddp.allreduce_status(1.0 if failure is not None else 0.0, [value], cfg.device)
            if failed:
                if failure is None:
                    failure = NonFiniteError(f"another process reported NaN/inf at iteration {it}, step {n}")
                break
            bad_grads += _sanitise_(plist)
            ddp.allreduce_mean_([p.grad for p in plist])
            _sanitise_(plist)
            opt.step()
            losses.append(value)
            x_cur = x_next if cfg.bptt else x_next.detach()
        if failure is not None:
            raise failure
        del x_cur, x_next, ys
        total = sum(losses)
        if first_loss is None:
            first_loss = total
        elif total > cfg.max_loss_factor * max(first_loss, 1e-30):
            n_bad = max(range(steps), key=lambda i: losses[i])
            raise DistillError(f"the loss diverged at iteration {it}: {total:.4g} > {cfg.max_loss_factor:g} x the "
                               f"first iteration's {first_loss:.4g} (worst: student step {n_bad}, sigma "
                               f"{cfg.sigmas[n_bad]:.6g} -> {cfg.sigmas[n_bad + 1]:.6g}); lower lr")
        history.append(losses)
        seconds = elapsed0 + time.perf_counter() - t0
        done = it + 1
        if ck is not None and (done % max(1, cfg.checkpoint_every) == 0 or done == iterations):
            if rank == 0:
                save_checkpoint(ck, params, opt, {"iteration": done, "history": history, "settings": settings,
                                                  "nonfinite_grads": bad_grads, "seconds": seconds})
            ddp.barrier()
        if progress is not None:
            progress({"iteration": done, "step": done, "iterations": iterations, "trajectories": done * cfg.batch,
                      "loss": total, "losses": list(losses), "lr": lr, "elapsed": seconds,
                      "nonfinite_grads": bad_grads, "coefficients": snapshot()})
    return LoopResult(history=history, iterations=iterations, nonfinite_grads=bad_grads,
                      seconds=elapsed0 + time.perf_counter() - t0, resumed_from=start)
