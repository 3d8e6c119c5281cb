"""``AdaSDEScheduler`` and ``AMEDPluginScheduler``: few-step samplers for diffusers (docs/HOSTS.md section D2).

The sampler math is docs/ALGORITHMS.md sections 3.2 (AdaSDE) and 4.3 (AMED-Plugin); state lives in sigma form
(x = x0 + sigma eps, the same state as :func:`adasde.samplers.sample_adasde`, diffusers' ``EulerDiscreteScheduler``).
Each solver step needs 1 + K network evaluations (the start point at t_hat, then K intermediate points at a_k s_k), so
- as diffusers' second-order schedulers do - ``timesteps`` lists every evaluation point and :meth:`step` is a small
state machine: it returns the sample at the next evaluation point, and after the last evaluation of a step the new
state x_{n+1}, already churned to t_hat_{n+1} = (1 + gamma_{n+1}) t_{n+1} with noise from ``generator`` (or from
per-sample seeds, :meth:`set_noise_seeds`, bit-identical to ``sample_adasde(..., extra_args={"seed": ...})``).
With AFS the first evaluation is skipped (its analytical direction moves the model input inside
:meth:`scale_model_input`), so ``len(timesteps)`` is exactly the NFE.  Coefficients live in the config as float lists
(``register_to_config``), so ``save_pretrained`` / ``from_pretrained`` round-trip them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .. import policy
from ..coefficients import load
from ..coefficients.lookup import normalize_family
from ..coefficients.record import Coefficients, ModelIdentity
from ..errors import UsageError
from ..loaders.parameterisation import Parameterization
from ..samplers.adasde import CoefficientMismatchWarning, resolve_tables
from ..samplers.common import SeededNoise, afs_direction, churn, sample_seeds
from ..samplers.schedules import DEFAULT_RHO

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "flow": "flow_prediction"}
TABLE_NAMES = ("r", "a", "c", "gamma", "w")


@dataclass
class _Eval:
    kind: str  # "hat" (start point), "mid" (intermediate point k) or "final" (denoise at sigma_min)
    n: int
    k: int
    sigma: float  # sigma the network sees


class AdaSDEScheduler(SchedulerMixin, ConfigMixin):
    """AdaSDE (NeurIPS 2025) with learned per-step coefficients for diffusers pipelines (module docstring).

    The grid, the coefficient file, the trained rows and the NFE come from the sampling policy (``policy.plan``,
    docs/ALGORITHMS.md section 10) for the model described by this config (:meth:`model_info`), exactly as
    ``adasde sample`` and the other hosts decide them; the policy's notes are issued as
    :class:`CoefficientMismatchWarning`.  Build it with :meth:`from_coefficients` (a coefficient file or record,
    stored in the config) or from a pipeline's scheduler config with ``coefficients="auto"`` (the best fitting file
    on the search path), a file path, or ``"untrained"``.

    Args:
        num_train_timesteps: training timesteps of the model (the length of its beta / sigma table).
        beta_start: first beta of the model's training schedule (DDPM/LDM/SD models).
        beta_end: last beta of the model's training schedule.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``, as in the pipeline's config.
        trained_betas: an explicit beta table instead of ``beta_start`` / ``beta_end`` / ``beta_schedule``.
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow_prediction"`` (FlowMatch
            configs are recognised by class name too).
        shift: time shift of a flow-matching model (SD3: 3.0); part of the model's identity for the policy.
        coefficients: ``"auto"`` (default), ``"untrained"`` or the path of a coefficient file; ignored when the
            tables below are set (they are the chosen coefficients).
        coefficient_dirs: folders searched first by ``"auto"`` (then ``$ADASDE_COEFFICIENTS`` and the shipped
            files).
        model_family: the model family (``"sd15"``, ``"sdxl"``, ``"sd3"``, ...); files of another family are
            never chosen and a named one is refused.  ``None``: unknown (any family fits).
        schedule: grid kind for untrained sampling (``"polynomial"``, ``"logsnr"``, ``"time_uniform"``,
            ``"discrete"``, ``"flow_shift"``); ``None``: the model's default grid (the policy's choice).  A
            coefficient file brings its own grid.
        rho: exponent of ``schedule`` (``None``: its default).
        sigma_min: lower end of the model's sigma range (``None``: from the training table).
        sigma_max: upper end of the model's sigma range (``None``: from the training table).
        coeff_sigmas: the trained grid of the stored coefficients (``steps + 1`` decreasing sigmas).
        r: trained step ratios, ``[steps][K]`` (docs/ALGORITHMS.md section 3.2).
        a: trained time scalings, ``[steps][K]``.
        c: trained gradient scalings, ``[steps][K]``.
        gamma: trained churn amounts, ``[steps][K]``.
        w: trained point weights, ``[steps][K]``.
        afs: the stored coefficients were trained with AFS (analytical first step, one model call fewer).
        s_noise: scale of the churn noise.
        kind: ``"adasde"``, ``"amed"`` or ``"amed_plugin"`` (the sampler the stored coefficients belong to).
        base: AMED-Plugin base solver (``"euler"`` or ``"dpm_2"``).
        denoise_final: one extra model call that denoises the last state to sigma = 0.
        model_prediction: prediction type the stored coefficients were trained for (``"eps"``, ``"v"``, ...).
    """

    order = 2
    churn = True  # AdaSDE's learned churn (False for the deterministic AMED-Plugin)
    _compatibles: list[str] = []

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        shift: float = 1.0,
        coefficients: str | None = "auto",
        coefficient_dirs: list[str] | None = None,
        model_family: str | None = None,
        schedule: str | None = None,
        rho: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        coeff_sigmas: list[float] | None = None,
        r: list[list[float]] | None = None,
        a: list[list[float]] | None = None,
        c: list[list[float]] | None = None,
        gamma: list[list[float]] | None = None,
        w: list[list[float]] | None = None,
        afs: bool = False,
        s_noise: float = 1.0,
        kind: str = "adasde",
        base: str | None = None,
        denoise_final: bool = False,
        model_prediction: str | None = None,
    ) -> None:
        cfg = {"_class_name": "FlowMatch" if prediction_type == "flow_prediction" else type(self).__name__,
               "num_train_timesteps": num_train_timesteps, "beta_start": beta_start, "beta_end": beta_end,
               "beta_schedule": beta_schedule, "trained_betas": trained_betas, "prediction_type": prediction_type,
               "shift": shift}
        self.param = Parameterization.from_scheduler_config(cfg, f"{type(self).__name__} config")
        self.coeffs = self._record()
        self.plan: policy.Plan | None = None
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.grid: list[float] = []
        self._evals: list[_Eval] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._scaled: int | None = None
        self._cut: tuple[float, int | None, int | None] = (1.0, None, None)
        self._noise_seeds: list[int] | None = None
        self._noise: SeededNoise | None = None
        self._reset_state()

    # ------------------------------------------------------------------------------------------- coefficients
    def _record(self) -> Coefficients | None:
        cfg = self.config
        if cfg.r is None:
            return None
        if cfg.coeff_sigmas is None:
            raise UsageError(f"{type(self).__name__}: coefficient tables given without coeff_sigmas (their grid)")
        t = {k: torch.tensor(getattr(cfg, k) if getattr(cfg, k) is not None else _default(k, cfg.r),
                             dtype=torch.float64) for k in TABLE_NAMES}
        steps = len(cfg.coeff_sigmas) - 1
        for k, v in t.items():
            if v.ndim != 2 or v.shape[0] != steps:
                raise UsageError(f"{type(self).__name__}: coefficient table {k!r} has shape {tuple(v.shape)}, "
                                 f"expected [{steps}, K] for a {steps + 1}-point grid")
        source = cfg.coefficients if cfg.coefficients not in (None, policy.AUTO, policy.UNTRAINED) else None
        sched = cfg.schedule or "custom"
        co = Coefficients(**t, sigmas=torch.tensor(cfg.coeff_sigmas, dtype=torch.float64), afs=bool(cfg.afs),
                          schedule=sched, rho=float(cfg.rho if cfg.rho is not None else 1.0), kind=cfg.kind,
                          base=cfg.base, model=ModelIdentity(family=cfg.model_family or "unknown",
                                                             prediction=cfg.model_prediction or "unknown"))
        co.source = source
        return co

    def model_info(self) -> policy.ModelInfo:
        """The model as the policy sees it: family (config), prediction type, sigma range and discrete table from
        the betas, flow shift for flow-matching configs (docs/ALGORITHMS.md section 10)."""
        cfg, p = self.config, self.param
        flow = p.kind == "flow"
        table = p.model_sigmas()  # the same table the library's loader gives its denoiser
        return policy.ModelInfo(
            family=cfg.model_family or "unknown", prediction=p.family_prediction,
            sigma_min=float(cfg.sigma_min if cfg.sigma_min is not None else p.sigma_min),
            sigma_max=float(cfg.sigma_max if cfg.sigma_max is not None else p.sigma_max),
            model_sigmas=table, flow=flow, flow_shift=float(cfg.shift) if flow else None)

    @classmethod
    def for_pipeline(cls, scheduler_config: Any, **overrides: Any) -> AdaSDEScheduler:
        """Scheduler for a pipeline's model from its scheduler config (beta table, prediction type; FlowMatch
        configs: flow prediction and shift), e.g. ``AdaSDEScheduler.for_pipeline(pipe.scheduler.config,
        model_family="sd3", coefficients="auto")``.  Resolution-dependent shifts (Flux) are refused."""
        cfg = dict(scheduler_config)
        kw = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                                  "prediction_type", "shift") if cfg.get(k) is not None}
        if "FlowMatch" in str(cfg.get("_class_name", "")):
            if cfg.get("use_dynamic_shifting"):
                raise UsageError(f"{cfg.get('_class_name')} with use_dynamic_shifting (a resolution-dependent shift, "
                                 f"Flux): {cls.__name__} needs a fixed shift; pass shift= for your resolution")
            kw["prediction_type"] = "flow_prediction"
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_coefficients(cls, source: str | os.PathLike | Coefficients, base_config: Any = None,
                          **overrides: Any) -> AdaSDEScheduler:
        """Scheduler from a coefficient file or record.  ``base_config``: the pipeline's scheduler config (its beta
        schedule, prediction type and shift are kept), e.g.
        ``AdaSDEScheduler.from_coefficients(f, pipe.scheduler.config, model_family="sd15")``.
        """
        co = source if isinstance(source, Coefficients) else load(source)
        cls._check_kind(co)
        kw: dict[str, Any] = {}
        if base_config is not None:
            for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                        "prediction_type", "shift"):
                if key in base_config and base_config[key] is not None:
                    kw[key] = base_config[key]
        pred = PREDICTION_TO_DIFFUSERS.get(co.model.prediction)
        if pred is not None:
            kw.setdefault("prediction_type", pred)
        sig = co.sigmas.flatten().to(torch.float64)
        family = normalize_family(co.model.family)
        kw.update(coeff_sigmas=sig.tolist(), afs=bool(co.afs), schedule=co.schedule, rho=float(co.rho),
                  kind=co.kind, base=co.base, model_family=None if family in (None, "unknown") else family,
                  model_prediction=co.model.prediction, coefficients=co.source,
                  **{k: getattr(co, k).to(torch.float64).tolist() for k in TABLE_NAMES})
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def _check_kind(cls, co: Coefficients) -> None:
        if co.kind == "amed_plugin":
            raise UsageError(f"{co.source or 'coefficients'}: kind 'amed_plugin' (base {co.base}); use "
                             "AMEDPluginScheduler.from_coefficients")
        if co.kind == "amed" and co.predictor is not None:
            warnings.warn("AMED coefficients: a diffusers scheduler has no bottleneck features, so the per-sample "
                          "predictor is replaced by its constant tables (as the authors' diffusers demo does)",
                          stacklevel=3)

    # ------------------------------------------------------------------------------------------- diffusers API
    @property
    def init_noise_sigma(self) -> float:
        """x_T = sigma_max z: the pipeline multiplies unit noise by this."""
        if self.grid:
            return float(self.grid[0])
        return float(self.model_info().sigma_max)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_noise_seeds(self, seeds: int | list[int] | torch.Tensor | None) -> None:
        """Per-sample churn noise: sample i of the batch uses its own generator (int s -> s, s+1, ...), exactly as
        ``sample_adasde`` with ``extra_args={"seed": seeds}``; None: use the ``generator`` passed to :meth:`step`."""
        self._noise_seeds = None if seeds is None else seeds
        self._noise = None

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    def _sampler(self) -> str:
        return "amed_plugin" if isinstance(self, AMEDPluginScheduler) else self.config.kind

    def make_plan(self, num_inference_steps: int | None = None, denoise: float = 1.0, start_step: int | None = None,
                  end_step: int | None = None) -> policy.Plan:
        """The policy's plan for ``num_inference_steps`` sampling steps (``None``: the stored file's step count)."""
        cfg = self.config
        choice: Any = self.coeffs if self.coeffs is not None else (cfg.coefficients or policy.AUTO)
        if num_inference_steps is None:
            if self.coeffs is None:
                raise UsageError(f"{type(self).__name__}: give num_inference_steps (no coefficient file is stored)")
            num_inference_steps = self.coeffs.steps if denoise >= 1 else None
            if num_inference_steps is None:
                raise UsageError(f"{type(self).__name__}: give num_inference_steps with denoise < 1")
        sched = None if cfg.schedule is None or self.coeffs is not None else (
            cfg.schedule, cfg.rho if cfg.rho is not None else DEFAULT_RHO.get(cfg.schedule, 1.0))
        return policy.plan(self.model_info(), self._sampler(), steps=int(num_inference_steps), coefficients=choice,
                           dirs=cfg.coefficient_dirs, schedule=sched, denoise=denoise, start_step=start_step,
                           end_step=end_step)

    def set_cut(self, denoise: float = 1.0, start_step: int | None = None, end_step: int | None = None) -> None:
        """Cut the grid of every following :meth:`set_timesteps` (a pipeline calls it with the step count only):
        ``denoise`` < 1 samples the last ``steps`` intervals of a ``steps / denoise`` grid (img2img; start from
        ``init + init_noise_sigma * noise``), ``start_step`` / ``end_step`` one stage of a split run.  The diffusers
        Img2Img pipelines slice ``timesteps`` by ``order`` per step, which does not fit a scheduler whose steps make
        1 + K model calls; run a text-to-image pipeline with ``latents`` instead."""
        self._cut = (float(denoise), start_step, end_step)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      denoise: float | None = None, start_step: int | None = None, end_step: int | None = None,
                      **kwargs: Any) -> None:
        """Evaluation points of the policy's plan for ``num_inference_steps`` steps (``None``: the stored file's
        count).  ``denoise`` / ``start_step`` / ``end_step`` (default: :meth:`set_cut`) cut the grid as in every
        other door; the trained rows follow.  ``timesteps`` holds one network timestep per model call, so
        ``len(timesteps)`` is the NFE."""
        if kwargs.get("timesteps") is not None or kwargs.get("sigmas") is not None:
            raise UsageError(f"{type(self).__name__} takes its grid from the sampling policy; custom timesteps / "
                             "sigmas are not supported (use adasde.samplers with your grid)")
        d, lo, hi = self._cut
        self.plan = self.make_plan(num_inference_steps, d if denoise is None else denoise,
                                   lo if start_step is None else start_step, hi if end_step is None else end_step)
        for note in self.plan.notes:
            warnings.warn(note, CoefficientMismatchWarning, stacklevel=2)
        self.grid = [float(v) for v in self.plan.sigmas.tolist()]
        self.num_inference_steps = len(self.grid) - 1
        self.tables = resolve_tables(self.plan.coeffs, self.grid, afs=self.plan.afs, warn=False)
        self._build_evals()
        sig = torch.tensor([e.sigma for e in self._evals], dtype=torch.float64)
        self.sigmas = sig.to(device=device, dtype=torch.float32)
        self.timesteps = self.param.timestep(sig).to(device=device, dtype=torch.float32)
        self._step_index = None
        self._begin_index = None
        self._scaled = None
        self._noise = None
        self._reset_state()

    def _build_evals(self) -> None:
        """t_hat_n, s_{n,k} (docs/ALGORITHMS.md section 3.2, steps 2 and 4) in float32 like the functional sampler."""
        tb = {k: getattr(self.tables, k).to(torch.float32) for k in TABLE_NAMES}
        self.t_hat: list[Any] = []
        self.s_mid: list[list[Any]] = []
        self._evals = []
        self.draws: list[bool] = []
        for n in range(len(self.grid) - 1):
            sigma, nxt = self.grid[n], self.grid[n + 1]
            first_row = self.tables.offset + n == 0  # gamma_0 = 0 on the trained grid's first row (section 3.1)
            gbar = None if first_row else (tb["w"][n] * tb["gamma"][n]).sum(-1)
            draw = gbar is not None and float(gbar) != 0.0 and self.tables.trained and self.churn
            t_hat = sigma * (1 + gbar) if draw else sigma
            if draw and self.param.kind == "flow":
                t_hat = torch.clamp(t_hat, max=1.0)
            self.draws.append(draw)
            self.t_hat.append(t_hat)
            if not (self.tables.afs and n == 0):
                self._evals.append(_Eval("hat", n, -1, float(t_hat)))
            mids = []
            for k in range(self.tables.K):
                r_k, a_k = tb["r"][n, k], tb["a"][n, k]
                s_k = nxt**r_k * t_hat ** (1 - r_k)
                mids.append(s_k)
                self._evals.append(_Eval("mid", n, k, float(a_k * s_k)))
            self.s_mid.append(mids)
        if self.config.denoise_final:
            self._evals.append(_Eval("final", len(self.grid) - 1, -1, self.grid[-1]))
        self._tb = tb

    def _reset_state(self) -> None:
        self._start: torch.Tensor | None = None
        self._x_hat: torch.Tensor | None = None
        self._d_hat: torch.Tensor | None = None
        self._acc: Any = None

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        t = torch.as_tensor(timestep, dtype=torch.float32).to(self.timesteps.device).flatten()[:1]
        hits = (self.timesteps - t).abs() <= 1e-4 * (1 + t.abs())
        idx = hits.nonzero().flatten()
        self._step_index = int(idx[0]) if idx.numel() else 0

    def _current(self) -> _Eval:
        if not self._evals:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps() before scale_model_input()/step()")
        if self._step_index is None or self._step_index >= len(self._evals):
            raise RuntimeError(f"{type(self).__name__}: step() called more often than there are timesteps "
                               f"({len(self._evals)}); call set_timesteps() again for a new image")
        return self._evals[self._step_index]

    def _afs_first(self, e: _Eval) -> bool:
        return e.kind == "mid" and e.n == 0 and e.k == 0 and self.tables.afs

    def _afs_point(self, sample: torch.Tensor) -> torch.Tensor:
        """The first model input under AFS: x_0 + (s_0 - t_0) x_0 / sqrt(1 + t_0^2) (section 3.2 step 3)."""
        t0 = self.t_hat[0]
        return sample + (self.s_mid[0][0] - t0) * afs_direction(sample, t0, flow=self.param.kind == "flow")

    def _prepared(self, e: _Eval) -> bool:
        """The first evaluation needs a start point other than the pipeline's sample (AFS, or churn on a trained
        row > 0 after an img2img / split cut): only :meth:`scale_model_input` can hand that to the network."""
        return e.n == 0 and self._step_index == self._first_index() and (self.tables.afs or self.draws[0])

    def _first_index(self) -> int:
        return self._begin_index or 0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Network input c_in(sigma) x at the current evaluation point."""
        if self._step_index is None:
            self._init_step_index(timestep)
        e = self._current()
        x = sample.float()
        if self._prepared(e):
            if self.draws[0]:
                B = x.shape[0]
                doubled = B % 2 == 0 and torch.equal(x[: B // 2], x[B // 2:])  # the pipeline's CFG batch [x; x]
                one = x[: B // 2] if doubled else x
                one = churn(one, self.grid[0], self.t_hat[0], self._draw(one, None), flow=self.param.kind == "flow",
                            s_noise=float(self.config.s_noise))
                x = torch.cat([one, one]) if doubled else one
                self._start = one
            self._scaled = self._step_index
            if self._afs_first(e):
                x = self._afs_point(x)
        c = self.param.c_in(torch.tensor([e.sigma], dtype=torch.float64)).item()
        return (x * c).to(sample.dtype)

    def _denoised(self, model_output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        return self.param.denoised(model_output.float(), x, s)

    def _draw(self, x: torch.Tensor, generator: Any) -> torch.Tensor:
        if self._noise_seeds is not None:
            if self._noise is None:
                self._noise = SeededNoise(x, sample_seeds(self._noise_seeds, x.shape[0]))
            return self._noise()
        return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _combine(self, n: int) -> torch.Tensor:
        """x_{n+1} = x_hat + (t_{n+1} - t_hat) sum_k w_k c_k d_k (section 3.2 step 5)."""
        return self._x_hat + (self.grid[n + 1] - self.t_hat[n]) * self._acc

    def _accumulate(self, n: int, k: int, d_k: torch.Tensor) -> None:
        wc = self._tb["w"][n, k] * self._tb["c"][n, k]
        self._acc = wc * d_k if self._acc is None else self._acc + wc * d_k

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True, **kwargs: Any) -> SchedulerOutput | tuple[torch.Tensor]:
        """Consume one network output; return the sample at the next evaluation point (or x_{n+1}, churned)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        e = self._current()
        x = sample.float()
        flow = self.param.kind == "flow"
        if self._prepared(e):
            if self._scaled != self._step_index:
                raise UsageError(f"{type(self).__name__}: this pipeline did not call scale_model_input() before the "
                                 "first step, but this plan starts with "
                                 + ("AFS" if self.tables.afs else "churn on a trained row")
                                 + "; use a pipeline that calls it, or a coefficient file trained without AFS")
            if self.draws[0]:
                x = self._start
        if e.kind == "final":
            prev = self._denoised(model_output, x, e.sigma)
        elif e.kind == "hat":
            t_hat = self.t_hat[e.n]
            self._x_hat = x
            self._d_hat = (x - self._denoised(model_output, x, e.sigma)) / t_hat
            self._acc = None
            prev = x + (self.s_mid[e.n][0] - t_hat) * self._d_hat
        else:
            n, k = e.n, e.k
            if self._afs_first(e):
                self._x_hat = x
                self._d_hat = afs_direction(x, self.t_hat[0], flow=flow)
                self._acc = None
                x = self._afs_point(x)
            s_k = self.s_mid[n][k]
            self._accumulate(n, k, (x - self._denoised(model_output, x, e.sigma)) / s_k)
            if k + 1 < len(self.s_mid[n]):
                prev = self._x_hat + (self.s_mid[n][k + 1] - self.t_hat[n]) * self._d_hat
            else:
                prev = self._combine(n)
                if n + 1 < len(self.grid) - 1 and self.draws[n + 1]:
                    eps = self._draw(prev, generator)
                    prev = churn(prev, self.grid[n + 1], self.t_hat[n + 1], eps, flow=flow,
                                 s_noise=float(self.config.s_noise))
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x0 + sigma(t) noise for network timesteps ``t`` (img2img start points)."""
        t = torch.as_tensor(timesteps, device="cpu").flatten().to(torch.float64)
        if self.param.kind == "vp":
            sig = self.param.table.t_to_sigma(t)
        elif self.param.kind == "flow":
            sig = t / self.param.num_train_timesteps
        else:
            sig = (4 * (t / 1000 if self.param.cm_noise else t)).exp()
        sig = sig.to(original_samples.device, torch.float32).view(-1, *([1] * (original_samples.ndim - 1)))
        if self.param.kind == "flow":
            return ((1 - sig) * original_samples.float() + sig * noise.float()).to(original_samples.dtype)
        return (original_samples.float() + sig * noise.float()).to(original_samples.dtype)


def _default(name: str, r: list[list[float]]) -> list[list[float]]:
    K = len(r[0]) if r else 1
    v = {"a": 1.0, "c": 1.0, "gamma": 0.0, "w": 1.0 / K}[name]
    return [[v] * K for _ in r]


class AMEDPluginScheduler(AdaSDEScheduler):
    """AMED-Plugin (CVPR 2024, docs/ALGORITHMS.md section 4.3) with constant per-step r, a, c on a base solver (a file
    distilled with the predictor g_phi contributes its zero-feature tables, section 4.5, with a warning).

    ``base="euler"``: x_s = x_n + (s - t_n) d_n, x_{n+1} = x_s + c (t_{n+1} - s) d_s;
    ``base="dpm_2"``: x_{n+1} = x_n + c (t_{n+1} - t_n) [(1/2r) d_s + (1 - 1/2r) d_n]
    (d_s evaluated at network sigma a s).  No churn; one inserted point per interval (K = 1).
    """

    BASES = ("euler", "dpm_2")
    churn = False

    @classmethod
    def _check_kind(cls, co: Coefficients) -> None:
        if co.kind != "amed_plugin":
            raise UsageError(f"{co.source or 'coefficients'}: kind {co.kind!r}; AMEDPluginScheduler needs "
                             "'amed_plugin' coefficients (use AdaSDEScheduler)")
        if co.base not in cls.BASES:
            raise UsageError(f"{co.source or 'coefficients'}: AMED-Plugin base {co.base!r} is not available as a "
                             f"diffusers scheduler (supported: {', '.join(cls.BASES)}); multistep bases (ipndm, "
                             "dpmpp) run through adasde.samplers instead")
        if co.K != 1:
            raise UsageError(f"AMED-Plugin uses one inserted point per interval, the coefficients have K={co.K}")
        if co.predictor is not None:
            warnings.warn("AMED-Plugin coefficients with a predictor: a diffusers scheduler has no bottleneck "
                          "features, so the per-sample predictor is replaced by its constant tables (its outputs on "
                          "zero features, docs/ALGORITHMS.md section 4.5)", stacklevel=3)

    def _build_evals(self) -> None:
        base = self.config.base or "euler"
        if base not in self.BASES:
            raise UsageError(f"AMEDPluginScheduler: base {base!r} not supported ({', '.join(self.BASES)})")
        super()._build_evals()

    def _accumulate(self, n: int, k: int, d_k: torch.Tensor) -> None:
        self._acc = d_k

    def _combine(self, n: int) -> torch.Tensor:
        t_n, nxt, s = self.t_hat[n], self.grid[n + 1], self.s_mid[n][0]
        r, c = self._tb["r"][n, 0], self._tb["c"][n, 0]
        if (self.config.base or "euler") == "euler":
            x_s = self._x_hat + (s - t_n) * self._d_hat
            return x_s + c * (nxt - s) * self._acc
        return self._x_hat + c * (nxt - t_n) * (self._acc / (2 * r) + (1 - 1 / (2 * r)) * self._d_hat)
