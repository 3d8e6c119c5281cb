"""The sampling policy: one place that decides the grid, the coefficient file, the trained rows, the NFE and the
text of every warning, for every door (CLI, ComfyUI, WebUI, diffusers).  docs/ALGORITHMS.md section 10.

* ``steps`` always counts sampling intervals (as every host does); ``num_points = steps + 1``.
* :func:`plan` chooses the grid for a step count or an NFE (the ``adasde`` scheduler, ``adasde sample``, the demo).
* :func:`plan_for_sigmas` fits coefficients to a grid a host already has (another scheduler, a split run).
* Candidate files are ranked deterministically: folder order of the search path, exact family before a file of
  unknown family, exact prediction before "unknown", then the path.  Never "newest wins".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..coefficients import CoefficientFileError, Coefficients, load
from ..coefficients.lookup import matching, normalize_family
from ..errors import UsageError
from ..samplers.adasde import GRID_RTOL, fit_grid
from ..samplers.common import prepare_grid
from ..samplers.presets import PAPER_SCHEDULES, TWO_NFE_PER_STEP, grid_for_nfe
from ..samplers.registry import SAMPLERS
from ..samplers.registry import nfe as count_nfe
from ..samplers.schedules import get_sigmas
from .model import LEARNED, ModelInfo

AUTO = "auto"
UNTRAINED = "untrained"
Choice = str | os.PathLike | Coefficients | None
Dirs = Iterable[str | os.PathLike] | str | os.PathLike | None
_KIND = {"adasde": "adasde", "amed": "amed", "amed_plugin": "amed_plugin"}
_NAMES = {"adasde": "AdaSDE", "amed": "AMED-Solver", "amed_plugin": "AMED-Plugin"}
UNTRAINED_TEXT = {
    "adasde": "untrained AdaSDE (r=0.5, a=c=1, gamma=0: DPM-Solver-2)",
    "amed": "untrained AMED-Solver (r=0.5, c=1: DPM-Solver-2)",
    "amed_plugin": "the AMED-Plugin base solver without its learned correction",
}


@dataclass
class Plan:
    """Everything a door needs to run one sampling call, and to report it.

    ``sigmas``: the positive grid handed to the sampler (float64, ``steps + 1`` points, or the host's grid as given,
    trailing 0 included); ``coeffs``: the coefficient record or None (untrained / training-free); ``offset``: the
    trained row the first step uses; ``notes``: the user-facing warnings, each a full sentence.
    """

    sampler: str
    sigmas: torch.Tensor
    steps: int
    nfe: int
    coeffs: Coefficients | None = None
    offset: int = 0
    afs: bool = False
    schedule: tuple[str, float] = ("custom", 1.0)
    source: str = "training-free"  # training-free | auto | file | untrained | fallback
    notes: list[str] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return self.coeffs is not None

    @property
    def coeffs_path(self) -> str | None:
        return getattr(self.coeffs, "source", None) if self.coeffs is not None else None

    def options(self, model: Any = None) -> dict[str, Any]:
        """Keyword options for ``samplers.SAMPLERS[self.sampler]`` (AMED's predictor reads ``model.bottleneck``)."""
        opts: dict[str, Any] = {}
        if self.sampler in LEARNED:
            opts["coeffs"] = self.coeffs
        if self.sampler in TWO_NFE_PER_STEP or self.sampler in LEARNED:
            opts["afs"] = self.afs
        if self.sampler in ("amed", "amed_plugin") and self.coeffs is not None and self.coeffs.predictor:
            if model is not None and callable(getattr(model, "bottleneck", None)):
                opts["features"] = model.bottleneck
        return opts

    def describe(self) -> str:
        """One line: sampler, steps, NFE, grid and coefficient source (logs, summaries, PNG metadata)."""
        what = {"training-free": "training-free", "untrained": UNTRAINED_TEXT.get(self.sampler, "untrained"),
                "fallback": UNTRAINED_TEXT.get(self.sampler, "untrained")}.get(self.source)
        if what is None:
            what = f"coefficients {Path(self.coeffs_path).name if self.coeffs_path else 'in memory'}"
            if self.offset:
                what += f" (rows from {self.offset})"
        kind, rho = self.schedule
        return (f"{self.sampler}, {self.steps} steps, NFE {self.nfe}, {kind} grid"
                f"{'' if kind in ('discrete', 'custom', 'learned') else f' (rho {rho:g})'}"
                f" {float(self.sigmas[0]):.4g}..{float(self.sigmas[self.sigmas > 0][-1]):.4g}"
                f"{', AFS' if self.afs else ''}, {what}")

    def protocol(self) -> dict[str, Any]:
        """JSON-ready record of the plan (run protocols and result files)."""
        return {"sampler": self.sampler, "steps": self.steps, "nfe": self.nfe, "afs": self.afs,
                "schedule": list(self.schedule), "sigmas": [float(v) for v in self.sigmas],
                "coefficients": self.coeffs_path if self.coeffs is not None else None,
                "coefficient_rows_from": self.offset if self.coeffs is not None else None,
                "source": self.source, "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------------ warning texts
def fallback_note(sampler: str, info: ModelInfo, what: str, fix: str) -> str:
    """The one text every door shows when a learned sampler runs without coefficients."""
    return (f"AdaSDE: no {_NAMES.get(sampler, sampler)} coefficient file fits {what} for model {info.describe()}; "
            f"sampling with {UNTRAINED_TEXT.get(sampler, 'untrained coefficients')}. {fix}")


def _distil_fix(sampler: str, steps: int) -> str:
    if sampler == "adasde":
        return (f"Distil a {steps}-step file (`adasde distill --steps {steps}` or the 'Distill AdaSDE Coefficients' "
                "node), or pick a step count a file was trained for (`adasde coefficients list`).")
    return (f"Distil a {steps}-step file with `adasde distill --method {sampler} --steps {steps}`, or pick a step "
            "count a file was trained for (`adasde coefficients list`).")


# ------------------------------------------------------------------------------------------------ file checks
def _load_choice(choice: Choice) -> Coefficients:
    if isinstance(choice, Coefficients):
        return choice
    return load(choice)


def check_file(coeffs: Coefficients, info: ModelInfo, sampler: str) -> None:
    """Refuse a coefficient file trained for another kind, family, prediction type or sigma range."""
    name = coeffs.source or "the coefficient set"
    if coeffs.kind != _KIND.get(sampler, sampler):
        raise UsageError(f"{name} holds {_NAMES.get(coeffs.kind, coeffs.kind)} coefficients, not "
                         f"{_NAMES.get(sampler, sampler)}; use sampler {coeffs.kind!r} with it, or pick an "
                         f"{sampler} file")
    fam = normalize_family(coeffs.model.family) or "unknown"
    if "unknown" not in (fam, info.family) and fam != info.family:
        raise UsageError(f"{name} was trained for model family {fam!r}, but this model is {info.family!r}; pick a "
                         f"file for {info.family!r}, 'auto' or 'untrained'")
    pred = coeffs.model.prediction
    if "unknown" not in (pred, info.prediction) and pred != info.prediction:
        raise UsageError(f"{name} was trained for {pred!r} prediction, but this model predicts {info.prediction!r}; "
                         f"pick a file for this model, 'auto' or 'untrained'")
    grid = [float(v) for v in coeffs.sigmas.flatten().tolist()]
    if grid[0] > info.sigma_max * (1 + GRID_RTOL) or grid[-1] < info.sigma_min * (1 - GRID_RTOL):
        raise UsageError(f"{name} was trained on sigmas {grid[0]:.4g}..{grid[-1]:.4g}, outside this model's range "
                         f"{info.sigma_min:.4g}..{info.sigma_max:.4g}; pick a file for this model, 'auto' or "
                         "'untrained'")


def candidates(info: ModelInfo, sampler: str, dirs: Dirs = None, steps: int | None = None) -> list[Coefficients]:
    """Readable coefficient files for this model and sampler, best first (module docstring); unreadable ones are
    skipped by the lookup with a warning naming them."""
    entries = matching(None, None, steps=steps, dirs=dirs, kind=_KIND.get(sampler, sampler))
    keyed = []
    for e in entries:
        fam = e.family
        if fam not in (info.family, "unknown") and info.family != "unknown":
            continue
        if e.prediction not in (info.prediction, "unknown") and info.prediction != "unknown":
            continue
        keyed.append(((e.rank, fam != info.family, e.prediction != info.prediction, str(e.path)), e.path))
    out = []
    for _, path in sorted(keyed, key=lambda t: t[0]):
        try:
            c = load(path)
            check_file(c, info, sampler)
        except (CoefficientFileError, UsageError):
            continue
        out.append(c)
    return out


# ------------------------------------------------------------------------------------------------ grids
def schedule_for(info: ModelInfo, sampler: str, schedule: tuple[str, float] | None = None) -> tuple[str, float]:
    """The grid kind: the user's; else the model's default for learned samplers and flow models; else the paper
    schedule of the training-free solver (docs/ALGORITHMS.md section 10)."""
    if schedule is not None:
        return (str(schedule[0]), float(schedule[1]))
    if sampler in LEARNED or info.flow:
        return info.schedule()
    return PAPER_SCHEDULES.get(sampler, ("polynomial", 7.0))


def make_grid(info: ModelInfo, kind: str, rho: float, steps: int) -> torch.Tensor:
    """``steps + 1`` decreasing sigmas of schedule ``kind`` over the model's sigma range (float64)."""
    try:
        return get_sigmas(kind, steps + 1, info.sigma_min, info.sigma_max, rho=rho, model_sigmas=info.model_sigmas,
                          dtype=torch.float64)
    except ValueError as exc:
        raise UsageError(f"schedule {kind!r} (rho {rho:g}) for {info.describe()}: {exc}") from None


def steps_for(sampler: str, nfe: int | None, steps: int | None, afs: bool | None = None) -> tuple[int, bool]:
    """(steps, AFS) for a requested NFE (AFS at odd NFE for two-call solvers) or step count (docs/ALGORITHMS.md
    section 3.3)."""
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if nfe is not None and nfe < 1:
        raise UsageError(f"--nfe must be >= 1, got {nfe}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if nfe is not None:
        n, auto_afs = grid_for_nfe(sampler, int(nfe))
        return n - 1, auto_afs if afs is None else bool(afs)
    if steps is None:
        raise UsageError("give a step count (--steps) or an NFE (--nfe)")
    return int(steps), bool(afs)  # a step count alone: no AFS (a coefficient file brings its own)


# ------------------------------------------------------------------------------------------------ plans
def plan(
    model: Any,
    sampler: str,
    *,
    steps: int | None = None,
    nfe: int | None = None,
    coefficients: Choice = AUTO,
    dirs: Dirs = None,
    schedule: tuple[str, float] | None = None,
    denoise: float = 1.0,
    start_step: int | None = None,
    end_step: int | None = None,
) -> Plan:
    """The plan for ``steps`` (or ``nfe``) of ``sampler`` on a model (a ``ModelInfo`` or a ``loaders.Denoiser``).

    ``coefficients``: ``"auto"`` (the best fitting file on the search path, ``dirs`` first), ``"untrained"``, a file
    or a ``Coefficients`` record.  A named file must fit the model (family, prediction, sigma range) and the step
    count, else :class:`UsageError`; with ``"auto"`` a missing file falls back to untrained with a note.
    ``denoise`` < 1 samples the last ``steps`` intervals of a ``steps / denoise`` grid (img2img), ``start_step`` /
    ``end_step`` one stage of a split run; the trained rows follow (``Plan.offset``).
    """
    info = ModelInfo.of(model)
    if not 0 < denoise <= 1:
        raise UsageError(f"denoise must be in (0, 1], got {denoise}")
    if sampler not in LEARNED:
        if coefficients not in (AUTO, UNTRAINED, None):
            raise UsageError(f"sampler {sampler!r} is training-free and takes no coefficient file; use adasde or amed "
                             "with a coefficient file")
        s, afs = steps_for(sampler, nfe, steps)
        kind, rho = schedule_for(info, sampler, schedule)
        return _cut(Plan(sampler, make_grid(info, kind, rho, _total(s, denoise)), s, 0, None, 0,
                         afs and sampler in TWO_NFE_PER_STEP, (kind, rho), "training-free"),
                    s, denoise, start_step, end_step, nfe)
    named = None if coefficients in (AUTO, UNTRAINED, None) else _load_choice(coefficients)
    if named is not None:
        check_file(named, info, sampler)
        s = named.steps if steps is None and nfe is None else steps_for(sampler, nfe, steps, named.afs)[0]
        total = _total(s, denoise)
        if named.steps != total or (nfe is not None and denoise == 1 and named.nfe != nfe):
            asked = f"NFE {nfe}" if nfe is not None else f"{total} steps"
            raise UsageError(f"{named.source or 'the coefficient file'} was trained for {named.steps} steps (NFE "
                             f"{named.nfe}), but {asked} were asked; ask for {named.steps} steps, or use 'auto'")
        p = Plan(sampler, named.sigmas.to(torch.float64).flatten(), s, 0, named, 0, bool(named.afs),
                 (named.schedule, float(named.rho)), "file")
        return _cut(p, s, denoise, start_step, end_step, nfe)
    s, afs = steps_for(sampler, nfe, steps)
    total = _total(s, denoise)
    if coefficients == AUTO:
        found = candidates(info, sampler, dirs, steps=total)
        if nfe is not None and denoise == 1:
            found = [c for c in found if c.nfe == nfe]
        if found:
            c = found[0]
            p = Plan(sampler, c.sigmas.to(torch.float64).flatten(), s, 0, c, 0, bool(c.afs),
                     (c.schedule, float(c.rho)), "auto")
            return _cut(p, s, denoise, start_step, end_step, nfe)
    kind, rho = schedule_for(info, sampler, schedule)
    p = Plan(sampler, make_grid(info, kind, rho, total), s, 0, None, 0, afs, (kind, rho),
             "untrained" if coefficients == UNTRAINED else "fallback")
    if coefficients != UNTRAINED:
        p.notes.append(fallback_note(sampler, info, f"{total} steps", _distil_fix(sampler, total)))
    return _cut(p, s, denoise, start_step, end_step, nfe)


def _total(steps: int, denoise: float) -> int:
    """Intervals of the full grid whose last ``steps`` are sampled at ``denoise`` (ComfyUI's and A1111's rule)."""
    return steps if denoise >= 1 else max(steps, int(steps / denoise))


def _cut(p: Plan, steps: int, denoise: float, start: int | None, end: int | None, nfe: int | None) -> Plan:
    """Apply img2img (``denoise``) and split-run (``start``/``end``) cuts to a full-grid plan; count the NFE."""
    full = p.sigmas
    total = full.numel() - 1
    lo = total - steps if denoise < 1 else 0
    lo = lo if start is None else max(lo, lo + int(start))
    hi = total if end is None else min(total, (total - steps if denoise < 1 else 0) + int(end))
    if not 0 <= lo < hi <= total:
        raise UsageError(f"start/end steps {start}/{end} leave no interval of the {steps}-step grid")
    p.sigmas = full[lo: hi + 1]
    p.steps = hi - lo
    p.offset = lo if p.coeffs is not None else 0
    if lo > 0:
        p.afs = False  # AFS only from the grid's sigma_max (pure noise)
    p.nfe = count_nfe(p.sampler, p.sigmas, **_count_options(p))
    if nfe is not None and nfe % 2 == 0 and p.sampler in TWO_NFE_PER_STEP and not p.afs:
        p.notes.append(f"AdaSDE: NFE {nfe} is even: {p.sampler} makes two model calls per step, so the analytical "
                       "first step (AFS, which saves one call) is off; an odd NFE uses it.")
    if nfe is not None and denoise == 1 and start is None and end is None and p.nfe != nfe:
        raise UsageError(f"{p.sampler} on this grid makes {p.nfe} model calls, not --nfe {nfe}")
    return p


def _count_options(p: Plan) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if p.sampler in TWO_NFE_PER_STEP or p.sampler in LEARNED:
        opts["afs"] = p.afs
    if p.coeffs is not None:
        opts["coeffs"] = p.coeffs
    return opts


def plan_for_sigmas(
    model: Any,
    sampler: str,
    sigmas: torch.Tensor | Sequence[float],
    *,
    coefficients: Choice = AUTO,
    dirs: Dirs = None,
) -> Plan:
    """Fit coefficients to a grid the host already has (any scheduler; may end in 0).

    The grid fits a file when its positive part is a contiguous part of the trained grid (``fit_grid``); ``"auto"``
    takes the first fitting candidate; a named file that does not fit, or no fitting file, falls back to untrained
    with a note saying why and what to do.
    """
    info = ModelInfo.of(model)
    try:
        positive, zero = prepare_grid(sigmas)
    except ValueError as exc:
        raise UsageError(f"sampling grid: {exc}") from None
    grid = torch.tensor(positive + ([0.0] if zero else []), dtype=torch.float64)
    steps = len(positive) - 1 + int(zero)
    p = Plan(sampler, grid, steps, 0, None, 0, False, ("custom", 1.0), "training-free")
    if sampler not in LEARNED:
        if coefficients not in (AUTO, UNTRAINED, None):
            raise UsageError(f"sampler {sampler!r} is training-free and takes no coefficient file")
        p.nfe = count_nfe(sampler, grid, **_count_options(p))
        return p
    p.source = "untrained"
    if coefficients == UNTRAINED:
        pool: list[Coefficients] = []
    elif coefficients in (AUTO, None):
        pool = candidates(info, sampler, dirs)
    else:
        named = _load_choice(coefficients)
        check_file(named, info, sampler)
        pool = [named]
    for c in pool:
        trained = [float(v) for v in c.sigmas.flatten().tolist()]
        o = fit_grid(positive, trained)
        if o is not None:
            p.coeffs, p.offset, p.afs = c, o, bool(c.afs) and o == 0
            p.source = "auto" if coefficients in (AUTO, None) else "file"
            p.schedule = (c.schedule, float(c.rho))
            break
    if p.coeffs is None and coefficients != UNTRAINED:
        p.source = "fallback"
        what = (f"the {len(positive) - 1}-interval grid {positive[0]:.4g}..{positive[-1]:.4g}"
                f"{' (+ a final step to 0)' if zero else ''}")
        if pool and coefficients not in (AUTO, None):
            c = pool[0]
            what += f" ({c.source} was trained on {c.steps} steps, {float(c.sigmas[0]):.4g}..{float(c.sigmas[-1]):.4g})"
        distil = _distil_fix(sampler, len(positive) - 1)
        fix = "Use the 'adasde' scheduler (it emits the trained grid), or " + distil[0].lower() + distil[1:]
        p.notes.append(fallback_note(sampler, info, what, fix))
    p.nfe = count_nfe(sampler, grid, **_count_options(p))
    return p
