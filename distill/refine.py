"""Endpoint refinement: learn the student's time grid jointly with its coefficients (docs/ALGORITHMS.md section 3.9).

The papers fix the student grid and match the teacher step by step.  After that stage, this one trains

* the interior points of the grid (the ends sigma_max and sigma_min stay): log-sigma increments
  ``log t_n - log t_{n+1} = (log t_0 - log t_N) softmax(u)_n``, so the grid stays strictly decreasing;
* AdaSDE: per-step offsets of r, a and c around the distilled values (``r = sigmoid(logit r0 + u_r)``,
  ``a = a0 exp(0.2 tanh u_a)``, ``c = c0 exp(0.1 tanh u_c)``); gamma and w stay;
* AMED-Solver: the predictor's weights (``w0 + 0.1 delta``: about AMED's own rate),

to minimise the squared distance of the student's *final* sample to the converged solution from the same noise
(Heun at ``teacher_nfe`` model calls on the grid the sampling policy gives Heun): ``E ||x_N(z) - y(z)||^2``,
summed over dimensions, mean over the batch.  Gradients flow through the whole student chain (every model call;
``grad_checkpoint`` recomputes them in backward).  The result is kept only when its loss on held-out trajectories
(indices training never uses) is lower than the start's; ``training["refine"]`` records both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..coefficients import Coefficients
from ..errors import InputFileError, UsageError
from ..policy import plan as make_plan
from ..runtime import rank_world
from ..samplers.adasde import adasde_step
from ..samplers.amed import AMEDPredictor, amed_step
from ..samplers.common import SeededNoise, is_flow_model
from ..samplers.presets import initial_noise
from ..samplers.registry import SAMPLERS
from . import ddp
from .checkpoint import check_resume, load_checkpoint, restore, run_identity, save_checkpoint
from .engine import Adam, ModelGuard, NonFiniteError, _move, _sanitise_, _slice_extra, condition_rng, sample_seed

KINDS = ("adasde", "amed")
SEED_SALT = 0x6E1D  # endpoint trajectories use their own seeds: (seed + salt, index)
HELDOUT_INDEX = 1 << 41  # first index of the held-out trajectories
A_RANGE, C_RANGE = 0.2, 0.1  # a, c stay within exp(+-range) of the distilled values
PREDICTOR_STEP = 0.1  # AMED: weights = distilled + 0.1 delta, so the predictor moves at AMED's own rate (section 4.4)


@dataclass
class RefineOptions:
    """Settings of :func:`refine` (docs/ALGORITHMS.md section 3.9; results in ``bench/results/refine.md``)."""

    trajectories: int = 2560  #: training trajectories (noise -> converged endpoint pairs)
    passes: int = 2  #: passes over them (iterations = passes * trajectories / batch)
    heldout: int = 512  #: held-out trajectories deciding whether the result is kept
    batch: int = 32  #: trajectories per iteration (split across processes under torchrun)
    lr: float = 0.05  #: Adam learning rate, cosine-annealed to 0
    teacher_nfe: int = 35  #: model calls of the converged Heun solution
    seed: int = 0  #: trajectory noise
    grid: bool = True  #: learn the interior grid points
    coefficients: bool = True  #: learn r, a, c (AdaSDE) / the predictor (AMED)
    grad_checkpoint: bool = False  #: recompute model calls in backward (less memory)
    endpoints: str | os.PathLike | None = None  #: cache file of the converged endpoints (reused when it matches)
    checkpoint: str | os.PathLike | None = None  #: resumable checkpoint of the refinement
    checkpoint_every: int = 10  #: iterations between checkpoints
    resume: bool = False  #: continue from ``checkpoint``
    condition_fn: Callable[[int, torch.Generator], dict] | None = None  #: (batch index, rng) -> extra_args
    progress: Callable[[dict[str, Any]], Any] | None = None  #: called after every iteration and endpoint batch
    device: torch.device | str | None = None

    def check(self) -> None:
        """One line per bad value, before any work."""
        for name in ("trajectories", "passes", "heldout", "batch", "teacher_nfe", "checkpoint_every"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise UsageError(f"refine: {name}={v!r} must be an integer >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"refine: lr={self.lr!r} must be a positive number (default 0.05)")
        if not (self.grid or self.coefficients):
            raise UsageError("refine: nothing to learn (grid and coefficients both off)")


def _grid_params(sigmas: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    ls = sigmas.double().log()
    inc = (ls[:-1] - ls[1:]) / float(ls[0] - ls[-1])
    return inc.log().float(), float(sigmas[0]), float(sigmas[-1])


def grid_from(u: torch.Tensor, s_max: float, s_min: float) -> torch.Tensor:
    """The strictly decreasing grid of the increment logits ``u`` between the fixed ends (float64, differentiable)."""
    log_max = math.log(s_max)
    inc = torch.softmax(u.double(), 0) * (log_max - math.log(s_min))
    cum = torch.cumsum(inc, 0)
    inner = torch.exp(log_max - cum[:-1])
    ends = torch.tensor([s_max, s_min], dtype=torch.float64, device=u.device)
    return torch.cat([ends[:1], inner, ends[1:]])


class Student:
    """The trainable student: grid logits plus the kind's coefficient parameters; ``run`` samples differentiably."""

    def __init__(self, coeffs: Coefficients, model: Callable, device: torch.device, flow: bool, learn_grid: bool,
                 learn_coeffs: bool) -> None:
        self.coeffs, self.model, self.flow, self.kind = coeffs, model, flow, coeffs.kind
        u, self.s_max, self.s_min = _grid_params(coeffs.sigmas)
        self.params: dict[str, torch.Tensor] = {}
        self.u = u.to(device).requires_grad_(learn_grid)
        if learn_grid:
            self.params["grid"] = self.u
        self.features = getattr(model, "bottleneck", None) if callable(getattr(model, "bottleneck", None)) else None
        if self.kind == "adasde":
            f = lambda t: t.detach().float().to(device)  # noqa: E731
            self.r0, self.a0, self.c0 = f(coeffs.r), f(coeffs.a), f(coeffs.c)
            self.gamma, self.w = f(coeffs.gamma), f(coeffs.w)
            self.ur = torch.zeros_like(self.r0).requires_grad_(learn_coeffs)
            self.ua = torch.zeros_like(self.a0).requires_grad_(learn_coeffs)
            self.uc = torch.zeros_like(self.c0).requires_grad_(learn_coeffs)
            if learn_coeffs:
                self.params.update(r=self.ur, a=self.ua, c=self.uc)
        else:
            self.pred = AMEDPredictor.from_coefficients(coeffs).to(device).float().eval()
            self.base = {n: p.detach().clone() for n, p in self.pred.named_parameters()}
            self.delta = {n: torch.zeros_like(p).requires_grad_(learn_coeffs) for n, p in self.base.items()}
            if learn_coeffs:
                self.params.update({f"predictor.{n}": d for n, d in self.delta.items()})

    def weights(self) -> dict[str, torch.Tensor]:
        """AMED: the predictor's weights, base + PREDICTOR_STEP * delta."""
        return {n: self.base[n] + PREDICTOR_STEP * self.delta[n] for n in self.base}

    def predictor(self, h: torch.Tensor | None, t_cur: Any, t_next: Any) -> Any:
        """The predictor evaluated with :meth:`weights` (differentiable in the deltas)."""
        return torch.func.functional_call(self.pred, self.weights(), (h, t_cur, t_next))

    def sigmas(self) -> torch.Tensor:
        return grid_from(self.u, self.s_max, self.s_min)

    def tables(self) -> dict[str, torch.Tensor]:
        """AdaSDE: the effective r, a, c (float32)."""
        r = torch.sigmoid(torch.logit(self.r0.clamp(1e-6, 1 - 1e-6)) + self.ur)
        return {"r": r, "a": self.a0 * torch.exp(A_RANGE * torch.tanh(self.ua)),
                "c": self.c0 * torch.exp(C_RANGE * torch.tanh(self.uc))}

    def run(self, x: torch.Tensor, seeds: list[int], extra: dict) -> torch.Tensor:
        """The student's final sample from ``x`` (differentiable in every parameter)."""
        s = self.sigmas().to(x.dtype)
        afs = bool(self.coeffs.afs)
        if self.kind == "adasde":
            t = self.tables()
            noise = SeededNoise(x, seeds)
            for n in range(len(s) - 1):
                g = float(self.w[n] @ self.gamma[n]) if n > 0 else 0.0
                eps = noise() if g > 0 else None
                x, _, _ = adasde_step(self.model, x, s[n], s[n + 1], t["r"][n], t["a"][n], t["c"][n],
                                      self.gamma[n] if n > 0 else 0.0, self.w[n], noise=eps, extra_args=extra,
                                      afs=afs and n == 0, flow=self.flow)
            return x
        for n in range(len(s) - 1):
            x, _, _ = amed_step(self.model, x, s[n], s[n + 1], _Bound(self), self.features, extra_args=extra,
                                afs=afs and n == 0, flow=self.flow)
        return x

    def result(self, training: dict[str, Any]) -> Coefficients:
        """The refined record (schedule ``learned``)."""
        with torch.no_grad():
            out = dataclasses.replace(self.coeffs, sigmas=self.sigmas().detach().cpu(), schedule="learned", rho=1.0,
                                      training=training)
            if self.kind == "adasde":
                t = self.tables()
                out = dataclasses.replace(out, r=t["r"].cpu(), a=t["a"].cpu(), c=t["c"].cpu())
            else:
                self.pred.load_state_dict({**self.pred.state_dict(), **self.weights()})
                state = {k: v.detach().cpu().clone() for k, v in self.pred.state_dict().items()}
                out = dataclasses.replace(out, predictor=state, **_amed_constants(self.pred, out.sigmas))
        return out


class _Bound:
    """The student's predictor as ``amed_step`` calls it (``predictor(h, t, t_next)``, ``bottleneck_dim``)."""

    def __init__(self, student: Student) -> None:
        self.student, self.bottleneck_dim = student, student.pred.bottleneck_dim

    def __call__(self, h: torch.Tensor | None, t_cur: Any, t_next: Any) -> Any:
        return self.student.predictor(h, t_cur, t_next)


def _amed_constants(pred: AMEDPredictor, sigmas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The predictor on zero features per step: the constant fallback tables of an AMED file (section 4.5)."""
    dev = next(pred.parameters()).device
    s = sigmas.tolist()
    rows = [torch.stack([v.float().reshape(-1)[0] for v in pred(None, torch.tensor([s[n]], device=dev),
                                                                torch.tensor([s[n + 1]], device=dev))])
            for n in range(len(s) - 1)]
    t = torch.stack(rows).cpu()
    return {"r": t[:, :1].contiguous(), "c": t[:, 1:2].contiguous(), "a": t[:, 2:3].contiguous()}


class Endpoints:
    """Noise and converged endpoints of this rank's trajectories, computed in batches (and cached in a file)."""

    def __init__(self, model: Callable, coeffs: Coefficients, o: RefineOptions, device: torch.device) -> None:
        self.model, self.o, self.device = model, o, device
        self.rank, self.world = rank_world()
        if o.batch % self.world:
            raise UsageError(f"refine: batch={o.batch} must be divisible by the number of processes ({self.world})")
        self.local = o.batch // self.world
        self.shape = tuple(int(v) for v in model.sample_shape)
        self.sigma_max = float(coeffs.sigmas[0])
        self.teacher = make_plan(model, "heun", nfe=o.teacher_nfe)
        self.batches = math.ceil(o.trajectories / o.batch)
        self.held_batches = math.ceil(o.heldout / o.batch)
        self.flow = is_flow_model(model)

    def seeds(self, b: int) -> list[int]:
        """Seeds of this rank's share of batch ``b`` (negative ``b``: held-out batch ``-b - 1``)."""
        base = HELDOUT_INDEX + (-b - 1) * self.o.batch if b < 0 else b * self.o.batch
        lo = base + self.rank * self.local
        return [sample_seed(self.o.seed + SEED_SALT, i) for i in range(lo, lo + self.local)]

    def extra(self, b: int) -> dict:
        if self.o.condition_fn is None:
            return {}
        it = b if b >= 0 else -1_000_000 + b
        full = dict(self.o.condition_fn(it, condition_rng(self.o.seed + SEED_SALT, it)) or {})
        lo = self.rank * self.local
        return _move(_slice_extra(full, self.o.batch, lo, lo + self.local), self.device)

    def noise(self, b: int) -> torch.Tensor:
        return initial_noise(self.seeds(b), self.shape, 1.0 if self.flow else self.sigma_max, device=self.device)

    def identity(self) -> dict[str, Any]:
        return {"model": run_identity(self.model), "teacher": "heun", "teacher_sigmas": self.teacher.sigmas.tolist(),
                "seed": self.o.seed, "batch": self.o.batch, "rank": self.rank, "world": self.world,
                "shape": list(self.shape), "sigma_max": self.sigma_max, "conditioned": self.o.condition_fn is not None}

    @torch.no_grad()
    def _solve(self, b: int) -> torch.Tensor:
        p = self.teacher
        extra = {**self.extra(b), "seed": self.seeds(b)}
        return SAMPLERS["heun"](self.model, self.noise(b), p.sigmas.to(self.device, torch.float32), extra_args=extra,
                                disable=True, **p.options(self.model)).float()

    def compute(self) -> tuple[dict[int, torch.Tensor], float]:
        """Endpoints of every training and held-out batch of this rank; reuses a matching cache file."""
        want = list(range(self.batches)) + [-i - 1 for i in range(self.held_batches)]
        ident = self.identity()
        path = Path(self.o.endpoints) if self.o.endpoints else None
        if path is not None and self.world > 1:
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
        have: dict[int, torch.Tensor] = {}
        if path is not None and path.exists():
            have = self._load(path, ident)
        t0 = time.perf_counter()
        todo = [b for b in want if b not in have]
        for i, b in enumerate(todo):
            have[b] = self._solve(b)
            if self.o.progress is not None:
                self.o.progress({"phase": "endpoints", "done": i + 1, "total": len(todo)})
            if path is not None and ((i + 1) % 20 == 0 or i + 1 == len(todo)):
                self._save(path, ident, have)
        return {b: have[b].to(self.device) for b in want}, time.perf_counter() - t0

    @staticmethod
    def _save(path: Path, ident: dict[str, Any], have: dict[int, torch.Tensor]) -> None:
        import json

        from safetensors.torch import save

        from ..fileio import atomic_write_bytes

        tensors = {f"b{b}": v.detach().cpu().contiguous() for b, v in have.items()}
        atomic_write_bytes(path, save(tensors, metadata={"adasde_endpoints": json.dumps(ident)}))

    @staticmethod
    def _load(path: Path, ident: dict[str, Any]) -> dict[int, torch.Tensor]:
        import json

        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("adasde_endpoints", "null"))
                if meta != json.loads(json.dumps(ident)):
                    return {}
                return {int(k[1:]): f.get_tensor(k) for k in f.keys() if k[:1] == "b" and k[1:].lstrip("-").isdigit()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            raise InputFileError(f"{path}: not an endpoint cache written by adasde ({type(exc).__name__}); delete it "
                                 "or pass another --endpoints file") from None


def refine(model: Callable, coeffs: Coefficients, options: RefineOptions | None = None,
           **overrides: Any) -> Coefficients:
    """Refine a distilled AdaSDE or AMED-Solver record on ``model`` (module docstring); returns a new record, or
    ``coeffs`` itself (with the held-out losses recorded) when refinement does not lower the held-out loss."""
    o = dataclasses.replace(options or RefineOptions(), **overrides)
    o.check()
    if coeffs.kind not in KINDS:
        raise UsageError(f"refine: {coeffs.source or 'the coefficient set'} holds {coeffs.kind!r} coefficients; "
                         f"refinement supports {', '.join(KINDS)}")
    if coeffs.kind == "amed" and not coeffs.predictor:
        raise UsageError(f"refine: {coeffs.source or 'the AMED record'} has no predictor weights; distil AMED-Solver "
                         "with its predictor first")
    if not hasattr(model, "sample_shape"):
        raise UsageError("refine: the model must be a loaders.Denoiser (it needs sample_shape and a sigma range)")
    device = torch.device(o.device) if o.device is not None else torch.device("cpu")
    flow = is_flow_model(model)
    guard = ModelGuard(model, grad_checkpoint=o.grad_checkpoint)
    student = Student(coeffs, guard, device, flow, o.grid, o.coefficients)
    ends = Endpoints(model, coeffs, o, device)
    targets, endpoint_seconds = ends.compute()
    rank, world = ends.rank, ends.world

    def heldout() -> float:
        total = 0.0
        with torch.no_grad():
            for i in range(ends.held_batches):
                b = -i - 1
                out = student.run(ends.noise(b), ends.seeds(b), ends.extra(b))
                total += float(((out.float() - targets[b]) ** 2).flatten(1).sum(1).sum())
        t = torch.tensor([total], dtype=torch.float64)
        ddp.allreduce_mean_([t])
        return float(t) * world / (ends.held_batches * o.batch)

    before = heldout()
    plist = list(student.params.values())
    opt = Adam(plist, lr=o.lr)
    for p in plist:
        p.grad = torch.zeros_like(p)
    iterations = math.ceil(o.passes * ends.batches)
    settings = json_settings({"kind": coeffs.kind, "start": coeffs.sigmas.tolist(), "model": run_identity(model),
                              "parameterisation": {"a": A_RANGE, "c": C_RANGE, "predictor_step": PREDICTOR_STEP},
                              **{k: getattr(o, k) for k in ("trajectories", "passes", "heldout", "batch", "lr",
                                                            "teacher_nfe", "seed", "grid", "coefficients")}})
    start, history, seconds0 = 0, [], 0.0
    ck = Path(o.checkpoint) if o.checkpoint else None
    if ck is not None and o.resume and ck.exists():
        tensors, meta = load_checkpoint(ck)
        check_resume(ck, meta.get("settings", {}), settings)
        restore(student.params, opt, tensors, meta, ck)
        start, history, seconds0 = int(meta["iteration"]), list(meta["history"]), float(meta.get("seconds", 0))
    t0 = time.perf_counter()
    for it in range(start, iterations):
        b = it % ends.batches
        for g in opt.param_groups:
            g["lr"] = 0.5 * o.lr * (1 + math.cos(math.pi * it / iterations))  # cosine to 0
        for p in plist:
            p.grad.zero_()
        out = student.run(ends.noise(b), ends.seeds(b), ends.extra(b))
        loss = ((out.float() - targets[b]) ** 2).flatten(1).sum(1).mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError(f"refine: the endpoint loss became {value} at iteration {it}; lower lr "
                                 f"(now {o.lr:g})")
        loss.backward()
        _sanitise_(plist)
        ddp.allreduce_mean_([p.grad for p in plist])
        opt.step()
        history.append(value)
        done = it + 1
        seconds = seconds0 + time.perf_counter() - t0
        if ck is not None and (done % o.checkpoint_every == 0 or done == iterations):
            if rank == 0:
                save_checkpoint(ck, student.params, opt, {"iteration": done, "history": history,
                                                          "settings": settings, "seconds": seconds})
            ddp.barrier()
        if o.progress is not None:
            o.progress({"phase": "refine", "iteration": done, "iterations": iterations, "loss": value,
                        "elapsed": seconds})
    after = heldout()
    kept = after < before
    record = {"kept": kept, "heldout_before": before, "heldout_after": after, "iterations": iterations,
              "teacher": f"heun, {ends.teacher.nfe} NFE, {ends.teacher.schedule[0]} grid",
              "trajectories": o.trajectories, "passes": o.passes, "heldout": o.heldout, "batch": o.batch,
              "lr": o.lr, "seed": o.seed, "grid": o.grid, "coefficients": o.coefficients,
              "start_sigmas": [float(v) for v in coeffs.sigmas.tolist()],
              "seconds": round(seconds0 + time.perf_counter() - t0, 3), "endpoint_seconds": round(endpoint_seconds, 3),
              "loss": "sum over dimensions of the squared endpoint error, mean over trajectories"}
    training = {**coeffs.training, "refine": record}
    if not kept:
        return dataclasses.replace(coeffs, training=training)
    return student.result(training)


def json_settings(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))

