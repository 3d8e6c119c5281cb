"""ComfyUI glue shared by the nodes: registration, model identity, the policy calls, bottleneck capture, seeds.

Imported only inside ComfyUI (``comfy.*``, ``folder_paths`` and ``server`` are imported inside functions).  The
facts used here are documented in docs/HOSTS.md sections A1-A9 and B5.  Every decision about grids, coefficient
files, trained rows, NFE and warning texts is the library's sampling policy (``policy.plan`` /
``policy.plan_for_sigmas``, docs/ALGORITHMS.md section 10); this module only builds the policy's
:class:`~policy.ModelInfo` from ComfyUI's objects, hands it the ``adasde_coefficients`` folders, runs the plan and
shows the plan's notes.

* :func:`register` (idempotent, called once from the extension's ``on_load``): sets
  ``comfy.k_diffusion.sampling.sample_adasde`` / ``sample_amed``, appends ``adasde`` / ``amed`` *in place* to
  ``comfy.samplers.KSAMPLER_NAMES`` and ``SAMPLER_NAMES``, adds the ``adasde`` scheduler to ``SCHEDULER_HANDLERS``
  and in place to ``SCHEDULER_NAMES``, and registers the ``adasde_coefficients`` model folder.
* The ``adasde`` scheduler returns ``policy.plan(info, "adasde", steps=steps).sigmas``: ``steps + 1`` positive
  values from the grid's sigma_max to its sigma_min, no trailing 0 (docs/HOSTS.md section A5).
* Per image reproducibility: :func:`per_image_seeds` (docs/HOSTS.md section A2).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..coefficients import Coefficients
from ..errors import InputFileError
from ..policy import AUTO, UNTRAINED, ModelInfo, Plan, plan, plan_for_sigmas
from ..samplers.adasde import fit_grid

log = logging.getLogger("adasde")

FOLDER = "adasde_coefficients"
EXTENSIONS = {".safetensors"}
SAMPLER_NAMES = ("adasde", "amed")
SCHEDULER_NAME = "adasde"
PLAN_LOG = "AdaSDE plan: "  # log prefix of the JSON record of every plan a sampler runs (docs/HOSTS.md section A9)


# ------------------------------------------------------------------------------------------------ coefficient files
def register_model_folder(folder: str, extensions: set[str]) -> str:
    """``models/<folder>`` (default) merged with any folder of that name from extra_model_paths.yaml, listing files
    with ``extensions`` too; returns the first folder path."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, folder)
    os.makedirs(default, exist_ok=True)
    entry = folder_paths.folder_names_and_paths.get(folder)
    if entry is None or default not in entry[0]:
        folder_paths.add_model_folder_path(folder, default, is_default=entry is None)
    paths, exts = folder_paths.folder_names_and_paths[folder]
    folder_paths.folder_names_and_paths[folder] = (paths, set(exts) | extensions)
    return folder_paths.get_folder_paths(folder)[0]


def register_folder() -> None:
    """``models/adasde_coefficients`` (default) merged with any folder of that name from extra_model_paths.yaml."""
    register_model_folder(FOLDER, EXTENSIONS)


def coefficient_dirs() -> list[str]:
    """The ``adasde_coefficients`` folders in ComfyUI's order: the policy searches them first, then the library's
    search path (docs/ALGORITHMS.md section 10)."""
    import folder_paths

    register_folder()
    return list(folder_paths.get_folder_paths(FOLDER))


def coefficient_files() -> list[str]:
    """Relative names of the coefficient files (fresh listing: a file written by Distill shows up at once)."""
    import folder_paths

    register_folder()
    return list(folder_paths.get_filename_list(FOLDER))


def output_folder() -> str:
    """The folder new coefficient files are written to (the first, i.e. default, path)."""
    return coefficient_dirs()[0]


def coefficient_path(name: str) -> str:
    import folder_paths

    register_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise InputFileError(
            f"AdaSDE: coefficient file {name!r} is not in the {FOLDER} folder(s) "
            f"{folder_paths.get_folder_paths(FOLDER)}; pick one from the list, 'auto', or distil one first"
        )
    return path


_LOAD_CACHE: dict[str, tuple[float, int, Coefficients]] = {}
_LOCK = threading.Lock()


def load_coefficients(path: str) -> Coefficients:
    """``coefficients.load`` cached by path, mtime and size."""
    from ..coefficients import load

    st = os.stat(path)
    key = os.path.abspath(path)
    with _LOCK:
        hit = _LOAD_CACHE.get(key)
        if hit is not None and hit[0] == st.st_mtime and hit[1] == st.st_size:
            return hit[2]
    coeffs = load(path)
    with _LOCK:
        _LOAD_CACHE[key] = (st.st_mtime, st.st_size, coeffs)
    return coeffs


def choice(value: Any) -> Any:
    """A node's coefficient choice for the policy: ``"auto"``, ``"untrained"``, or the named file's record."""
    if value is None or isinstance(value, Coefficients) or value in (AUTO, UNTRAINED):
        return AUTO if value is None else value
    return load_coefficients(coefficient_path(str(value)))


# ------------------------------------------------------------------------------------------------ model identity
def _find_attr(model: Any, names: tuple[str, ...], depth: int = 6) -> Any:
    m = model
    for _ in range(depth):
        if m is None:
            return None
        for n in names:
            v = getattr(m, n, None)
            if v is not None:
                return v
        m = getattr(m, "inner_model", None)
    return None


def model_patcher_of(model: Any) -> Any:
    """The ModelPatcher behind a sampler's ``model`` (KSamplerX0Inpaint -> CFGGuider -> model_patcher)."""
    if hasattr(model, "get_model_object"):
        return model
    return _find_attr(model, ("model_patcher",))


def model_sampling_of(model: Any) -> Any:
    mp = model_patcher_of(model)
    if mp is not None:
        return mp.get_model_object("model_sampling")
    return _find_attr(model, ("model_sampling",))


def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def prediction_of(model_sampling: Any) -> str:
    """Our prediction name for a ComfyUI model_sampling object (most specific class first; docs/HOSTS.md A4)."""
    names = _class_names(model_sampling)
    for cls, pred in (("EDM", "edm"), ("X0", "x0"), ("CONST", "flow"), ("V_PREDICTION", "v"), ("EPS", "eps")):
        if cls in names:
            return pred
    return "unknown"


FAMILIES = {"SD15": "sd15", "SD20": "sd21", "SD21UnclipL": "sd21", "SD21UnclipH": "sd21", "SDXL": "sdxl",
            "SDXLRefiner": "sdxl-refiner", "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "SD3": "sd3", "Flux": "flux",
            "FluxSchnell": "flux", "AuraFlow": "auraflow", "StableCascade_C": "cascade"}


def family_of_config(cfg: Any) -> str:
    """Model family from a ``model_config``'s class name (SD15 -> sd15, SDXL -> sdxl, ...; else lower-cased)."""
    name = type(cfg).__name__ if cfg is not None else "unknown"
    return FAMILIES.get(name, name.lower())


def family_of(model: Any) -> str:
    mp = model_patcher_of(model)
    base = getattr(mp, "model", None) if mp is not None else _find_attr(model, ("model_config",))
    return family_of_config(getattr(base, "model_config", base))


def info_from_sampling(model_sampling: Any, family: str = "unknown") -> ModelInfo:
    """The policy's ModelInfo from a ``model_sampling`` object: prediction from its classes, sigma range, the discrete
    table of ``ModelSamplingDiscrete`` models, and for flow models the shift of the time map (Flux stores mu, the
    log of that shift; docs/HOSTS.md section A4)."""
    names = _class_names(model_sampling)
    pred = prediction_of(model_sampling)
    flow = pred == "flow"
    table = getattr(model_sampling, "sigmas", None)
    discrete = "ModelSamplingDiscrete" in names and torch.is_tensor(table) and table.numel() >= 2
    shift = None
    if flow and getattr(model_sampling, "shift", None) is not None:
        shift = float(model_sampling.shift)
        if "ModelSamplingFlux" in names:
            shift = math.exp(shift)
    return ModelInfo(family=family, prediction=pred, sigma_min=float(model_sampling.sigma_min),
                     sigma_max=float(model_sampling.sigma_max),
                     model_sigmas=table.detach().float().cpu() if discrete and not flow else None,
                     flow=flow, flow_shift=shift)


# The scheduler receives only ``model_sampling``; its family is that of the model owning it.  Our samplers and nodes
# record (model_sampling -> family) whenever they see a model; an object not seen yet is traced to its owner through
# the garbage collector's referrer lists once and cached (docs/HOSTS.md section A5).
_FAMILY_OF_SAMPLING: dict[int, tuple[weakref.ref, str]] = {}


def _remember(model_sampling: Any, family: str) -> None:
    try:
        _FAMILY_OF_SAMPLING[id(model_sampling)] = (weakref.ref(model_sampling), family)
    except TypeError:  # not weak-referenceable: nothing to cache
        pass


def _owner_family(model_sampling: Any) -> str | None:
    """Family of the BaseModel that holds ``model_sampling`` as its submodule, or of the ModelPatcher that patches
    it in (``object_patches``), found by walking referrer dictionaries up to three levels."""
    level: list[Any] = [model_sampling]
    seen = {id(model_sampling), id(level)}
    for _ in range(3):
        nxt: list[Any] = []
        seen.add(id(nxt))
        for obj in level:
            for ref in gc.get_referrers(obj):
                if id(ref) in seen:
                    continue
                seen.add(id(ref))
                if isinstance(ref, dict):
                    nxt.append(ref)
                    continue
                if getattr(ref, "model_config", None) is not None and getattr(ref, "model_sampling", None) is \
                        model_sampling:
                    return family_of_config(ref.model_config)
                get = getattr(ref, "get_model_object", None)
                if callable(get) and getattr(ref, "model", None) is not None:
                    try:
                        owned = get("model_sampling") is model_sampling
                    except Exception:  # noqa: BLE001 - a foreign object with the same method name
                        owned = False
                    if owned:
                        return family_of(ref)
        level = nxt
    return None


def family_of_sampling(model_sampling: Any) -> str:
    hit = _FAMILY_OF_SAMPLING.get(id(model_sampling))
    if hit is not None and hit[0]() is model_sampling:
        return hit[1]
    fam = _owner_family(model_sampling)
    if fam is None:
        log.warning("AdaSDE: could not find the model that owns this model_sampling object; the 'adasde' scheduler "
                    "considers coefficient files of every model family")
        fam = "unknown"
    _remember(model_sampling, fam)
    return fam


def model_info(model: Any) -> ModelInfo:
    """The policy's ModelInfo of a ComfyUI model (a ModelPatcher or the ``model`` a sampler function receives)."""
    ms = model_sampling_of(model)
    fam = family_of(model)
    _remember(ms, fam)
    return info_from_sampling(ms, fam)


# ------------------------------------------------------------------------------------------------ plans
def scheduler_plan(info: ModelInfo, steps: int, sampler: str = "adasde") -> Plan:
    """The grid the ``adasde`` scheduler emits: the policy's plan for ``steps`` intervals; when no AdaSDE file fits,
    the grid of a fitting AMED file (the scheduler cannot know which learned sampler follows)."""
    dirs = coefficient_dirs()
    p = plan(info, sampler, steps=int(steps), dirs=dirs)
    if p.coeffs is None and sampler == "adasde":
        amed = plan(info, "amed", steps=int(steps), dirs=dirs)
        if amed.coeffs is not None:
            return amed
    return p


# The last grids the ``adasde`` scheduler emitted, per model_sampling object: a sampler that receives one of them, or a
# contiguous part (KSampler with denoise < 1, KSamplerAdvanced stages), plans it as that part of the scheduler's plan.
_EMITTED: dict[int, tuple[weakref.ref, list[Plan]]] = {}
_EMITTED_KEEP = 8


def _emitted(model_sampling: Any, p: Plan | None = None) -> list[Plan]:
    hit = _EMITTED.get(id(model_sampling))
    plans = hit[1] if hit is not None and hit[0]() is model_sampling else []
    if p is not None:
        plans = [p] + [q for q in plans if q.steps != p.steps or q.sampler != p.sampler][: _EMITTED_KEEP - 1]
        try:
            _EMITTED[id(model_sampling)] = (weakref.ref(model_sampling), plans)
        except TypeError:
            pass
    return plans


def sampling_plan(info: ModelInfo, sampler: str, sigmas: torch.Tensor, coeffs: Any = AUTO,
                  model_sampling: Any = None) -> Plan:
    """The policy's plan for a grid handed to a sampler.  With ``"auto"``, a grid without a trailing 0 that is a
    contiguous part of a grid the ``adasde`` scheduler emitted for this model is planned as that part of the
    scheduler's plan (``policy.plan(steps=, start_step=, end_step=)``: its note advises distilling, not another
    scheduler); any other grid is fitted with ``policy.plan_for_sigmas`` (trained rows from the offset for img2img
    suffixes and split-run segments)."""
    c = choice(coeffs)
    dirs = coefficient_dirs()
    host = [float(v) for v in sigmas.detach().flatten().cpu().tolist()]
    if c == AUTO and len(host) >= 2 and host[-1] > 0 and model_sampling is not None:
        for emitted in _emitted(model_sampling):
            o = fit_grid(host, [float(v) for v in emitted.sigmas.tolist()])
            if o is None:
                continue
            p = plan(info, sampler, steps=emitted.steps, start_step=o, end_step=o + len(host) - 1, dirs=dirs)
            if len(p.sigmas) == len(host) and fit_grid(host, [float(v) for v in p.sigmas.tolist()]) == 0:
                return p  # (a file added since the scheduler ran changes the policy's grid: then fit instead)
    return plan_for_sigmas(info, sampler, sigmas, coefficients=c, dirs=dirs)


def report(p: Plan) -> None:
    """Log the plan as one JSON record and show each of its notes (log + toast)."""
    log.info("%s%s", PLAN_LOG, json.dumps(p.protocol()))
    for note in p.notes:
        warn_user(note)


def warn_user(message: str) -> None:
    """Log a warning and show it in the ComfyUI frontend (web/adasde.js toasts ``adasde.warning``)."""
    log.warning(message)
    try:
        from server import PromptServer

        PromptServer.instance.send_sync("adasde.warning", {"message": message})
    except Exception:  # noqa: BLE001 - no server (in-process use)
        pass


# ------------------------------------------------------------------------------------------------ seeds
def _fingerprint(x: torch.Tensor) -> int:
    v = x.detach().flatten()[:256].to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little") & (2**62 - 1)


def per_image_seeds(extra_args: dict | None, x: torch.Tensor) -> dict:
    """A copy of ``extra_args`` whose ``seed`` is one seed per image, derived from ComfyUI's seed and the image's own
    starting latent.  ComfyUI's initial noise of image ``i`` depends only on (seed, batch index), so the churn noise
    then does too: an image is the same in a batch of 1 or of 8.  A list of seeds is kept as given."""
    extra = dict(extra_args or {})
    seed = extra.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        extra["seed"] = [(seed * 0x9E3779B1 + _fingerprint(x[i])) % (2**62) for i in range(x.shape[0])]
    return extra


# ------------------------------------------------------------------------------------------------ bottleneck
class BottleneckCapture:
    """Captures the UNet middle-block output (``h`` at ``output_block_patch`` with block ("output", 0)) of the
    conditional rows, through a patch added to a *copy* of the model options (docs/HOSTS.md section A7)."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None

    def patch(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if transformer_options.get("block") == ("output", 0):
            order = list(transformer_options.get("cond_or_uncond") or [0])
            chunks = h.chunk(len(order)) if h.shape[0] % len(order) == 0 else (h,)
            pick = order.index(0) if 0 in order and len(chunks) == len(order) else 0
            if 0 in order or self.h is None:
                self.h = chunks[pick].detach()
        return h, hsp

    def __call__(self) -> torch.Tensor | None:
        return self.h

    def install(self, extra_args: dict) -> dict:
        """A copy of ``extra_args`` whose model_options carry the patch; the user's options are untouched."""
        import comfy.model_patcher

        extra = dict(extra_args)
        opts = comfy.model_patcher.create_model_options_clone(extra.get("model_options") or {})
        to = dict(opts.get("transformer_options") or {})
        patches = dict(to.get("patches") or {})
        patches["output_block_patch"] = list(patches.get("output_block_patch") or []) + [self.patch]
        to["patches"] = patches
        opts["transformer_options"] = to
        extra["model_options"] = opts
        return extra


# ------------------------------------------------------------------------------------------------ sampler functions
def _planned_options(model: Any, sampler: str, sigmas: torch.Tensor, coeffs: Any,
                     afs: bool | None) -> tuple[ModelInfo, dict]:
    """The model's info and the sampler options of the policy's plan for ComfyUI's grid (the plan is reported);
    ``afs`` overrides the plan's when given."""
    info = model_info(model)
    p = sampling_plan(info, sampler, sigmas, coeffs, model_sampling_of(model))
    report(p)
    opts = p.options()
    if afs is not None:
        opts["afs"] = afs
    return info, opts


@torch.no_grad()
def comfy_sample_adasde(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callable | None = None, disable: bool | None = None, coeffs: Any = AUTO,
                        afs: bool | None = None, s_noise: float = 1.0) -> torch.Tensor:
    """``sample_adasde`` on the policy's plan for ComfyUI's grid (the plan decides coefficients, rows and AFS; the
    grid values are ComfyUI's float32 copy of the plan's); ``afs`` overrides the plan's (AdaSDE Sampler node); flow
    from the model's ``model_sampling``; churn noise seeded per image."""
    from ..samplers import sample_adasde

    info, opts = _planned_options(model, "adasde", sigmas, coeffs, afs)
    return sample_adasde(model, x, sigmas, extra_args=per_image_seeds(extra_args, x),
                         callback=callback, disable=disable, s_noise=s_noise, flow=info.flow, **opts)


@torch.no_grad()
def comfy_sample_amed(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                      callback: Callable | None = None, disable: bool | None = None, coeffs: Any = AUTO,
                      afs: bool | None = None) -> torch.Tensor:
    """``sample_amed`` on the policy's plan, with the UNet bottleneck fed through an ``output_block_patch`` on a copy
    of the model options (never the user's model)."""
    from ..samplers import sample_amed

    info, opts = _planned_options(model, "amed", sigmas, coeffs, afs)
    cap = BottleneckCapture()
    opts["features"] = cap
    extra = cap.install(per_image_seeds(extra_args, x))
    return sample_amed(model, x, sigmas, extra_args=extra, callback=callback, disable=disable,
                       flow=info.flow, **opts)


# ------------------------------------------------------------------------------------------------ scheduler
def adasde_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """The ``adasde`` scheduler: ``steps + 1`` positive sigmas from the grid's sigma_max to its sigma_min (the trained
    grid of the policy's file for this model and step count, else the model's default grid), no trailing 0."""
    info = info_from_sampling(model_sampling, family_of_sampling(model_sampling))
    p = scheduler_plan(info, int(steps))
    _emitted(model_sampling, p)
    return p.sigmas.to(torch.float32).cpu()


# ------------------------------------------------------------------------------------------------ registration
def register() -> None:
    """Idempotent registration of the dropdown samplers, the scheduler and the coefficients folder."""
    import comfy.k_diffusion.sampling as kds
    import comfy.samplers as cs

    kds.sample_adasde = comfy_sample_adasde
    kds.sample_amed = comfy_sample_amed
    for name in SAMPLER_NAMES:
        if name not in cs.KSAMPLER_NAMES:
            cs.KSAMPLER_NAMES.append(name)
        if name not in cs.SAMPLER_NAMES:
            cs.SAMPLER_NAMES.append(name)
    if SCHEDULER_NAME not in cs.SCHEDULER_HANDLERS:
        cs.SCHEDULER_HANDLERS[SCHEDULER_NAME] = cs.SchedulerHandler(adasde_scheduler, use_ms=True)
    if SCHEDULER_NAME not in cs.SCHEDULER_NAMES:
        cs.SCHEDULER_NAMES.append(SCHEDULER_NAME)
    register_folder()
