"""AMED distillation (ALGORITHMS.md section 4.4): the AMED-Solver predictor network and AMED-Plugin constant tables.

* ``plugin=None`` (AMED-Solver, section 4.2): the predictor g_phi (``samplers.amed.AMEDPredictor``) maps the model's
  bottleneck feature at t_n (channel mean, pooled to 8 x 8, zeros with AFS or when the model exposes none) and
  (t_n, t_{n+1}) to per-sample (r, c, a); step: s = t_{n+1}^r t_n^{1-r}, x_s = x_n + (s - t_n) d_n,
  x_{n+1} = x_n + c (t_{n+1} - t_n) (x_s - D(x_s; a s)) / s.
* ``plugin="euler" | "dpm_2" | "ipndm"`` (AMED-Plugin, section 4.3): constant per-step r, c, a tables (raw values
  mapped as AMED does: r = sigmoid, c = 1 - s_c + 2 s_c sigmoid, a likewise) on the base solver's step.

Training follows section 4.4: teacher on the (M + 1)(N - 1) + 1 grid (AMED-Solver: Heun, M = 1; plugin: the base
solver, M = 2, M = 1 for DPM-Solver-2), squared L2 at every step, one Adam step per student step, lr 5e-3 constant,
student detached between steps and restarted from the teacher state (teacher forcing) for single-step students;
multistep students (ipndm) continue from their own detached state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..coefficients import Coefficients
from ..samplers.baselines import AB_COEFFS, dpm2_step
from ..samplers.common import afs_direction, inserted_point, is_flow_model
from .adasde import check_run, final_losses, grids, identity_of, resolve_common, steps_for_nfe
from .engine import LoopConfig, ModelGuard, run
from .params import check_scales
from .teacher import teacher_nfe

PLUGINS = ("euler", "dpm_2", "ipndm")
PLUGIN_TEACHER = {"euler": ("euler", 2), "dpm_2": ("student", 1), "ipndm": ("ipndm", 2)}
FEATURE_SIDE = 8  # the predictor's bottleneck input is 8 x 8 = 64 values (section 4.1)


def bottleneck_features(model: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The predictor input of section 4.1: detached bottleneck map, channel mean, pooled to 8 x 8, cond half under
    CFG (the last ``batch`` rows), flattened to 64; zeros when the model exposes no bottleneck."""
    get = getattr(model, "bottleneck", None)
    h = get() if callable(get) else None
    if h is None:
        return like.new_zeros(batch, FEATURE_SIDE * FEATURE_SIDE)
    h = h.detach().to(like.dtype)
    if h.shape[0] != batch:
        h = h[-batch:]
    if h.ndim == 4:
        h = h.mean(1)
    if h.ndim == 3 and tuple(h.shape[-2:]) != (FEATURE_SIDE, FEATURE_SIDE):
        h = F.adaptive_avg_pool2d(h[:, None], FEATURE_SIDE)[:, 0]
    return h.reshape(batch, -1)


def _amed_scale(raw: torch.Tensor, s: float) -> torch.Tensor:
    """AMED's range mapping 1 - s + 2 s sigmoid(raw) (section 4.1); 1 when s = 0."""
    if s <= 0:
        return torch.ones_like(raw)
    return 1 - s + 2 * s * torch.sigmoid(raw)


def _plugin_rows(raw: dict[str, torch.Tensor], n: int, scale_dir: float, scale_time: float) -> dict[str, torch.Tensor]:
    return {"r": torch.sigmoid(raw["r"][n]), "c": _amed_scale(raw["c"][n], scale_dir),
            "a": _amed_scale(raw["a"][n], scale_time)}


def make_predictor(scale_dir: float, scale_time: float, seed: int) -> torch.nn.Module:
    """The samplers' ``AMEDPredictor`` (section 4.1) initialised from ``seed``."""
    try:
        from ..samplers.amed import AMEDPredictor
    except ImportError as exc:
        raise ImportError(f"AMED-Solver distillation needs samplers/amed.py (AMEDPredictor), which is missing from "
                          f"this installation [{exc}]; use plugin='dpm_2' or method adasde") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return AMEDPredictor(scale_dir=scale_dir, scale_time=scale_time)


def _predict(pred: torch.nn.Module, h: torch.Tensor, t_cur: float, t_next: float) -> tuple[torch.Tensor, ...]:
    """(r, c, a) per sample, each [B]."""
    b = h.shape[0]
    tc, tn = h.new_full((b,), t_cur), h.new_full((b,), t_next)
    out = pred(h, tc, tn)
    if isinstance(out, dict):
        out = (out["r"], out.get("c", torch.ones_like(out["r"])), out.get("a", torch.ones_like(out["r"])))
    r, c, a = (v.reshape(b) for v in out)
    return r, c, a


def distill_amed(
    model: Callable,
    *,
    shape: tuple[int, ...] | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    num_steps: int | None = None,
    nfe: int | None = None,
    afs: bool = True,
    schedule: str | None = None,
    rho: float | None = None,
    model_sigmas: torch.Tensor | None = None,
    plugin: str | None = None,
    teacher: str | None = None,
    M: int | None = None,  # noqa: N803
    scale_dir: float = 0.01,
    scale_time: float = 0.0,
    lr: float = 5e-3,
    cosine: bool = False,
    batch: int = 128,
    trajectories: int = 10_000,
    seed: int = 0,
    condition_fn: Callable[[int, torch.Generator], dict] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: Callable[[dict[str, Any]], Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    bptt: bool = False,
    grad_checkpoint: bool = False,
    predictor: torch.nn.Module | None = None,
    flow: bool | None = None,
    max_loss_factor: float = 1e4,
    name: str | None = None,
) -> Coefficients:
    """Distil AMED-Solver (``plugin=None``) or AMED-Plugin on ``plugin`` (ALGORITHMS.md section 4.4).

    Same front end as :func:`distill` (shape / sigmas / schedule from a Denoiser, ``nfe`` or ``num_steps``,
    ``condition_fn``, ``progress``, ``checkpoint``/``resume``, DDP under torchrun).  AMED defaults: Heun teacher with
    M = 1 (plugin: the base solver with M = 2, M = 1 for dpm_2), s_c 0.01, s_a 0, Adam lr 5e-3 constant, batch 128,
    teacher forcing (``bptt=False``).  ``predictor``: an AMED predictor module to train (default: a fresh
    ``samplers.amed.AMEDPredictor`` seeded by ``seed``).  Returns Coefficients of kind ``"amed"`` (predictor weights
    plus the predictor's zero-feature outputs as constant tables) or ``"amed_plugin"`` (tables, ``base``).
    """
    c = resolve_common(model, shape, sigma_min, sigma_max, schedule, rho, model_sigmas, device, dtype)
    if plugin is not None and plugin not in PLUGINS:
        raise ValueError(f"distill_amed: plugin={plugin!r}; trainable AMED-Plugin bases are {', '.join(PLUGINS)} "
                         f"(dpmpp is not implemented for training); None trains AMED-Solver")
    if num_steps is None:
        if nfe is None:
            raise ValueError("distill_amed: pass num_steps= (student grid points N) or nfe=")
        num_steps = steps_for_nfe(int(nfe), afs, 1)
    default_teacher, default_m = PLUGIN_TEACHER[plugin] if plugin else ("heun", 1)
    teacher = teacher or default_teacher
    M = default_m if M is None else M  # noqa: N806
    check_run(num_steps, 1, M, teacher, batch, trajectories, lr)
    check_scales(scale_dir, scale_time, 0.0)
    flow = is_flow_model(model) if flow is None else bool(flow)
    sig, s, fine = grids(c["schedule"], num_steps, M, c["sigma_min"], c["sigma_max"], c["rho"], c["model_sigmas"])
    steps = num_steps - 1
    guard = ModelGuard(model, grad_checkpoint=grad_checkpoint)
    dev = c["device"]

    if plugin is None:
        pred = predictor if predictor is not None else make_predictor(scale_dir, scale_time, seed)
        pred = pred.to(dev).float().train()
        params = {k: p for k, p in pred.named_parameters() if p.requires_grad}

        def student_step(n: int, x: torch.Tensor, eps: Any, extra: dict) -> torch.Tensor:
            b = x.shape[0]
            if afs and n == 0:
                d = afs_direction(x, s[0], flow=flow)
                h = x.new_zeros(b, FEATURE_SIDE * FEATURE_SIDE)
            else:
                den = guard(x, x.new_full((b,), s[n]), **extra)
                d = (x - den) / s[n]
                h = bottleneck_features(model, b, x)
            r, cc, a = (v.to(x.dtype) for v in _predict(pred, h, s[n], s[n + 1]))
            t_mid = s[n + 1] ** r * s[n] ** (1 - r)
            _, _, diff_s = inserted_point(guard, x, s[n], t_mid, d * s[n], a, extra)
            return x + (cc * (s[n + 1] - s[n]) / t_mid).view(-1, *[1] * (x.ndim - 1)) * diff_s

        def constants() -> dict[str, torch.Tensor]:
            rows = []
            with torch.no_grad():
                h = torch.zeros(1, FEATURE_SIDE * FEATURE_SIDE, device=dev)
                for n in range(steps):
                    rows.append(torch.stack([v.float().reshape(()) for v in _predict(pred, h, s[n], s[n + 1])]))
            t = torch.stack(rows).cpu()
            return {"r": t[:, :1], "c": t[:, 1:2], "a": t[:, 2:3]}
    else:
        g = torch.Generator().manual_seed(int(seed))
        raw = {k: torch.randn(steps, 1, generator=g).to(dev).requires_grad_(True) for k in ("r", "c", "a")}
        params = raw
        hist: list[torch.Tensor] = []

        def student_step(n: int, x: torch.Tensor, eps: Any, extra: dict) -> torch.Tensor:
            row = {k: v.to(x.dtype) for k, v in _plugin_rows(raw, n, scale_dir, scale_time).items()}
            r, cc, a = row["r"][0], row["c"][0], row["a"][0]
            b = x.shape[0]
            if afs and n == 0:
                d = afs_direction(x, s[0], flow=flow)
                den = x - d * s[0]
            else:
                den = guard(x, x.new_full((b,), s[n]), **extra)
                d = (x - den) / s[n]
            t_mid = s[n + 1] ** r * s[n] ** (1 - r)
            if plugin == "dpm_2":
                return dpm2_step(guard, x, s[n], s[n + 1], den, r, cc, a, extra)[0]
            if plugin == "euler":
                x_s, _, diff_s = inserted_point(guard, x, s[n], t_mid, d * s[n], a, extra)
                return x_s + cc * (s[n + 1] - t_mid) * diff_s / t_mid
            # ipndm: both half-steps use the Adams-Bashforth combination with the history of half-point directions
            if n == 0:
                hist.clear()
            past = [v.detach() for v in hist]
            order = min(4, len(past) + 1)
            ab = lambda cur, h_: sum(w * v for w, v in zip(AB_COEFFS[order], [cur] + h_[::-1]))  # noqa: E731
            x_s = x + (t_mid - s[n]) * ab(d, past[-(order - 1):] if order > 1 else [])
            past = (past + [d.detach()])[-3:]
            den_s = guard(x_s, x_s.new_full((b,), 1.0) * (a * t_mid), **extra)
            d_s = (x_s - den_s) / t_mid
            order = min(4, len(past) + 1)
            x_next = x_s + cc * (s[n + 1] - t_mid) * ab(d_s, past[-(order - 1):] if order > 1 else [])
            hist[:] = (past + [d_s.detach()])[-3:]
            return x_next

        def constants() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return {k: v.detach().cpu().float() for k, v in
                        {"r": torch.sigmoid(raw["r"]), "c": _amed_scale(raw["c"], scale_dir),
                         "a": _amed_scale(raw["a"], scale_time)}.items()}

    multistep = plugin == "ipndm"

    def snapshot() -> dict[str, Any]:
        return {k: v.tolist() for k, v in constants().items()} | {"sigmas": s}

    kind = "amed_plugin" if plugin else "amed"
    settings = {"kind": kind, "base": plugin, "shape": list(c["shape"]), "sigmas": s, "M": M, "teacher": teacher,
                "afs": afs, "scale_dir": scale_dir, "scale_time": scale_time, "lr": lr, "cosine": cosine,
                "batch": batch, "trajectories": trajectories, "seed": seed, "bptt": bptt or multistep, "flow": flow,
                "loss": "l2"}
    cfg = LoopConfig(shape=c["shape"], sigmas=s, fine=fine, M=M, teacher=teacher, seed=seed, batch=batch,
                     trajectories=trajectories, lr=lr, cosine=cosine, bptt=bptt, flow=flow, device=dev,
                     dtype=c["dtype"], condition_fn=condition_fn, checkpoint=checkpoint,
                     checkpoint_every=checkpoint_every, resume=resume, max_loss_factor=max_loss_factor,
                     settings=settings, teacher_forcing=not (bptt or multistep))
    result = run(model, params, student_step, cfg, snapshot, progress=progress, guard=guard)
    tab = constants()
    ones = torch.ones(steps, 1)
    training = dict(settings, iterations=result.iterations, resumed_from=result.resumed_from,
                    nonfinite_grads=result.nonfinite_grads, seconds=round(result.seconds, 3),
                    teacher_nfe=teacher_nfe(teacher, num_steps, M), losses=final_losses(result.history),
                    torch=torch.__version__)
    training.pop("sigmas")
    out = Coefficients(r=tab["r"], a=tab["a"], c=tab["c"], gamma=torch.zeros(steps, 1), w=ones, sigmas=sig,
                       schedule=c["schedule"], rho=c["rho"], afs=afs,
                       model=identity_of(c["identity"], c["sigma_min"], c["sigma_max"], name), kind=kind,
                       base=plugin, training=training)
    if plugin is None:
        out.predictor = {k: v.detach().cpu().float().contiguous() for k, v in pred.state_dict().items()}
        cfg_fn = getattr(pred, "config", None)
        out.predictor_config = dict(cfg_fn() if callable(cfg_fn) else (cfg_fn or {})) or {
            "scale_dir": scale_dir, "scale_time": scale_time}
    if not math.isfinite(float(tab["r"].sum())):
        raise RuntimeError("distill_amed: non-finite coefficients at the end of training (should be unreachable)")
    return out
