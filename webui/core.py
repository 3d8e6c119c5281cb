"""AdaSDE / AMED inside AUTOMATIC1111 and Forge (docs/HOSTS.md sections C1, C2 and C3).

* :func:`register` adds the samplers ``AdaSDE`` / ``AMED`` (aliases ``adasde`` / ``amed``) through Forge's
  ``sd_samplers.add_sampler`` when present, else by appending to ``all_samplers`` + rebuilding ``all_samplers_map`` +
  ``set_samplers()``, and the scheduler ``AdaSDE`` (``modules.sd_schedulers``, A1111 1.9+).  Idempotent: entries with
  our names are replaced, never duplicated.
* The samplers are plain callables handed to ``KDiffusionSampler``; the host passes ``sigmas``, ``n``,
  ``sigma_min``/``sigma_max`` and (options ``brownian_noise``) its seeded ``noise_sampler`` by signature inspection.
* Coefficients: ``auto`` picks a file by model family (:func:`detect_model`) and step count from ``models/adasde/``, an
  optional ComfyUI folder (Settings), ``$ADASDE_COEFFICIENTS`` and the shipped files; a file name or ``untrained`` can
  be chosen in Settings or per generation.  A grid that does not match the trained one uses untrained AdaSDE with a
  warning (``samplers.adasde.resolve_tables``).  The chosen file and NFE go into the infotext.
* AMED: the U-Net middle-block output is captured by a forward hook (A1111) or a block modifier on a cloned Forge
  ``UnetPatcher`` for the duration of one sampling call, and removed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..coefficients import CoefficientFileError, Coefficients, describe, find_coefficients, list_coefficient_files, load
from ..samplers import get_sigmas, sample_adasde
from ..samplers.common import SeededNoise

log = logging.getLogger("adasde")

SAMPLERS = {"AdaSDE": ("adasde", "adasde"), "AMED": ("amed", "amed")}  # label -> (alias, coefficient kind)
SCHEDULER_NAME, SCHEDULER_LABEL = "adasde", "AdaSDE"
INFOTEXT_FILE, INFOTEXT_NFE, INFOTEXT_HASH = "AdaSDE coefficients", "AdaSDE NFE", "AdaSDE coefficients hash"
CHOICE_AUTO, CHOICE_UNTRAINED, CHOICE_SETTINGS = "auto", "untrained", "(Settings)"
OPT_CHOICE, OPT_COMFY_DIR, OPT_DENOISE = "adasde_coefficients", "adasde_comfyui_dir", "adasde_final_denoise"
SAMPLER_OPTIONS = {"brownian_noise": True}  # plus "scheduler": "adasde" where sd_schedulers exists


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


# ------------------------------------------------------------------------------------------------- model detection
@dataclass(frozen=True)
class ModelInfo:
    """What the coefficient lookup needs to know about the loaded checkpoint."""

    family: str  # "sd15", "sd21", "sdxl", "sd3", "flux" or "unknown"
    prediction: str  # "eps", "v", "flow" or "unknown"
    flow: bool


def detect_model(sd_model: Any) -> ModelInfo:
    """Family and prediction of ``shared.sd_model`` from A1111 flags (``is_sdxl``, ``is_sd3``, ``is_sd2``, ``is_sd1``,
    ``parameterization``) or Forge's engine class and ``forge_objects.unet.model.predictor``."""
    if sd_model is None:
        return ModelInfo("unknown", "unknown", False)
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
    prediction = "unknown"
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
    return ModelInfo(family, prediction, prediction == "flow")


# -------------------------------------------------------------------------------------------- coefficient choice
def coefficient_dirs() -> list[Path]:
    """``<models_path>/adasde`` and the ComfyUI folder from Settings (its ``models/adasde_coefficients`` if that exists,
    else the folder itself); ``$ADASDE_COEFFICIENTS`` and the shipped files are added by the lookup."""
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
    """File names offered in the dropdowns (relative to their search folder)."""
    names: list[str] = []
    for p in list_coefficient_files(coefficient_dirs()):
        if p.name not in names:
            names.append(p.name)
    return names


def _resolve_named(choice: str) -> Path | None:
    direct = Path(choice).expanduser()
    if direct.is_absolute() and direct.is_file():
        return direct
    for p in list_coefficient_files(coefficient_dirs()):
        if p.name == choice or p.as_posix().endswith("/" + choice.replace(os.sep, "/")):
            return p
    return None


def current_choice(p: Any) -> str:
    """Per-generation choice (script section) if set, else the Settings value, else ``auto``."""
    per_gen = getattr(p, "adasde_coefficients", None) if p is not None else None
    if per_gen and per_gen != CHOICE_SETTINGS:
        return str(per_gen)
    return str(_opt(OPT_CHOICE, CHOICE_AUTO) or CHOICE_AUTO)


def select_coefficients(choice: str, info: ModelInfo, steps: int | None, kind: str = "adasde") -> Coefficients | None:
    """Coefficients for ``choice`` (``auto`` | ``untrained`` | a file name or path); None means untrained AdaSDE.

    A missing or broken file is reported in the WebUI log and falls back to untrained AdaSDE (DPM-Solver-2).
    """
    if choice == CHOICE_UNTRAINED:
        return None
    if choice == CHOICE_AUTO:
        pred = info.prediction if info.prediction != "unknown" else None
        found = find_coefficients(info.family, prediction=pred, steps=steps, dirs=coefficient_dirs(), kind=kind)
        if found is None:
            log.warning("AdaSDE: no %s coefficients for model family %r with %s steps in %s; using untrained %s "
                        "(DPM-Solver-2). Distil some with `adasde distill` or the ComfyUI node.", kind, info.family,
                        steps, [str(d) for d in coefficient_dirs()] + ["$ADASDE_COEFFICIENTS", "shipped"], kind)
        return found
    path = _resolve_named(choice)
    if path is None:
        log.error("AdaSDE: coefficient file %r not found in %s; using untrained AdaSDE (DPM-Solver-2). Put the file "
                  "in models/adasde/ or choose 'auto'.", choice, [str(d) for d in coefficient_dirs()])
        return None
    try:
        coeffs = load(path)
    except CoefficientFileError as exc:
        log.error("AdaSDE: %s -- using untrained AdaSDE (DPM-Solver-2) instead.", exc)
        return None
    if info.family != "unknown" and coeffs.model.family not in (info.family, "unknown"):
        log.warning("AdaSDE: %s was distilled for %r but the loaded model looks like %r; results may be poor.",
                    path.name, coeffs.model.family, info.family)
    return coeffs


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


# ----------------------------------------------------------------------------------------------------- samplers
def _generation(model: Any) -> Any:
    """The ``StableDiffusionProcessing`` of the running generation (A1111 sets ``CFGDenoiser.p``)."""
    p = getattr(model, "p", None)
    return p if p is not None else _CONTEXT.get("p")


_CONTEXT: dict[str, Any] = {}


def set_generation(p: Any) -> None:
    """Remember ``p`` for the scheduler and samplers (called from ``Script.process_before_every_sampling``)."""
    _CONTEXT["p"] = p


def _nfe(K: int, steps: int, ends_in_zero: bool, afs: bool) -> int:
    """Model calls of one sampling call: (1 + K) steps - [AFS] + [trailing 0] (docs/ALGORITHMS.md section 3.3)."""
    return (1 + K) * steps - int(afs) + int(ends_in_zero)


def _write_infotext(p: Any, coeffs: Coefficients | None, trained: bool, nfe: int) -> None:
    params = getattr(p, "extra_generation_params", None)
    if params is None:
        return
    prefix = "Hires " if getattr(p, "is_hr_pass", False) else ""
    use = coeffs is not None and bool(coeffs.source) and trained
    params[prefix + INFOTEXT_FILE] = Path(coeffs.source).name if use else CHOICE_UNTRAINED
    params[prefix + INFOTEXT_NFE] = nfe
    if use:
        params[prefix + INFOTEXT_HASH] = file_hash(coeffs.source)


def file_hash(path: str | os.PathLike) -> str:
    """First 10 hex digits of the file's SHA-256 (as the WebUI shortens model hashes)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def _amed_function() -> Callable[..., torch.Tensor] | None:
    try:
        from ..samplers import sample_amed
    except ImportError:
        return None
    return sample_amed


def make_sampler(label: str) -> Callable[..., torch.Tensor]:
    """The function handed to ``KDiffusionSampler`` for ``label`` (``AdaSDE`` or ``AMED``)."""
    _, kind = SAMPLERS[label]

    def sample(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Any = None, disable: bool | None = None, noise_sampler: Any = None,
               sigma_min: float | None = None, sigma_max: float | None = None, n: int | None = None) -> torch.Tensor:
        """WebUI entry: picks coefficients, then runs the core sampler (docs/ALGORITHMS.md sections 3.2 and 4.2).

        ``sigma_min``, ``sigma_max`` and ``n`` are accepted because the WebUI passes them by signature; the grid is
        ``sigmas``.  Churn noise comes from the host's seeded ``noise_sampler`` (``p.seeds`` if there is none)."""
        from ..samplers.adasde import resolve_tables
        from ..samplers.common import sigma_list, split_trailing_zero

        p = _generation(model)
        shared = _module("shared")
        info = detect_model(getattr(p, "sd_model", None) or getattr(shared, "sd_model", None))
        positive, ends_in_zero = split_trailing_zero(sigma_list(sigmas))
        steps = len(positive) - 1
        coeffs = select_coefficients(current_choice(p), info, steps, kind=kind)
        tables = resolve_tables(coeffs, positive, warn=False) if steps > 0 else None  # the sampler warns
        trained = bool(tables is not None and tables.trained)
        if noise_sampler is None and p is not None and getattr(p, "seeds", None):
            noise_sampler = SeededNoise(x, [int(s) for s in p.seeds[: x.shape[0]]])
        if p is not None:
            K, afs = (tables.K, tables.afs) if tables is not None else (1, False)
            _write_infotext(p, coeffs, trained, _nfe(K, steps, ends_in_zero, afs))
        log.info("AdaSDE: %s", describe(coeffs) if trained else describe(None))
        kw = dict(extra_args=extra_args, callback=callback, disable=disable, coeffs=coeffs,
                  noise_sampler=noise_sampler, flow=info.flow)
        if kind == "adasde":
            return sample_adasde(model, x, sigmas, **kw)
        amed = _amed_function()
        if amed is None:
            log.warning("AMED: this adasde version has no AMED sampler; using the constant AMED tables.")
            return sample_adasde(model, x, sigmas, **kw)  # constant AMED (section 4.5) / untrained fallback
        params = inspect.signature(amed).parameters
        kw = {k: v for k, v in kw.items() if k in params}
        if coeffs is None or not coeffs.predictor or not trained:
            return amed(model, x, sigmas, **kw)  # constant tables (section 4.5) or DPM-Solver-2: no hook needed
        store = FeatureStore()
        sd_model = getattr(p, "sd_model", None) or getattr(shared, "sd_model", None)
        with bottleneck_capture(sd_model, store):
            hooked = HookedDenoiser(model, store, info.flow)
            if "features" in params:
                kw["features"] = hooked.bottleneck
            return amed(hooked, x, sigmas, **kw)

    sample.__name__ = f"sample_{kind}_webui"
    return sample


# ---------------------------------------------------------------------------------------------------- scheduler
def adasde_schedule(n: int, sigma_min: float, sigma_max: float, inner_model: Any = None,
                    device: Any = None, **_: Any) -> torch.Tensor:
    """Scheduler ``AdaSDE``: the trained grid of the chosen coefficients for ``n`` steps (docs/ALGORITHMS.md section 2),
    followed by 0 only when Settings ask for a final denoise or the sampler is not ours; without coefficients the
    recommended untrained grid (discrete rho 1 from the model's sigma table, else time-uniform)."""
    p = _CONTEXT.get("p")
    shared = _module("shared")
    sd_model = getattr(p, "sd_model", None) or getattr(shared, "sd_model", None)
    info = detect_model(sd_model)
    label = str(getattr(p, "sampler_name", "") or "")
    ours = label in SAMPLERS or label.lower() in {a for a, _ in SAMPLERS.values()}
    kind = SAMPLERS.get(label, ("", "adasde"))[1]
    coeffs = select_coefficients(current_choice(p), info, int(n), kind=kind) if n >= 1 else None
    if coeffs is not None:
        s = coeffs.sigmas.to(torch.float32)
    else:
        table = getattr(inner_model, "sigmas", None)
        if table is not None and not info.flow:
            s = get_sigmas("discrete", int(n) + 1, float(sigma_min), float(sigma_max), 1.0, model_sigmas=table)
        else:
            s = get_sigmas("time_uniform" if not info.flow else "polynomial", int(n) + 1, float(sigma_min),
                           float(sigma_max), 1.0)
    if bool(_opt(OPT_DENOISE, False)) or not ours:
        s = torch.cat([s, s.new_zeros(1)])
    return s.to(device) if device is not None else s


# ------------------------------------------------------------------------------------------------- registration
def register() -> list[str]:
    """Add (or replace) our samplers and scheduler in the running WebUI; returns the registered labels."""
    sd_samplers = _module("sd_samplers")
    kdiff = _module("sd_samplers_kdiffusion")
    common = _module("sd_samplers_common")
    if sd_samplers is None or kdiff is None or common is None:
        raise RuntimeError("adasde: modules.sd_samplers / sd_samplers_kdiffusion / sd_samplers_common not found; "
                           "this script needs AUTOMATIC1111 >= 1.6 or Forge")
    labels = list(SAMPLERS)
    schedulers = _module("sd_schedulers")
    has_schedulers = schedulers is not None and hasattr(schedulers, "Scheduler")
    options = {**SAMPLER_OPTIONS, **({"scheduler": SCHEDULER_NAME} if has_schedulers else {})}
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
    if has_schedulers:
        schedulers.schedulers[:] = [s for s in schedulers.schedulers if s.name != SCHEDULER_NAME]
        schedulers.schedulers.append(schedulers.Scheduler(SCHEDULER_NAME, SCHEDULER_LABEL, adasde_schedule,
                                                          need_inner_model=True))
        schedulers.schedulers_map.clear()
        schedulers.schedulers_map.update({**{s.name: s for s in schedulers.schedulers},
                                          **{s.label: s for s in schedulers.schedulers}})
    return labels
