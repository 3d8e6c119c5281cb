"""AMED distillation (docs/ALGORITHMS.md section 4.4): the AMED-Solver predictor and AMED-Plugin tables.

* ``plugin=None`` (AMED-Solver, section 4.2, ``samplers.amed.amed_step``): the predictor g_phi
  (``samplers.amed.AMEDPredictor``) maps the model's bottleneck feature at t_n (channel mean, pooled to 8 x 8, zeros
  with AFS or when the model exposes none) and (t_n, t_{n+1}) to per-sample (r, c, a); step:
  s = t_{n+1}^r t_n^{1-r}, x_s = x_n + (s - t_n) d_n,
  x_{n+1} = x_n + c (t_{n+1} - t_n) (x_s - D(x_s; a s)) / s.
* ``plugin="euler" | "dpm_2" | "ipndm" | "dpmpp"`` (AMED-Plugin, section 4.3): the same predictor g_phi, now
  placing the inserted point and the scales of ``samplers.amed.plugin_step`` (as the AMED paper trains the plugin);
  ``constant=True`` trains constant per-step r, c, a tables instead (raw values mapped as AMED does:
  r = sigmoid, c = 1 - s_c + 2 s_c sigmoid, a likewise).  The base's solver form (``plugin_options``: max_order,
  predict_x0, lower_order_final, taylor_d2, thresholding; default the AMED reference's, ``samplers.amed
  .plugin_solver``) is used by the student and the ipndm / dpmpp teacher alike and stored in the file.

Training follows section 4.4: teacher on the (M + 1)(N - 1) + 1 grid (AMED-Solver: Heun, M = 1; plugin: the base
solver, M = 2, M = 1 for DPM-Solver-2), squared L2 at every step, one Adam step per student step, lr 5e-3 constant,
student detached between steps and restarted from the teacher state (teacher forcing) for single-step students;
multistep students (ipndm, dpmpp) continue from their own detached state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from ..coefficients import Coefficients
from ..errors import UsageError
from ..samplers.amed import (
    PLUGIN_BASES,
    AMEDPredictor,
    PluginHistory,
    amed_step,
    plugin_solver,
    plugin_step,
    predict_coefficients,
    step_options,
)
from ..samplers.common import afs_denoised, is_flow_model
from .adasde import check_run, final_losses, grids, identity_of, resolve_common, steps_for_nfe
from .engine import LoopConfig, ModelGuard, run
from .options import ADASDE_ONLY, AMED_DEFAULTS, DistillOptions, prepare
from .params import check_scales
from .robust import INIT_MODES, HeldOut, scan_total_
from .teacher import teacher_nfe

PLUGINS = PLUGIN_BASES  # euler, dpm_2, ipndm, dpmpp
PLUGIN_TEACHER = {"euler": ("euler", 2), "dpm_2": ("student", 1), "ipndm": ("ipndm", 2), "dpmpp": ("dpmpp", 2)}


def _amed_scale(raw: torch.Tensor, s: float) -> torch.Tensor:
    """AMED's range mapping 1 - s + 2 s sigmoid(raw) (section 4.1); 1 when s = 0."""
    if s <= 0:
        return torch.ones_like(raw)
    return 1 - s + 2 * s * torch.sigmoid(raw)


def distill_amed(model: Callable, options: DistillOptions | None = None, **overrides: Any) -> Coefficients:
    """Distil AMED-Solver (``plugin=None``) or AMED-Plugin on ``plugin`` (docs/ALGORITHMS.md section 4.4).

    Same front end as :func:`distill` (shape / sigmas / schedule from a Denoiser, ``nfe`` or ``num_steps``,
    ``condition_fn``, ``progress``, ``checkpoint``/``resume``, DDP under torchrun).  AMED defaults: Heun teacher with
    M = 1 (plugin: the base solver with M = 2, M = 1 for dpm_2), s_c 0.01, s_a 0, Adam lr 5e-3 constant, batch 128,
    teacher forcing (``bptt=False``).  ``predictor``: an AMED predictor module to train (default: a fresh
    ``samplers.amed.AMEDPredictor`` seeded by ``seed``); ``constant=True`` (plugin only): constant per-step tables
    instead; ``plugin_options``: the plugin base's solver form (module docstring).  Returns Coefficients of kind
    ``"amed"`` or ``"amed_plugin"`` (``base``, ``solver_options``): predictor weights plus the predictor's
    zero-feature outputs as constant tables, or the constant tables alone.
    Settings: ``options`` (a :class:`DistillOptions`) and/or its field names as keywords (keywords win).
    """
    o = prepare("distill_amed", options, overrides, ADASDE_ONLY, "distill (AdaSDE)", AMED_DEFAULTS)
    num_steps, nfe, afs, plugin, teacher, M = o.num_steps, o.nfe, o.afs, o.plugin, o.teacher, o.M  # noqa: N806
    scale_dir, scale_time, lr, cosine, batch = o.scale_dir, o.scale_time, o.lr, o.cosine, o.batch
    trajectories, seed, bptt, predictor = o.trajectories, o.seed, o.bptt, o.predictor
    c = resolve_common(model, o)
    if plugin is not None and plugin not in PLUGINS:
        raise UsageError(f"distill_amed: plugin={plugin!r}; AMED-Plugin bases are {', '.join(PLUGINS)}; "
                         f"None trains AMED-Solver")
    if plugin is None and (o.constant or o.plugin_options):
        what = "constant=True" if o.constant else "plugin_options"
        raise UsageError(f"distill_amed: {what} applies to AMED-Plugin only; pass plugin=BASE (CLI: --method "
                         f"amed_plugin) or drop it")
    if o.constant and predictor is not None:
        raise UsageError("distill_amed: constant=True trains per-step tables, but a predictor was given; drop one")
    form = None
    if plugin is not None:
        try:
            form = plugin_solver(plugin, None, **dict(o.plugin_options or {}))
        except ValueError as exc:
            raise UsageError(f"distill_amed: {exc}") from None
    if num_steps is None:
        if nfe is None:
            raise UsageError("distill_amed: pass num_steps= (student grid points N) or nfe=")
        num_steps = steps_for_nfe(int(nfe), afs, 1)
    default_teacher, default_m = PLUGIN_TEACHER[plugin] if plugin else ("heun", 1)
    teacher = teacher or default_teacher
    M = default_m if M is None else M  # noqa: N806
    check_run(num_steps, 1, M, teacher, batch, trajectories, lr)
    check_scales(scale_dir, scale_time, 0.0)
    flow = is_flow_model(model) if o.flow is None else bool(o.flow)
    sig, s, fine = grids(c["schedule"], num_steps, M, c["sigma_min"], c["sigma_max"], c["rho"], c["model_sigmas"])
    steps = num_steps - 1
    guard = ModelGuard(model, grad_checkpoint=o.grad_checkpoint)
    dev = c["device"]

    features = getattr(model, "bottleneck", None)
    features = features if callable(features) else None

    use_predictor = plugin is None or not o.constant
    hist = [PluginHistory()]
    if use_predictor:
        pred = predictor if predictor is not None else AMEDPredictor(scale_dir, scale_time, seed=seed)
        pred = pred.to(dev).float().train()
        params = {k: p for k, p in pred.named_parameters() if p.requires_grad}

        def coefficients(n: int, x: torch.Tensor) -> tuple[Any, Any, Any]:
            """g_phi on the bottleneck of the model call at t_n (zeros with AFS; section 4.1)."""
            return predict_coefficients(pred, features, x, s[n], s[n + 1], not (afs and n == 0))

        def constants() -> dict[str, torch.Tensor]:
            """The predictor on zero features per step: the constant fallback tables (section 4.5)."""
            with torch.no_grad():
                rows = [torch.stack([v.float().reshape(-1)[0] for v in pred(None, torch.tensor([s[n]], device=dev),
                                                                            torch.tensor([s[n + 1]], device=dev))])
                        for n in range(steps)]
            t = torch.stack(rows).cpu()
            return {"r": t[:, :1], "c": t[:, 1:2], "a": t[:, 2:3]}
    else:
        # raw 0 = r 0.5, c = a = 1: the base solver with geometric midpoints, as the AMED predictor starts (zero biases)
        raw = {k: torch.zeros(steps, 1, device=dev, requires_grad=True) for k in ("r", "c", "a")}
        params = raw

        def coefficients(n: int, x: torch.Tensor) -> tuple[Any, Any, Any]:
            return (torch.sigmoid(raw["r"][n, 0]).to(x.dtype), _amed_scale(raw["c"][n, 0], scale_dir).to(x.dtype),
                    _amed_scale(raw["a"][n, 0], scale_time).to(x.dtype))

        def constants() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return {k: v.detach().cpu().float() for k, v in
                        {"r": torch.sigmoid(raw["r"]), "c": _amed_scale(raw["c"], scale_dir),
                         "a": _amed_scale(raw["a"], scale_time)}.items()}

    if plugin is None:
        def student_step(n: int, x: torch.Tensor, eps: Any, extra: dict) -> torch.Tensor:
            return amed_step(guard, x, s[n], s[n + 1], pred, features, extra_args=extra, afs=afs and n == 0,
                             flow=flow)[0]
    else:
        def student_step(n: int, x: torch.Tensor, eps: Any, extra: dict) -> torch.Tensor:
            if n == 0:
                hist[0] = PluginHistory()
            if afs and n == 0:
                den = afs_denoised(x, s[0], flow)
            else:
                den = guard(x, x.new_full((x.shape[0],), s[n]), **extra)
            r, cc, a = coefficients(n, x)  # right after the call at t_n, so the bottleneck is that call's
            x_next, _ = plugin_step(plugin, guard, x, s[n], s[n + 1], den, r, cc, a, hist[0], extra,
                                    **step_options(form, steps - n))
            hist[0] = hist[0].detach()  # detached history buffers between steps (section 4.4)
            return x_next

    multistep = plugin in ("ipndm", "dpmpp")

    def snapshot() -> dict[str, Any]:
        return {k: v.tolist() for k, v in constants().items()} | {"sigmas": s}

    kind = "amed_plugin" if plugin else "amed"
    settings = {"kind": kind, "base": plugin, "constant": not use_predictor, "solver": form,
                "shape": list(c["shape"]), "sigmas": s, "M": M, "teacher": teacher,
                "afs": afs, "scale_dir": scale_dir, "scale_time": scale_time, "lr": lr, "cosine": cosine,
                "batch": batch, "trajectories": trajectories, "seed": seed, "bptt": bptt or multistep, "flow": flow,
                "loss": "l2", "init": o.init}
    cfg = LoopConfig(shape=c["shape"], sigmas=s, fine=fine, M=M, teacher=teacher, seed=seed, batch=batch,
                     trajectories=trajectories, lr=lr, cosine=cosine, bptt=bptt, flow=flow, device=dev,
                     dtype=c["dtype"], condition_fn=o.condition_fn, checkpoint=o.checkpoint,
                     checkpoint_every=o.checkpoint_every, resume=o.resume, max_loss_factor=o.max_loss_factor,
                     settings=settings, teacher_forcing=not (bptt or multistep),
                     teacher_options=form if teacher == plugin and plugin in ("ipndm", "dpmpp") else None)
    if o.init not in INIT_MODES:
        raise UsageError(f"distill_amed: init={o.init!r}; choose one of {', '.join(INIT_MODES)}")
    held = HeldOut(guard, cfg)
    init_r = None
    if o.init == "scan" and not (o.resume and o.checkpoint is not None and os.path.exists(o.checkpoint)):
        if use_predictor:  # the r head's bias shifts r at every step
            init_r = [scan_total_(pred.head_r.bias, (0,), student_step, held)]
        else:
            init_r = [scan_total_(raw["r"], (n, 0), student_step, held) for n in range(steps)]
    result = run(model, params, student_step, cfg, snapshot, progress=o.progress, guard=guard)
    heldout = held.losses(student_step)
    tab = constants()
    ones = torch.ones(steps, 1)
    training = dict(settings, iterations=result.iterations, resumed_from=result.resumed_from,
                    nonfinite_grads=result.nonfinite_grads, seconds=round(result.seconds, 3),
                    teacher_nfe=teacher_nfe(teacher, num_steps, M), losses=final_losses(result.history),
                    heldout_losses=heldout, heldout_loss=sum(heldout), init_r=init_r, torch=torch.__version__)
    training.pop("sigmas")
    out = Coefficients(r=tab["r"], a=tab["a"], c=tab["c"], gamma=torch.zeros(steps, 1), w=ones, sigmas=sig,
                       schedule=c["schedule"], rho=c["rho"], afs=afs,
                       model=identity_of(c["identity"], c["sigma_min"], c["sigma_max"], o.name), kind=kind,
                       base=plugin, solver_options=form, training=training)
    if use_predictor:
        out.predictor = {k: v.detach().cpu().float().contiguous() for k, v in pred.state_dict().items()}
        cfg_fn = getattr(pred, "config", None)
        out.predictor_config = dict(cfg_fn()) if callable(cfg_fn) else {"scale_dir": scale_dir,
                                                                        "scale_time": scale_time}
    if not math.isfinite(float(tab["r"].sum())):
        raise RuntimeError("distill_amed: non-finite coefficients at the end of training (should be unreachable)")
    return out
