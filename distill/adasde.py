"""AdaSDE distillation (docs/ALGORITHMS.md section 3.5): learn per-step r, a, c, gamma (and w) tables.

The student step is :func:`samplers.adasde.adasde_step` itself, so training and sampling share one implementation.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable
from typing import Any

import torch

from ..coefficients import Coefficients, ModelIdentity
from ..errors import UsageError
from ..samplers.adasde import adasde_step
from ..samplers.common import is_flow_model
from ..samplers.schedules import SCHEDULES, get_sigmas, teacher_sigmas
from .engine import LoopConfig, ModelGuard, run
from .options import ADASDE_DEFAULTS, AMED_ONLY, DistillOptions, prepare
from .params import check_scales, init_raw, map_tables
from .robust import INIT_MODES, HeldOut, scan_r_
from .teacher import TEACHERS, teacher_nfe

LOSSES = ("l2", "feature", "l2+feature")


def steps_for_nfe(nfe: int, afs: bool, K: int = 1) -> int:  # noqa: N803
    """Student grid points N with (1 + K)(N - 1) - [AFS] = nfe (section 3.3); error when no N fits."""
    steps, rem = divmod(nfe + int(afs), 1 + K)
    if rem or steps < 1:
        fix = "without --afs" if afs else "with --afs"
        raise UsageError(f"NFE {nfe} is not reachable with K={K} and afs={afs} (NFE = (1+K)(N-1) - [AFS]); "
                         f"try NFE {nfe + rem if rem else nfe + 1} or run {fix}")
    return steps + 1


def model_facts(model: Any) -> dict[str, Any]:
    """What a ``loaders.Denoiser`` (duck-typed) knows about itself; empty for a plain callable."""
    out: dict[str, Any] = {}
    for name in ("sigma_min", "sigma_max", "sample_shape", "model_sigmas", "default_schedule"):
        v = getattr(model, name, None)
        if v is not None:
            out[name] = v
    ident = getattr(model, "identity", None)
    if callable(ident):
        try:
            out["identity"] = dict(ident())
        except Exception:  # noqa: BLE001 - a host object with another identity() signature
            pass
    return out


def resolve_common(model: Any, o: DistillOptions) -> dict[str, Any]:
    """Fill shape / sigma range / schedule / device of the options from a Denoiser where not given; validate."""
    shape, sigma_min, sigma_max, schedule, rho = o.shape, o.sigma_min, o.sigma_max, o.schedule, o.rho
    model_sigmas, device, dtype = o.model_sigmas, o.device, o.dtype
    facts = model_facts(model)
    shape = tuple(int(v) for v in (shape if shape is not None else facts.get("sample_shape", ()))) or None
    if shape is None:
        raise UsageError("distill: pass shape=(C, H, W) of one sample (the model is not a loaders.Denoiser)")
    sigma_min = float(sigma_min if sigma_min is not None else facts.get("sigma_min", float("nan")))
    sigma_max = float(sigma_max if sigma_max is not None else facts.get("sigma_max", float("nan")))
    if not (0 < sigma_min < sigma_max < math.inf):
        raise UsageError(f"distill: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}; "
                         f"pass them explicitly (e.g. 0.002 and 80 for EDM models)")
    model_sigmas = model_sigmas if model_sigmas is not None else facts.get("model_sigmas")
    if schedule is None:
        schedule, rho0 = facts.get("default_schedule", ("time_uniform", 1.0))
        rho = rho0 if rho is None else rho
    if schedule not in SCHEDULES:
        raise UsageError(f"distill: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    rho = 1.0 if rho is None else float(rho)
    if device is None:
        p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = p.device if p is not None else torch.device("cpu")
    return {"shape": shape, "sigma_min": sigma_min, "sigma_max": sigma_max, "schedule": schedule, "rho": rho,
            "model_sigmas": model_sigmas, "device": torch.device(device), "dtype": dtype or torch.float32,
            "identity": facts.get("identity")}


def grids(schedule: str, num_steps: int, M: int, sigma_min: float, sigma_max: float, rho: float,
          model_sigmas: Any) -> tuple[torch.Tensor, list[float], list[float]]:
    """(student grid float64 tensor, student grid floats, teacher grid floats); section 2, "Sub-grids"."""
    coarse = get_sigmas(schedule, num_steps, sigma_min, sigma_max, rho, model_sigmas, dtype=torch.float64)
    fine = teacher_sigmas(schedule, num_steps, M, sigma_min, sigma_max, rho, model_sigmas, dtype=torch.float64)
    return coarse, coarse.tolist(), fine.tolist()


def identity_of(info: dict | None, sigma_min: float, sigma_max: float, name: str | None) -> ModelIdentity:
    if info:
        keep = {k: info[k] for k in ("family", "prediction", "fingerprint", "name") if k in info}
        return ModelIdentity(**keep, sigma_min=sigma_min, sigma_max=sigma_max)
    return ModelIdentity(sigma_min=sigma_min, sigma_max=sigma_max, name=name)


def final_losses(history: list[list[float]]) -> dict[str, Any]:
    """Per-step losses of the first iteration and averaged over the last 10 % of iterations."""
    if not history:
        return {}
    tail = history[-max(1, len(history) // 10):]
    steps = len(history[0])
    return {"first": history[0], "final": [sum(h[n] for h in tail) / len(tail) for n in range(steps)],
            "final_total": sum(sum(h) for h in tail) / len(tail), "first_total": sum(history[0])}


def validate_loss(loss: str, feature_net: Any, alpha: float) -> None:
    if loss not in LOSSES:
        raise UsageError(f"distill: loss={loss!r}; choose one of {', '.join(LOSSES)}")
    if loss != "l2" and feature_net is None:
        raise UsageError(f"distill: loss={loss!r} needs feature_net= (a differentiable callable images -> features, "
                         f"e.g. the builtin Fashion-MNIST classifier); or use loss='l2'")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise UsageError(f"distill: alpha={alpha!r} must be a finite number >= 0")


def check_run(num_steps: int, K: int, M: int, teacher: str, batch: int, trajectories: int, lr: float) -> None:  # noqa: N803
    if int(num_steps) != num_steps or num_steps < 2:
        raise UsageError(f"distill: num_steps={num_steps!r} (grid points N) must be an integer >= 2")
    if int(K) != K or K < 1:
        raise UsageError(f"distill: K={K!r} (points per step) must be an integer >= 1")
    if int(M) != M or M < 0:
        raise UsageError(f"distill: M={M!r} (teacher points inserted per student interval) must be an integer >= 0")
    if teacher not in TEACHERS:
        raise UsageError(f"distill: teacher={teacher!r}; choose one of {', '.join(TEACHERS)}")
    if batch < 1 or trajectories < 1:
        raise UsageError(f"distill: batch={batch} and trajectories={trajectories} must be >= 1")
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"distill: lr={lr!r} must be a positive number (paper: 0.2 with cosine)")


def distill(model: Callable, options: DistillOptions | None = None, **overrides: Any) -> Coefficients:
    """Distil AdaSDE coefficients for ``model`` (docs/ALGORITHMS.md section 3.5); returns a ``Coefficients`` record.

    Settings: ``options`` (a :class:`DistillOptions`) and/or its field names as keywords (keywords win).

    ``model(x, sigma_vec, **extra) -> x0`` (differentiable in x).  shape / sigma range / ``model_sigmas`` default to
    the model's when it is a ``loaders.Denoiser``.  Give ``num_steps`` (grid points N) or ``nfe`` ((1+K)(N-1) - AFS).
    ``schedule``/``rho`` default to the model's ``default_schedule`` (time_uniform rho 1 for pixel models, discrete
    rho 1 for LDM/SD), else time_uniform rho 1 (section 2, "Recommended").
    Defaults are the paper's (section 3.5 table): dpm2 teacher with M = 3, s_c 0.05, s_a 0.2, gamma_max 0.01, Adam lr
    0.2 with cosine annealing to 0.01, batch 32, 10k trajectories, seed 0, full BPTT.  ``loss``: ``"l2"`` (per-step
    squared L2 at every step), ``"feature"`` (the paper's code: the last step uses
    ``alpha * C*H*W * mean((f(dec(x)) - f(dec(y)))^2)`` instead of L2) or ``"l2+feature"``; the C*H*W factor is the
    reference's implicit one (section 3.8 pitfall 8), kept deliberately so alpha weighs mean squared feature error
    against mean squared per-dimension state error exactly as the per-step L2 (= C*H*W x mean squared error) does.
    ``decoder`` (default: ``model.decode`` if present, else identity) maps states to the feature net's input.
    ``condition_fn(iteration, rng)`` returns the extra_args of a whole batch (tensors/lists with leading dimension
    ``batch`` are split across processes).  ``progress(info)``: see :func:`engine.run`.  ``checkpoint``: a
    ``.safetensors`` path written every ``checkpoint_every`` iterations; ``resume=True`` continues from it exactly.
    ``bptt=False``: detached steps with teacher forcing (AMED style).  ``grad_checkpoint``: recompute model calls in
    backward (torch.utils.checkpoint) to fit large models.  Under ``torchrun`` the batch is split across processes.
    ``init="scan"`` (default) starts each row of r at the value with the lowest held-out step loss
    (:mod:`.robust`), ``"random"`` at the paper's random draw; the held-out teacher loss of the result is stored in
    ``training["heldout_loss"]``.
    """
    o = prepare("distill", options, overrides, AMED_ONLY, "distill_amed (AMED)", ADASDE_DEFAULTS)
    num_steps, nfe, afs, teacher, M, K = o.num_steps, o.nfe, o.afs, o.teacher, o.M, o.K  # noqa: N806
    scale_dir, scale_time, gamma_max, loss, alpha = o.scale_dir, o.scale_time, o.gamma_max, o.loss, o.alpha
    lr, cosine, batch, trajectories, seed, bptt = o.lr, o.cosine, o.batch, o.trajectories, o.seed, o.bptt
    init = o.init
    checkpoint, resume, flow = o.checkpoint, o.resume, o.flow
    c = resolve_common(model, o)
    if num_steps is None:
        if nfe is None:
            raise UsageError("distill: pass num_steps= (student grid points N) or nfe=")
        num_steps = steps_for_nfe(int(nfe), afs, K)
    elif nfe is not None and steps_for_nfe(int(nfe), afs, K) != num_steps:
        raise UsageError(f"distill: nfe={nfe} does not match num_steps={num_steps} with K={K}, afs={afs}")
    check_run(num_steps, K, M, teacher, batch, trajectories, lr)
    check_scales(scale_dir, scale_time, gamma_max)
    validate_loss(loss, o.feature_net, alpha)
    if init not in INIT_MODES:
        raise UsageError(f"distill: init={init!r}; choose one of {', '.join(INIT_MODES)}")
    flow = is_flow_model(model) if flow is None else bool(flow)
    sig, sig_list, fine = grids(c["schedule"], num_steps, M, c["sigma_min"], c["sigma_max"], c["rho"],
                                c["model_sigmas"])
    steps = num_steps - 1
    raw = {k: v.to(c["device"]).requires_grad_(True) for k, v in init_raw(steps, K, seed).items()}
    scales = (scale_dir, scale_time, gamma_max)
    guard = ModelGuard(model, grad_checkpoint=o.grad_checkpoint)

    def student_step(n: int, x: torch.Tensor, eps: torch.Tensor | None, extra: dict) -> torch.Tensor:
        row = {k: v.to(x.dtype) for k, v in map_tables(raw, *scales, rows=n).items()}
        x_next, _, _ = adasde_step(guard, x, sig_list[n], sig_list[n + 1], row["r"], row["a"], row["c"],
                                   row["gamma"], row["w"], noise=eps if n > 0 else None, extra_args=extra,
                                   afs=afs and n == 0, flow=flow)
        return x_next

    def snapshot() -> dict[str, Any]:
        with torch.no_grad():
            eff = map_tables(raw, *scales)
        return {k: v.cpu().tolist() for k, v in eff.items()} | {"sigmas": sig_list}

    settings = {"kind": "adasde", "shape": list(c["shape"]), "sigmas": sig_list, "M": M, "K": K, "teacher": teacher,
                "afs": afs, "scale_dir": scale_dir, "scale_time": scale_time, "gamma_max": gamma_max, "loss": loss,
                "alpha": alpha, "lr": lr, "cosine": cosine, "batch": batch, "trajectories": trajectories,
                "seed": seed, "bptt": bptt, "flow": flow, "init": init}
    cfg = LoopConfig(shape=c["shape"], sigmas=sig_list, fine=fine, M=M, teacher=teacher, seed=seed, batch=batch,
                     trajectories=trajectories, lr=lr, cosine=cosine, bptt=bptt, flow=flow, device=c["device"],
                     dtype=c["dtype"], loss=loss, alpha=alpha, feature_net=o.feature_net,
                     decoder=o.decoder or getattr(model, "decode", None) or (lambda x: x),
                     condition_fn=o.condition_fn, checkpoint=checkpoint, checkpoint_every=o.checkpoint_every,
                     resume=resume, max_loss_factor=o.max_loss_factor, settings=settings)
    held = HeldOut(guard, cfg)
    init_r = None
    if init == "scan" and not (resume and checkpoint is not None and os.path.exists(checkpoint)):
        init_r = scan_r_(raw["r"], student_step, held)
    result = run(model, raw, student_step, cfg, snapshot, progress=o.progress, guard=guard)
    heldout = held.losses(student_step)
    with torch.no_grad():
        eff = {k: v.detach().cpu().float() for k, v in map_tables(raw, *scales).items()}
    training = dict(settings, iterations=result.iterations, resumed_from=result.resumed_from,
                    nonfinite_grads=result.nonfinite_grads, seconds=round(result.seconds, 3),
                    teacher_nfe=teacher_nfe(teacher, num_steps, M), losses=final_losses(result.history),
                    heldout_losses=heldout, heldout_loss=sum(heldout), init_r=init_r,
                    torch=torch.__version__, host=platform.node() or None, eta_min=min(0.01, lr),
                    loss_normalisation="l2: sum over dims / batch; feature: alpha*C*H*W*mean over batch, features")
    training.pop("sigmas")
    return Coefficients(r=eff["r"], a=eff["a"], c=eff["c"], gamma=eff["gamma"], w=eff["w"], sigmas=sig,
                        schedule=c["schedule"], rho=c["rho"], afs=afs,
                        model=identity_of(c["identity"], c["sigma_min"], c["sigma_max"], o.name),
                        kind="adasde", training=training)
