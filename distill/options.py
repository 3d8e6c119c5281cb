"""The settings of one distillation run, shared by :func:`distill.distill` (AdaSDE, docs/ALGORITHMS.md section 3.5) and
:func:`distill.amed.distill_amed` (AMED, section 4.4).

A field left at ``None`` takes the method's default (:data:`ADASDE_DEFAULTS`, :data:`AMED_DEFAULTS`; AMED's teacher
and M also depend on the plugin).  Both functions accept ``options=DistillOptions(...)`` and/or the same names as
keyword arguments; keywords override the fields of ``options``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError

ADASDE_DEFAULTS: dict[str, Any] = {  # the paper's settings (section 3.5 table)
    "teacher": "dpm2", "M": 3, "scale_dir": 0.05, "scale_time": 0.2, "gamma_max": 0.01, "lr": 0.2, "cosine": True,
    "batch": 32, "bptt": True,
}
AMED_DEFAULTS: dict[str, Any] = {  # AMED-Solver / AMED-Plugin (section 4.4)
    "scale_dir": 0.01, "scale_time": 0.0, "lr": 5e-3, "cosine": False, "batch": 128, "bptt": False,
}
ADASDE_ONLY = ("K", "gamma_max", "loss", "feature_net", "decoder", "alpha")
AMED_ONLY = ("plugin", "predictor", "constant", "plugin_options")


@dataclass
class DistillOptions:
    """Settings of a distillation run (``None``: the method's default)."""

    # --- student grid (default: the model's, when it is a loaders.Denoiser) ---
    shape: tuple[int, ...] | None = None  #: (C, H, W) of one sample
    sigma_min: float | None = None  #: lowest sigma of the grid
    sigma_max: float | None = None  #: highest sigma of the grid (the starting noise level)
    num_steps: int | None = None  #: student grid points N; or give ``nfe``
    nfe: int | None = None  #: model calls per sample: (1 + K)(N - 1) - [afs]
    afs: bool = True  #: analytical first step (saves one model call)
    schedule: str | None = None  #: time_uniform | polynomial | logsnr | discrete (default: the model's)
    rho: float | None = None  #: schedule exponent
    model_sigmas: torch.Tensor | None = None  #: the discrete model's sigma table (``schedule="discrete"``)
    # --- teacher ---
    teacher: str | None = None  #: dpm2 (AdaSDE) | heun (AMED-Solver) | dpmpp | euler | ipndm | student
    M: int | None = None  #: teacher points inserted per student interval (AdaSDE 3, AMED 1)
    # --- coefficient ranges ---
    K: int = 1  #: AdaSDE: parallel intermediate points per step
    scale_dir: float | None = None  #: direction-scale range s_c (c in 1 +- s_c; AdaSDE 0.05, AMED 0.01)
    scale_time: float | None = None  #: time-scale range s_a (a in 1 +- s_a; AdaSDE 0.2, AMED 0)
    gamma_max: float | None = None  #: AdaSDE: churn bound (0 = no churn; 0.01)
    # --- loss (AdaSDE) ---
    loss: str = "l2"  #: l2 | feature | l2+feature
    feature_net: Callable[[torch.Tensor], torch.Tensor] | None = None  #: images -> features, for the feature loss
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = None  #: states -> feature-net input (model.decode)
    alpha: float = 20.0  #: weight of the final-step feature loss (times C*H*W)
    # --- optimisation ---
    lr: float | None = None  #: Adam learning rate (AdaSDE 0.2, AMED 5e-3)
    cosine: bool | None = None  #: cosine annealing to min(0.01, lr) (AdaSDE) or constant (AMED)
    batch: int | None = None  #: trajectories per iteration (AdaSDE 32, AMED 128)
    trajectories: int = 10_000  #: teacher trajectories in all
    seed: int = 0  #: initial tables / predictor and trajectory noise
    bptt: bool | None = None  #: back-propagate through the student trajectory (AdaSDE) or teacher-force (AMED)
    init: str = "scan"  #: r start: scan on a held-out batch (robust, distill/robust.py) or the papers' random one
    # --- run ---
    condition_fn: Callable[[int, torch.Generator], dict] | None = None  #: (iteration, rng) -> batch extra_args
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    progress: Callable[[dict[str, Any]], Any] | None = None  #: called after every iteration (engine.run)
    checkpoint: str | os.PathLike | None = None  #: resumable .safetensors checkpoint
    checkpoint_every: int = 10  #: iterations between checkpoints
    resume: bool = False  #: continue from ``checkpoint``
    grad_checkpoint: bool = False  #: recompute model calls in backward (less memory)
    flow: bool | None = None  #: rectified-flow model (default: detected)
    max_loss_factor: float = 1e4  #: stop when the loss exceeds this multiple of the first iteration's
    name: str | None = None  #: model name stored in the file
    # --- AMED ---
    plugin: str | None = None  #: AMED-Plugin base (euler, dpm_2, ipndm, dpmpp); None trains AMED-Solver
    predictor: torch.nn.Module | None = None  #: AMED predictor to train (default: a fresh one)
    constant: bool = False  #: AMED-Plugin: constant per-step r, c, a tables instead of the predictor g_phi
    plugin_options: dict[str, Any] | None = None  #: AMED-Plugin base's solver form (max_order, predict_x0, ...)

    def with_defaults(self, defaults: dict[str, Any]) -> DistillOptions:
        """A copy with every ``None`` field named in ``defaults`` filled in."""
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


FIELDS = tuple(f.name for f in dataclasses.fields(DistillOptions))


def merge(where: str, options: DistillOptions | None, overrides: dict[str, Any]) -> DistillOptions:
    """``options`` (or the defaults) with keyword ``overrides`` applied; an unknown name is a :class:`UsageError`."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown option(s) {', '.join(unknown)}; the options are the fields of "
                         f"adasde.distill.DistillOptions")
    if options is not None and not isinstance(options, DistillOptions):
        raise UsageError(f"{where}: options={type(options).__name__}; pass a DistillOptions")
    return dataclasses.replace(options or DistillOptions(), **overrides)


def reject(where: str, opts: DistillOptions, names: tuple[str, ...], other: str) -> None:
    """Raise when an option of the other method was changed from its default."""
    base = DistillOptions()
    bad = [n for n in names if getattr(opts, n) != getattr(base, n)]
    if bad:
        raise UsageError(f"{where}: {', '.join(bad)} only apply to {other}; leave them unset here")


def prepare(where: str, options: DistillOptions | None, overrides: dict[str, Any], foreign: tuple[str, ...],
            other: str, defaults: dict[str, Any]) -> DistillOptions:
    """The settings of one distillation method: :func:`merge`, :func:`reject` the ``foreign`` options of the
    ``other`` method, then fill the method's ``defaults``."""
    o = merge(where, options, overrides)
    reject(where, o, foreign, other)
    return o.with_defaults(defaults)
