"""ComfyUI glue shared by the nodes: registration, model introspection, coefficient lookup, bottleneck capture.

Imported only inside ComfyUI (it imports ``comfy.*`` and ``folder_paths`` lazily inside functions, so importing it
elsewhere is harmless).  Facts used here are documented in docs/HOSTS.md sections A1-A7 and B5.

* :func:`register` (idempotent, called at import of the node pack and again in ``on_load``): sets
  ``comfy.k_diffusion.sampling.sample_adasde`` / ``sample_amed``, appends ``adasde`` / ``amed`` *in place* to
  ``comfy.samplers.KSAMPLER_NAMES`` and ``SAMPLER_NAMES`` (never rebinding them: ``KSampler.SAMPLERS`` is the same
  list object), adds the ``adasde`` scheduler to ``SCHEDULER_HANDLERS`` and in place to ``SCHEDULER_NAMES``, and
  registers the ``adasde_coefficients`` model folder (merged with one configured in extra_model_paths.yaml).
* The KSampler-dropdown entries pick coefficients automatically (:func:`select_coefficients`) by model family,
  prediction type and sigma grid, and fall back to untrained AdaSDE with a visible warning (log + UI toast).
* Reproducibility per image: :func:`per_image_seeds` turns ComfyUI's single ``seed`` into one churn seed per image
  derived from the seed and the image's own starting noise, so an image comes out the same whatever the batch size
  or its position in the batch (ComfyUI's initial noise already depends only on seed and batch index).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("adasde")

FOLDER = "adasde_coefficients"
EXTENSIONS = {".safetensors"}
SAMPLER_NAMES = ("adasde", "amed")
SCHEDULER_NAME = "adasde"
AUTO = "auto"
UNTRAINED = "untrained"


# ------------------------------------------------------------------------------------------------ coefficient files
def register_folder() -> None:
    """``models/adasde_coefficients`` (default) merged with any folder of that name from extra_model_paths.yaml."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    os.makedirs(default, exist_ok=True)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None or default not in entry[0]:
        folder_paths.add_model_folder_path(FOLDER, default, is_default=entry is None)
    paths, exts = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)


def coefficient_files() -> list[str]:
    """Relative names of the coefficient files (fresh listing: a file written by Distill shows up at once)."""
    import folder_paths

    register_folder()
    return list(folder_paths.get_filename_list(FOLDER))


def output_folder() -> str:
    """The folder new coefficient files are written to (the first, i.e. default, path)."""
    import folder_paths

    register_folder()
    return folder_paths.get_folder_paths(FOLDER)[0]


def coefficient_path(name: str) -> str:
    import folder_paths

    register_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"AdaSDE: coefficient file {name!r} is not in the {FOLDER} folder(s) "
            f"{folder_paths.get_folder_paths(FOLDER)}; pick one from the list, 'auto', or distil one first"
        )
    return path


_LOAD_CACHE: dict[str, tuple[float, int, Any]] = {}
_LOCK = threading.Lock()


def load_coefficients(path: str) -> Any:
    """Load (cached by path, mtime and size) a coefficient file with the library loader."""
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


def all_coefficients() -> list[tuple[str, Any]]:
    """(name, Coefficients) for every readable file in the folder; unreadable files are logged and skipped."""
    out = []
    for name in coefficient_files():
        try:
            out.append((name, load_coefficients(coefficient_path(name))))
        except Exception as exc:  # noqa: BLE001 - one bad file must not break the dropdown entry
            log.warning("AdaSDE: skipping coefficient file %s: %s", name, exc)
    return out


# ------------------------------------------------------------------------------------------------ model introspection
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


def prediction_of(model_sampling: Any) -> str:
    """Our prediction name for a ComfyUI model_sampling object (most specific class first)."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for cls, pred in (("EDM", "edm"), ("X0", "x0"), ("CONST", "flow"), ("V_PREDICTION", "v"), ("EPS", "eps")):
        if cls in names:
            return pred
    return "unknown"


FAMILIES = {"SD15": "sd15", "SD20": "sd21", "SD21UnclipL": "sd21", "SD21UnclipH": "sd21", "SDXL": "sdxl",
            "SDXLRefiner": "sdxl-refiner", "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "SD3": "sd3", "Flux": "flux",
            "FluxSchnell": "flux", "AuraFlow": "auraflow", "StableCascade_C": "cascade"}


def family_of(model: Any) -> str:
    """Model family from ``model_config``'s class name (SD15 -> sd15, SDXL -> sdxl, ...; else lower-cased name)."""
    mp = model_patcher_of(model)
    base = getattr(mp, "model", None) if mp is not None else _find_attr(model, ("model_config",))
    cfg = getattr(base, "model_config", base)
    from ..coefficients.lookup import normalize_family

    name = type(cfg).__name__ if cfg is not None else "unknown"
    return normalize_family(FAMILIES.get(name, name.lower())) or "unknown"


def model_info(model: Any) -> dict[str, Any]:
    """family, prediction, flow, sigma_min, sigma_max and the 1000-entry sigma table (or None) of a ComfyUI model."""
    ms = model_sampling_of(model)
    info: dict[str, Any] = {"family": family_of(model), "prediction": "unknown", "flow": False,
                            "sigma_min": None, "sigma_max": None, "model_sigmas": None}
    if ms is not None:
        pred = prediction_of(ms)
        info.update(prediction=pred, flow=pred == "flow", sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))
        table = getattr(ms, "sigmas", None)
        if torch.is_tensor(table) and table.numel() >= 2:
            info["model_sigmas"] = table.detach().float().cpu()
    return info


# ------------------------------------------------------------------------------------------------ coefficient lookup
def _close(a: float | None, b: float | None, rtol: float = 1e-3) -> bool:
    return a is None or b is None or abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def _grid_fits(grid: list[float], trained: list[float], rtol: float = 1e-3) -> bool:
    """``grid`` equals ``trained`` or a suffix of it (img2img), like samplers.adasde.resolve_tables."""
    o = len(trained) - len(grid)
    return o >= 0 and all(_close(h, t, rtol) for h, t in zip(grid, trained[o:]))


def _kinds(sampler: str) -> tuple[str, ...]:
    return ("adasde",) if sampler == "adasde" else ("amed",)


def select_coefficients(info: dict[str, Any], grid: list[float] | None, sampler: str = "adasde",
                        steps: int | None = None) -> tuple[Any, str]:
    """Best coefficient set for a model (``model_info``) and a positive sigma ``grid`` (or a step count).

    Candidates: right kind, same prediction type, same family (files of unknown family accepted last), same sigma
    range; then the grid must fit (equal or a suffix).  Ties: exact family first, then the newest file.
    Returns ``(Coefficients or None, message)``.
    """
    from ..coefficients.lookup import normalize_family

    best: tuple[tuple, str, Any] | None = None
    for name, c in all_coefficients():
        ident = c.model
        if c.kind not in _kinds(sampler):
            continue
        fam = normalize_family(ident.family)
        if info.get("prediction") not in (None, "unknown") and ident.prediction not in (info["prediction"], "unknown"):
            continue
        fam_ok = fam == info.get("family")
        if not fam_ok and fam not in ("unknown", None, "") and info.get("family") is not None:
            continue
        trained = [float(v) for v in c.sigmas.flatten().tolist()]
        if grid is not None:
            if not _grid_fits(grid, trained):
                continue
        else:
            if steps is not None and c.steps != steps:
                continue
            lo_ok = _close(info.get("sigma_min"), trained[-1], 2e-2)
            if not (lo_ok and _close(info.get("sigma_max"), trained[0], 2e-2)):
                continue
        try:
            mtime = os.path.getmtime(coefficient_path(name))
        except OSError:
            mtime = 0.0
        key = (fam_ok, grid is not None and len(grid) == len(trained), mtime, name)
        if best is None or key > best[0]:
            best = (key, name, c)
    if best is None:
        where = f"{len(grid) - 1}-step grid [{grid[0]:.4g} .. {grid[-1]:.4g}]" if grid else f"{steps} steps"
        return None, (f"AdaSDE: no {sampler} coefficient file for model family {info.get('family')!r} / prediction "
                      f"{info.get('prediction')!r} and the {where} in the {FOLDER} folder; using untrained "
                      f"{sampler} (AdaSDE r=0.5, a=c=1, gamma=0 = DPM-Solver-2). Use the 'adasde' scheduler, or "
                      f"distil coefficients with the 'Distill AdaSDE Coefficients' node.")
    return best[2], f"AdaSDE: using coefficients {best[1]}"


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
def _positive(sigmas: torch.Tensor) -> list[float]:
    s = [float(v) for v in sigmas.detach().flatten().cpu().tolist()]
    return s[:-1] if s and s[-1] == 0.0 else s


def _resolve(model: Any, sigmas: torch.Tensor, coeffs: Any, sampler: str) -> Any:
    if coeffs is not None and not isinstance(coeffs, str):
        return coeffs
    if coeffs == UNTRAINED:
        return None
    if isinstance(coeffs, str) and coeffs != AUTO:
        return load_coefficients(coefficient_path(coeffs))
    chosen, msg = select_coefficients(model_info(model), _positive(sigmas), sampler)
    if chosen is None:
        warn_user(msg)
    else:
        log.info(msg)
    return chosen


@torch.no_grad()
def comfy_sample_adasde(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callable | None = None, disable: bool | None = None, coeffs: Any = AUTO,
                        afs: bool | None = None, s_noise: float = 1.0, flow: bool | None = None) -> torch.Tensor:
    """``sample_adasde`` for ComfyUI: coefficients ``auto`` (lookup), ``untrained``, a file name or a record; flow
    models detected from model_sampling; churn noise seeded per image."""
    from ..samplers import sample_adasde

    c = _resolve(model, sigmas, coeffs, "adasde")
    if flow is None:
        flow = model_info(model)["flow"]
    return sample_adasde(model, x, sigmas, extra_args=per_image_seeds(extra_args, x), callback=callback,
                         disable=disable, coeffs=c, afs=afs, s_noise=s_noise, flow=flow)


@torch.no_grad()
def comfy_sample_amed(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                      callback: Callable | None = None, disable: bool | None = None, coeffs: Any = AUTO,
                      afs: bool | None = None, flow: bool | None = None) -> torch.Tensor:
    """``sample_amed`` for ComfyUI with the UNet bottleneck fed through an ``output_block_patch`` on a copy of the
    model options (never the user's model)."""
    import inspect

    from ..samplers import sample_amed

    c = _resolve(model, sigmas, coeffs, "amed")
    cap = BottleneckCapture()
    extra = cap.install(per_image_seeds(extra_args, x))
    kw: dict[str, Any] = {"coeffs": c, "features": cap}
    params = inspect.signature(sample_amed).parameters
    if "afs" in params and afs is not None:
        kw["afs"] = afs
    if "flow" in params:
        kw["flow"] = model_info(model)["flow"] if flow is None else flow
    return sample_amed(model, x, sigmas, extra_args=extra, callback=callback, disable=disable, **kw)


# ------------------------------------------------------------------------------------------------ scheduler
def default_grid(info: dict[str, Any], steps: int) -> torch.Tensor:
    """AdaSDE's default student grid for a model: time-uniform in the model's discrete table (LDMs), else
    time-uniform VP fit (sigma-form) or log-SNR uniform (flow)."""
    from ..samplers import get_sigmas

    n = steps + 1
    if info.get("model_sigmas") is not None and not info.get("flow"):
        return get_sigmas("discrete", n, model_sigmas=info["model_sigmas"])
    kind = "logsnr" if info.get("flow") else "time_uniform"
    smax = min(float(info["sigma_max"]), 0.9999) if info.get("flow") else float(info["sigma_max"])
    return get_sigmas(kind, n, sigma_min=float(info["sigma_min"]), sigma_max=smax)


def adasde_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """The ``adasde`` scheduler: the trained grid of the matching coefficient file (same prediction type, sigma
    range and step count), else AdaSDE's default grid; always with the trailing 0."""
    from ..samplers import append_zero

    steps = int(steps)
    if steps < 1:
        return torch.zeros(1)
    pred = prediction_of(model_sampling)
    info = {"family": None, "prediction": pred, "flow": pred == "flow", "sigma_min": float(model_sampling.sigma_min),
            "sigma_max": float(model_sampling.sigma_max), "model_sigmas": None}
    table = getattr(model_sampling, "sigmas", None)
    if torch.is_tensor(table) and table.numel() >= 2:
        info["model_sigmas"] = table.detach().float().cpu()
    chosen = None
    for kind in ("adasde", "amed"):
        chosen, _ = select_coefficients(info, None, kind, steps=steps)
        if chosen is not None:
            break
    grid = chosen.sigmas.flatten().to(torch.float32) if chosen is not None else default_grid(info, steps)
    return append_zero(grid.to(torch.float32).cpu())


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
