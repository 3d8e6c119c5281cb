"""AdaSDE / AMED inside AUTOMATIC1111 and Forge (docs/HOSTS.md sections C1, C2 and C3).

A thin adapter: every decision about grids, coefficient files, trained rows, NFE and warning texts is the sampling
policy's (``policy.plan`` for the ``AdaSDE`` scheduler, ``policy.plan_for_sigmas`` for the samplers on whatever grid
the host passes); this module only translates the host's objects into ``policy.ModelInfo`` and the policy's answer
into host calls, log lines, ``p.comment`` and the infotext.

* :func:`register` adds the samplers ``AdaSDE`` / ``AMED`` (aliases ``adasde`` / ``amed``, ``second_order``: two
  model calls per step) through Forge's ``sd_samplers.add_sampler`` when present, else by appending to
  ``all_samplers`` + rebuilding ``all_samplers_map`` + ``set_samplers()``, and the scheduler ``AdaSDE``
  (``modules.sd_schedulers``).  Idempotent: entries with our names are replaced, never duplicated.
* :func:`host_features` says what the running host offers; :func:`register` logs one line naming what is missing.
* AMED: the U-Net middle-block output is captured by a forward hook (A1111) or a block modifier on a cloned Forge
  ``UnetPatcher`` for the duration of one sampling call, and removed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import policy
from ..coefficients import list_coefficient_files
from ..errors import InputFileError
from ..samplers import sample_adasde, sample_amed
from ..samplers.common import SeededNoise

log = logging.getLogger("adasde")

SAMPLERS = {"AdaSDE": ("adasde", "adasde"), "AMED": ("amed", "amed")}  # label -> (alias, policy sampler)
SCHEDULER_NAME, SCHEDULER_LABEL = "adasde", "AdaSDE"
INFOTEXT_FILE, INFOTEXT_NFE, INFOTEXT_HASH = "AdaSDE coefficients", "AdaSDE NFE", "AdaSDE coefficients hash"
CHOICE_AUTO, CHOICE_UNTRAINED, CHOICE_SETTINGS = policy.AUTO, policy.UNTRAINED, "(Settings)"
OPT_CHOICE, OPT_COMFY_DIR, OPT_DENOISE = "adasde_coefficients", "adasde_comfyui_dir", "adasde_final_denoise"
OPT_DISCARD = "always_discard_next_to_last_sigma"  # the host's own option (C1)
SAMPLER_OPTIONS = {"brownian_noise": True, "second_order": True}  # plus "scheduler": "adasde" where it exists
SAME_SAMPLER = ("", "Use same sampler")  # hires sampler values meaning "the first-pass sampler"


def _module(name: str) -> Any | None:
    """``modules.<name>`` of the running WebUI, or None outside one."""
    try:
        return importlib.import_module(f"modules.{name}")
    except ImportError:
        return None


def _opt(name: str, default: Any) -> Any:
    shared = _module("shared")
    opts = getattr(shared, "opts", None)
    value = getattr(opts, name, None) if opts is not None else None
    return default if value is None else value


# ------------------------------------------------------------------------------------------------ host features
@dataclass(frozen=True)
class HostFeatures:
    """What the running WebUI offers (docs/HOSTS.md section C4)."""

    host: str  # "Forge" or "AUTOMATIC1111"
    version: str  # the host's git tag, or "unknown"
    schedulers: bool  # modules/sd_schedulers (A1111 >= 1.9): the AdaSDE scheduler exists
    every_sampling: bool  # Script.process_before_every_sampling (A1111 >= 1.10)

    def missing(self) -> list[str]:
        """One sentence per feature this host lacks: what does not work and what to do."""
        out = []
        if not self.schedulers:
            out.append("no modules/sd_schedulers (needs A1111 >= 1.9): there is no 'AdaSDE' schedule type, the "
                       "samplers run on the host's grid and use a coefficient file only where that grid is part of "
                       "the trained one")
        if not self.every_sampling:
            out.append("no Script.process_before_every_sampling (needs A1111 >= 1.10): 'Automatic' scheduling and "
                       "the per-generation coefficient choice are unavailable; the Settings choice applies")
        return out

    def describe(self) -> str:
        gaps = self.missing()
        return (f"adasde: {self.host} {self.version}: "
                + ("all features available" if not gaps else "; ".join(gaps) + "; update the WebUI to get them"))


def host_features() -> HostFeatures:
    """Feature detection (not version guessing), with the version tag for the log line."""
    sd_samplers = _module("sd_samplers")
    schedulers = _module("sd_schedulers")
    scripts = _module("scripts")
    forge = hasattr(sd_samplers, "add_sampler")
    version = "unknown"
    launch_utils = _module("launch_utils")
    with contextlib.suppress(Exception):  # git_tag() runs git; any failure just leaves "unknown"
        version = str(launch_utils.git_tag()) if launch_utils is not None else version
    base = getattr(scripts, "Script", None)
    return HostFeatures("Forge" if forge else "AUTOMATIC1111", version,
                        schedulers is not None and hasattr(schedulers, "Scheduler"),
                        base is not None and hasattr(base, "process_before_every_sampling"))


# ------------------------------------------------------------------------------------------------- model detection
def _table(sd_model: Any, inner_model: Any) -> torch.Tensor | None:
    """The model's increasing sigma table: the host's sampler wrapper (``CompVisDenoiser`` / ``ForgeScheduleLinker``
    ``.sigmas``), else Forge's predictor, else A1111's ``alphas_cumprod``."""
    for holder in (inner_model, getattr(getattr(getattr(getattr(sd_model, "forge_objects", None), "unet", None),
                                                "model", None), "predictor", None)):
        table = getattr(holder, "sigmas", None)
        if torch.is_tensor(table) and table.numel() > 1:
            return table.detach().double().cpu()
    ac = getattr(sd_model, "alphas_cumprod", None)
    if torch.is_tensor(ac) and ac.numel() > 1:
        ac = ac.detach().double().cpu()
        return ((1 - ac) / ac).sqrt()
    return None


def detect_model(sd_model: Any, inner_model: Any = None) -> policy.ModelInfo:
    """``policy.ModelInfo`` of the loaded checkpoint: family and prediction from A1111 flags (``is_sdxl``, ``is_sd3``,
    ``is_sd2``, ``is_sd1``, ``parameterization``) or Forge's engine class and predictor; sigma range and discrete
    table from the host's sampler wrapper ``inner_model`` (or the model); flow shift from the model sampling
    object (docs/HOSTS.md sections C1, C2)."""
    if sd_model is None:
        return policy.ModelInfo()
    cls = type(sd_model).__name__.lower()
    flag = lambda n: getattr(sd_model, n, False) is True  # noqa: E731
    if flag("is_flux") or "flux" in cls or "chroma" in cls:
        family = "flux"
    elif flag("is_sd3") or "sd3" in cls or "stablediffusion3" in cls:
        family = "sd3"
    elif flag("is_sdxl") or "xl" in cls:
        family = "sdxl"
    elif flag("is_sd2") or "stablediffusion2" in cls:
        family = "sd21"
    elif flag("is_sd1") or cls in ("stablediffusion", "latentdiffusion"):
        family = "sd15"
    else:
        family = "unknown"
    predictor = None
    with contextlib.suppress(AttributeError):
        predictor = sd_model.forge_objects.unet.model.predictor
    kind = str(getattr(predictor, "prediction_type", "") or getattr(sd_model, "parameterization", "") or "").lower()
    if kind in ("eps", "epsilon"):
        prediction = "eps"
    elif kind in ("v", "v_prediction"):
        prediction = "v"
    elif kind in ("const", "flow", "flux", "rectified_flow") or family in ("flux", "sd3"):
        prediction = "flow"
    elif family in ("sd15", "sdxl"):
        prediction = "eps"
    else:
        prediction = "unknown"
    flow = prediction == "flow"
    table = _table(sd_model, inner_model)
    shift = None
    if flow:
        sampling = predictor if predictor is not None else getattr(getattr(sd_model, "model", None),
                                                                   "model_sampling", None)
        shift = getattr(sampling, "shift", None)
    if table is None:
        return policy.ModelInfo(family, prediction, flow=flow, flow_shift=shift,
                                **({"sigma_min": 1e-3, "sigma_max": 1.0} if flow else {}))
    return policy.ModelInfo(family, prediction, float(table.min()), float(table.max()),
                            None if flow else table, flow, None if shift is None else float(shift))


# -------------------------------------------------------------------------------------------- coefficient choice
def coefficient_dirs() -> list[Path]:
    """``<models_path>/adasde`` and the ComfyUI folder from Settings (its ``models/adasde_coefficients`` if that exists,
    else the folder itself); they rank before ``$ADASDE_COEFFICIENTS`` and the shipped files (policy ranking)."""
    dirs: list[Path] = []
    paths = _module("paths")
    models_path = getattr(paths, "models_path", None)
    if models_path:
        dirs.append(Path(models_path) / "adasde")
    comfy = str(_opt(OPT_COMFY_DIR, "") or "").strip()
    if comfy:
        c = Path(comfy).expanduser()
        sub = c / "models" / "adasde_coefficients"
        dirs.append(sub if sub.is_dir() else c)
    return dirs


def available_files() -> list[str]:
    """File names offered in the dropdowns (the search path in the policy's folder order)."""
    names: list[str] = []
    for p in list_coefficient_files(coefficient_dirs()):
        if p.name not in names:
            names.append(p.name)
    return names


def refresh_files() -> list[str]:
    """Settings / script refresh button: rescan the coefficient folders (the lists are read fresh on every call)."""
    names = available_files()
    log.info("AdaSDE: %d coefficient files in %s and the shipped set", len(names),
             ", ".join(str(d) for d in coefficient_dirs()) or "no WebUI folder")
    return names


def current_choice(p: Any) -> str:
    """Per-generation choice (script section) if set, else the Settings value, else ``auto``."""
    per_gen = getattr(p, "adasde_coefficients", None) if p is not None else None
    if per_gen and per_gen != CHOICE_SETTINGS:
        return str(per_gen)
    return str(_opt(OPT_CHOICE, CHOICE_AUTO) or CHOICE_AUTO)


def policy_choice(choice: str) -> str | Path:
    """``auto`` / ``untrained`` as they are; a file name is looked up in the search path (folder order), an absolute
    path taken as it is.  A name that is nowhere raises ``InputFileError``."""
    if choice in (CHOICE_AUTO, CHOICE_UNTRAINED):
        return choice
    direct = Path(choice).expanduser()
    if direct.is_absolute() and direct.is_file():
        return direct
    for p in list_coefficient_files(coefficient_dirs()):
        if p.name == choice or p.as_posix().endswith("/" + choice.replace(os.sep, "/")):
            return p
    where = ", ".join(str(d) for d in coefficient_dirs()) or "models/adasde"
    raise InputFileError(f"AdaSDE: coefficient file {choice!r} is not in {where}, $ADASDE_COEFFICIENTS or the "
                         "shipped set; put it in models/adasde/ or choose 'auto' (Settings > AdaSDE)")


# ------------------------------------------------------------------------------------------------ AMED features
class FeatureStore:
    """The first middle-block output of the current model call (under CFG the host may split the batch)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def put(self, h: Any) -> None:
        if self.value is None and torch.is_tensor(h):
            self.value = h.detach()


@contextlib.contextmanager
def bottleneck_capture(sd_model: Any, store: FeatureStore) -> Iterator[None]:
    """Capture the U-Net middle-block output into ``store`` while the block is active; always removed afterwards.

    Forge: a clone of ``sd_model.forge_objects.unet`` with ``add_block_modifier`` replaces the patcher and the
    original is put back.  A1111: a forward hook on ``sd_model.model.diffusion_model.middle_block``.
    """
    forge = getattr(sd_model, "forge_objects", None)
    unet = getattr(forge, "unet", None) if forge is not None else None
    if unet is not None and hasattr(unet, "add_block_modifier"):
        def modifier(h: Any, flag: str, transformer_options: dict) -> Any:
            block = (transformer_options or {}).get("block")
            if flag == "after" and block is not None and tuple(block)[:1] == ("middle",):
                store.put(h)
            return h

        patched = unet.clone()
        patched.add_block_modifier(modifier)
        forge.unet = patched
        try:
            yield
        finally:
            forge.unet = unet
        return
    block = None
    with contextlib.suppress(AttributeError):
        block = sd_model.model.diffusion_model.middle_block
    if block is None:
        log.warning("AMED: this model has no U-Net middle block; using zero bottleneck features (constant AMED).")
        yield
        return
    handle = block.register_forward_hook(lambda _m, _i, out: store.put(out[0] if isinstance(out, tuple) else out))
    try:
        yield
    finally:
        handle.remove()


class HookedDenoiser:
    """The host's CFG denoiser plus ``bottleneck()`` (docs/ARCHITECTURE.md, model contract): the first ``B`` rows of
    the middle-block output of the most recent call (A1111 puts the conditional rows first)."""

    def __init__(self, model: Any, store: FeatureStore, flow: bool) -> None:
        self.inner_model, self.store, self.flow, self.batch = model, store, flow, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.store.value = None
        self.batch = x.shape[0]
        return self.inner_model(x, sigma, **extra)

    def bottleneck(self) -> torch.Tensor | None:
        v = self.store.value
        return v[: self.batch] if v is not None and self.batch else v

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner_model"], name)


# ---------------------------------------------------------------------------------------------- generation state
_CONTEXT: dict[str, Any] = {}


def set_generation(p: Any) -> None:
    """Remember ``p`` for the scheduler and samplers (called from ``Script.process_before_every_sampling``)."""
    _CONTEXT["p"] = p


def _generation(model: Any) -> Any:
    """The ``StableDiffusionProcessing`` of the running generation (A1111 sets ``CFGDenoiser.p``)."""
    p = getattr(model, "p", None)
    return p if p is not None else _CONTEXT.get("p")


def _sd_model(p: Any) -> Any:
    return getattr(p, "sd_model", None) or getattr(_module("shared"), "sd_model", None)


def running_sampler(p: Any) -> str:
    """Label of the sampler of the current pass: the hires sampler in a hires pass (when it is set), else the
    first-pass sampler."""
    if p is None:
        return ""
    if getattr(p, "is_hr_pass", False):
        hr = str(getattr(p, "hr_sampler_name", "") or "")
        if hr not in SAME_SAMPLER:
            return hr
    return str(getattr(p, "sampler_name", "") or "")


def _ours(label: str) -> str | None:
    """Our policy sampler name for a WebUI sampler label or alias, else None."""
    if label in SAMPLERS:
        return SAMPLERS[label][1]
    for alias, name in SAMPLERS.values():
        if label.lower() == alias:
            return name
    return None


def tell(p: Any, notes: list[str]) -> None:
    """The policy's notes, each once per generation: the WebUI log and, where the host has it, ``p.comment`` (shown
    under the image)."""
    seen = getattr(p, "_adasde_notes", None) if p is not None else None
    for n in notes:
        if seen is not None and n in seen:
            continue
        log.warning(n)
        if p is not None:
            if seen is None:
                seen = set()
                with contextlib.suppress(AttributeError):
                    p._adasde_notes = seen
            seen.add(n)
            comment = getattr(p, "comment", None)
            if callable(comment):
                comment(n)


def file_hash(path: str | os.PathLike) -> str:
    """First 10 hex digits of the file's SHA-256 (as the WebUI shortens model hashes)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def _write_infotext(p: Any, plan: policy.Plan) -> None:
    """Chosen file (or ``untrained``), NFE and file hash; ``Hires `` prefix in a hires pass."""
    params = getattr(p, "extra_generation_params", None)
    if params is None:
        return
    prefix = "Hires " if getattr(p, "is_hr_pass", False) else ""
    path = plan.coeffs_path
    params[prefix + INFOTEXT_FILE] = Path(path).name if plan.trained and path else CHOICE_UNTRAINED
    params[prefix + INFOTEXT_NFE] = plan.nfe
    if plan.trained and path and Path(path).is_file():
        params[prefix + INFOTEXT_HASH] = file_hash(path)
    else:
        params.pop(prefix + INFOTEXT_HASH, None)


# ----------------------------------------------------------------------------------------------------- samplers
def sampler_plan(p: Any, name: str, sigmas: torch.Tensor, inner_model: Any = None) -> policy.Plan:
    """The policy's plan for the grid the host hands our sampler.  After our own scheduler the coefficients are the
    ones it chose (the host may have cut the grid: img2img, discard); otherwise the user's choice."""
    info = detect_model(_sd_model(p), inner_model)
    hr, scheduled = getattr(p, "adasde_plan", (None, None)) if p is not None else (None, None)
    if scheduled is not None and scheduled.sampler == name and hr == bool(getattr(p, "is_hr_pass", False)):
        choice: Any = scheduled.coeffs if scheduled.coeffs is not None else CHOICE_UNTRAINED
        plan = policy.plan_for_sigmas(info, name, sigmas, coefficients=choice, dirs=coefficient_dirs())
        plan.notes = [*scheduled.notes, *(n for n in plan.notes if n not in scheduled.notes)]
        return plan
    return policy.plan_for_sigmas(info, name, sigmas, coefficients=policy_choice(current_choice(p)),
                                  dirs=coefficient_dirs())


def make_sampler(label: str) -> Callable[..., torch.Tensor]:
    """The function handed to ``KDiffusionSampler`` for ``label`` (``AdaSDE`` or ``AMED``)."""
    _, name = SAMPLERS[label]

    def sample(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Any = None, disable: bool | None = None, noise_sampler: Any = None,
               sigma_min: float | None = None, sigma_max: float | None = None, n: int | None = None) -> torch.Tensor:
        """WebUI entry: the policy's plan for ``sigmas``, then the core sampler (docs/ALGORITHMS.md sections 3.2
        and 4.2).  ``sigma_min``, ``sigma_max`` and ``n`` are accepted because the WebUI passes them by signature;
        the grid is ``sigmas``.  Churn noise comes from the host's seeded ``noise_sampler`` (``p.seeds`` if none)."""
        p = _generation(model)
        plan = sampler_plan(p, name, sigmas, getattr(model, "inner_model", None))
        tell(p, plan.notes)
        if p is not None:
            _write_infotext(p, plan)
            with contextlib.suppress(AttributeError):
                p.adasde_last_plan = plan  # what ran, for scripts and tests
        log.info("AdaSDE: %s", plan.describe())
        if noise_sampler is None and p is not None and getattr(p, "seeds", None):
            noise_sampler = SeededNoise(x, [int(s) for s in p.seeds[: x.shape[0]]])
        info = detect_model(_sd_model(p), getattr(model, "inner_model", None))
        kw = dict(extra_args=extra_args, callback=callback, disable=disable, flow=info.flow, **plan.options())
        if name == "adasde":
            return sample_adasde(model, x, sigmas, noise_sampler=noise_sampler, **kw)
        if plan.coeffs is None or not plan.coeffs.predictor:
            return sample_amed(model, x, sigmas, **kw)  # constant tables (section 4.5) or DPM-Solver-2: no hook
        store = FeatureStore()
        with bottleneck_capture(_sd_model(p), store):
            hooked = HookedDenoiser(model, store, info.flow)
            return sample_amed(hooked, x, sigmas, features=hooked.bottleneck, **kw)

    sample.__name__ = f"sample_{name}_webui"
    return sample


# ---------------------------------------------------------------------------------------------------- scheduler
def _discarding() -> bool:
    """Whether the host will drop the next-to-last sigma of this grid (C1, ``always_discard_next_to_last_sigma``)."""
    return bool(_opt(OPT_DISCARD, False))


def adasde_schedule(n: int, sigma_min: float, sigma_max: float, inner_model: Any = None,
                    device: Any = None, **_: Any) -> torch.Tensor:
    """Scheduler ``AdaSDE``: the grid of ``policy.plan`` for ``n`` steps (the trained grid of the chosen file, else
    the model's default grid), followed by 0 only when Settings ask for a final denoise or the running sampler is
    not ours.  Under "always discard next-to-last sigma" the host asks for ``n + 1`` steps and drops the
    next-to-last value: a placeholder is put there, so the plan's points all survive the cut."""
    p = _CONTEXT.get("p")
    info = detect_model(_sd_model(p), inner_model)
    label = running_sampler(p)
    name = _ours(label) or "adasde"
    discard = _discarding() and n > 1
    steps = int(n) - 1 if discard else int(n)
    plan = policy.plan(info, name, steps=steps, coefficients=policy_choice(current_choice(p)),
                       dirs=coefficient_dirs())
    tell(p, plan.notes)
    if p is not None:
        with contextlib.suppress(AttributeError):
            p.adasde_plan = (bool(getattr(p, "is_hr_pass", False)), plan)
    s = plan.sigmas.to(torch.float32)
    if bool(_opt(OPT_DENOISE, False)) or _ours(label) is None:
        s = torch.cat([s, s.new_zeros(1)])
    if discard:
        last, before = s[-1:], s[-2:-1]
        filler = before * 0.5 if float(last) == 0 else (before * last).sqrt()
        s = torch.cat([s[:-1], filler, last])
    return s.to(device) if device is not None else s


# ------------------------------------------------------------------------------------------------- registration
def register() -> list[str]:
    """Add (or replace) our samplers and scheduler in the running WebUI; returns the registered labels."""
    sd_samplers = _module("sd_samplers")
    kdiff = _module("sd_samplers_kdiffusion")
    common = _module("sd_samplers_common")
    if sd_samplers is None or kdiff is None or common is None:
        raise RuntimeError("adasde: modules.sd_samplers / sd_samplers_kdiffusion / sd_samplers_common not found; "
                           "this extension needs AUTOMATIC1111 >= 1.6 or Forge")
    features = host_features()
    (log.warning if features.missing() else log.info)(features.describe())
    labels = list(SAMPLERS)
    schedulers = _module("sd_schedulers") if features.schedulers else None
    options = {**SAMPLER_OPTIONS, **({"scheduler": SCHEDULER_NAME} if schedulers is not None else {})}
    sd_samplers.all_samplers[:] = [s for s in sd_samplers.all_samplers if s.name not in labels]
    for label, (alias, _) in SAMPLERS.items():
        fn = make_sampler(label)
        data = common.SamplerData(label, lambda model, fn=fn: kdiff.KDiffusionSampler(fn, model), [alias],
                                  dict(options))
        if hasattr(sd_samplers, "add_sampler"):  # Forge
            sd_samplers.add_sampler(data)
        else:
            sd_samplers.all_samplers.append(data)
    sd_samplers.all_samplers_map = {s.name: s for s in sd_samplers.all_samplers}
    sd_samplers.set_samplers()
    if schedulers is not None:
        schedulers.schedulers[:] = [s for s in schedulers.schedulers if s.name != SCHEDULER_NAME]
        schedulers.schedulers.append(schedulers.Scheduler(SCHEDULER_NAME, SCHEDULER_LABEL, adasde_schedule,
                                                          need_inner_model=True))
        schedulers.schedulers_map.clear()
        schedulers.schedulers_map.update({**{s.name: s for s in schedulers.schedulers},
                                          **{s.label: s for s in schedulers.schedulers}})
    return labels
