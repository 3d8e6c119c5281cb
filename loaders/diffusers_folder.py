"""``diffusers:DIR`` -> :class:`~.diffusers_denoiser.DiffusersDenoiser` (ALGORITHMS.md section 1.1; docs/ARCHITECTURE.md
model contract).

Supported local folders (nothing is ever downloaded; weights must be ``.safetensors``):

* ``UNet2DModel`` pixel models: a ``DDPMPipeline``/``DDIMPipeline`` folder (``unet/`` + ``scheduler/``) or a bare UNet
  folder (``config.json`` + weights) with ``scheduler_config.json`` beside it or in ``../scheduler/``;
* latent pipelines (``LDMPipeline``: ``unet/`` + ``vqvae/`` or ``vae/``);
* ``StableDiffusionPipeline`` (SD 1.x/2.x) and ``StableDiffusionXLPipeline`` with their ``transformers`` text encoders;
* the flow-model transformer pipelines ``StableDiffusion3Pipeline`` (SD3, shift 3; the T5 encoder may be absent) and
  ``FluxPipeline`` (Flux, resolution-dependent shift) -> :class:`~.flow_denoiser.FlowTransformerDenoiser`.  Their
  latent size follows ``image_size`` (pixels; default: the transformer's ``sample_size``, 1024 for Flux).

The noise parameterisation comes from the scheduler config (:mod:`.parameterisation`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelSpecError, register_resolver
from .checkpoint import component_weights, load_checked, read_json
from .conditioning import FlowTextEncoder, TextEncoderBundle
from .diffusers_denoiser import DiffusersDenoiser
from .flow_denoiser import FlowTransformerDenoiser
from .parameterisation import Parameterization

# pipeline class -> (transformer class, family) of the flow-model pipelines
FLOW_PIPELINES = {"StableDiffusion3Pipeline": ("SD3Transformer2DModel", "sd3"),
                  "FluxPipeline": ("FluxTransformer2DModel", "flux")}


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    names = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if not isinstance(dtype, torch.dtype):
        if dtype not in names:
            raise ModelSpecError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
        dtype = names[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 is not supported for convolutions on CPU; using fp32", stacklevel=3)
        return torch.float32
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU does not support bf16; using fp16", stacklevel=3)
        return torch.float16
    return dtype


def _class(lib: str, name: str, where: str) -> type:
    try:
        return getattr(importlib.import_module(lib), name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"{where}: needs the '{lib}' package: pip install 'adasde[diffusers]'") from exc
    except AttributeError as exc:
        raise ModelSpecError(f"{where}: {lib} has no class {name!r} (too old a version?)") from exc


def _diffusers() -> Any:
    try:
        import diffusers
    except ModuleNotFoundError as exc:
        raise ModelSpecError("diffusers:/single-file: specs need diffusers and transformers: "
                             "pip install 'adasde[diffusers]'") from exc
    return diffusers


def build_module(lib: str, cls_name: str, folder: Path, dtype: torch.dtype,
                 state_dict: dict[str, torch.Tensor] | None = None, source: str | None = None) -> nn.Module:
    """One model component from ``folder`` (config + safetensors), or from its config plus ``state_dict``
    (checked strictly: missing/unexpected keys or wrong shapes raise :class:`ModelSpecError` naming ``source``)."""
    cls = _class(lib, cls_name, str(folder))
    config_name = "config.json"
    read_json(folder / config_name, f"{cls_name} config ({config_name})")
    if state_dict is None:
        if not component_weights(folder):
            raise ModelSpecError(f"{folder}: no .safetensors weights for {cls_name}")
        try:
            kw: dict[str, Any] = {"torch_dtype": dtype} if lib == "diffusers" else {"dtype": dtype}
            if lib == "diffusers":
                kw["use_safetensors"] = True
            return cls.from_pretrained(str(folder), local_files_only=True, **kw)
        except ModelSpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - diffusers/transformers raise many types
            raise ModelSpecError(f"{folder}: cannot load {cls_name} ({type(exc).__name__}: {exc})") from exc
    if lib == "diffusers":
        model = cls.from_config(cls.load_config(str(folder)))
    else:
        cfg_cls = _class(lib, "AutoConfig", str(folder))
        model = cls(cfg_cls.from_pretrained(str(folder), local_files_only=True))
    load_checked(model, state_dict, source or str(folder), f"{cls_name} config in {folder}")
    return model.to(dtype)



def _family(index_class: str, unet_cfg: dict[str, Any], param: Parameterization, latent: bool) -> str:
    if param.kind == "edm":
        return "edm"
    if unet_cfg.get("addition_embed_type") == "text_time" or "XL" in index_class:
        return "sdxl"
    if "StableDiffusion" in index_class:
        return {768: "sd15", 1024: "sd2"}.get(int(unet_cfg.get("cross_attention_dim") or 0), "sd")
    if latent:
        return "ldm"
    return "flow" if param.kind == "flow" else "ddpm"


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(folder, model_index or None) for a pipeline folder, a bare UNet folder or a ``unet/`` subfolder."""
    if not path.exists():
        raise ModelSpecError(f"{path}: no such folder")
    if path.is_file():
        raise ModelSpecError(
            f"{path}: diffusers: expects a folder (model_index.json or a UNet config.json); for a single "
            f".safetensors checkpoint use  single-file:{path} --config DIR"
        )
    if (path / "model_index.json").is_file():
        return path, read_json(path / "model_index.json", "pipeline index (model_index.json)")
    if (path / "config.json").is_file():
        return path, None
    raise ModelSpecError(
        f"{path}: not a diffusers folder: expected model_index.json (a saved pipeline) or config.json + "
        "scheduler_config.json (a UNet folder)"
    )


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence diffusers/transformers info logs and per-file progress bars while loading local folders."""
    import diffusers.utils.logging as dlog

    try:
        import transformers.utils.logging as tlog
    except ModuleNotFoundError:  # transformers only needed for text pipelines
        tlog = None
    saved = dlog.get_verbosity(), (tlog.get_verbosity() if tlog else None)
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if tlog:
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(saved[0])
        dlog.enable_progress_bar()
        if tlog:
            tlog.set_verbosity(saved[1])
            tlog.enable_progress_bar()


def load_folder(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                expect: str | None = None, overrides: dict[str, dict[str, torch.Tensor]] | None = None,
                source: str | None = None, default_cfg: float = 1.0, image_size: int | None = None
                ) -> DiffusersDenoiser:
    """Load a local diffusers folder (module docstring) as a :class:`DiffusersDenoiser`.

    ``expect``: ``"pixel" | "latent" | "text" | "sd" | "sdxl"`` - raise :class:`ModelSpecError` when the folder is of
    another family.  ``overrides``: component name -> state dict taking the place of the folder's weights
    (single-file checkpoints; ``source`` names that file in errors).  ``image_size``: image side in pixels of the
    SD3/Flux pipelines (sets their latent size and, for Flux, the shift).
    """
    _diffusers()
    with quiet_hub_logs():
        return _load_folder(path, device, dtype, expect, overrides, source, default_cfg, image_size)


@dataclass
class _Layout:
    """What a folder holds: pipeline class, components (name -> [library, class]), their folders, configs."""

    root: Path
    index_class: str
    components: dict[str, list]
    folders: dict[str, Path]
    unet_cfg: dict[str, Any]
    sched: Path


def _layout(root: Path, index: dict[str, Any] | None) -> _Layout:
    """The components of a pipeline folder (``index``) or of a bare UNet folder (``index`` None)."""
    if index is None:  # a bare UNet folder
        ucfg = read_json(root / "config.json", "UNet config")
        sched = root / "scheduler_config.json"
        if not sched.is_file():
            sched = root.parent / "scheduler" / "scheduler_config.json"
        if not sched.is_file():
            raise ModelSpecError(
                f"{root}: no scheduler config (looked for {root / 'scheduler_config.json'} and {sched}); the noise "
                "schedule (betas, prediction_type) is needed to wrap the UNet - copy the scheduler_config.json of the "
                "pipeline it came from"
            )
        components = {"unet": ["diffusers", ucfg.get("_class_name", "UNet2DModel")]}
        return _Layout(root, "", components, {"unet": root}, ucfg, sched)
    index_class = str(index.get("_class_name", ""))
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
                  and v[0] is not None}
    if "unet" not in components:
        kinds = ", ".join(sorted(components)) or "none"
        raise ModelSpecError(
            f"{root}: {index_class or 'this pipeline'} has no 'unet' component (has: {kinds}); adasde wraps "
            "UNet-based diffusers pipelines (DDPM/LDM/Stable Diffusion/SDXL) and the transformer pipelines "
            f"{', '.join(FLOW_PIPELINES)}"
        )
    folders = {k: root / k for k in components}
    ucfg = read_json(folders["unet"] / "config.json", "UNet config (unet/config.json)")
    return _Layout(root, index_class, components, folders, ucfg, root / "scheduler" / "scheduler_config.json")


def _check_unet(lay: _Layout) -> bool:
    """Refuse UNet classes and pipelines we do not wrap; True when the pipeline is text-conditioned."""
    root, index_class, components, ucfg = lay.root, lay.index_class, lay.components, lay.unet_cfg
    unet_cls = components["unet"][1]
    if ucfg.get("_class_name") and ucfg["_class_name"] != unet_cls:
        raise ModelSpecError(
            f"{lay.folders['unet'] / 'config.json'}: is a {ucfg['_class_name']} but {root / 'model_index.json'} "
            f"expects a {unet_cls}; the folder mixes model families"
        )
    if unet_cls not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ModelSpecError(f"{root}: unet is a {unet_cls}; supported: UNet2DModel, UNet2DConditionModel")
    text = "text_encoder" in components
    if unet_cls == "UNet2DConditionModel" and not text:
        raise ModelSpecError(
            f"{root}: a UNet2DConditionModel needs its text encoder(s); give the whole StableDiffusionPipeline / "
            "StableDiffusionXLPipeline folder (model_index.json with unet, vae, text_encoder, tokenizer, scheduler)"
        )
    if text and "StableDiffusion" not in index_class:
        raise ModelSpecError(f"{root}: text-conditioned pipeline {index_class!r} is not supported "
                             "(StableDiffusionPipeline, StableDiffusionXLPipeline)")
    return text


def _check_expect(expect: str | None, src: str, kind: str, family: str, latent: bool, text: bool) -> None:
    """``expect``: the family the caller needs (:func:`load_folder`); a mismatch raises naming ``src``."""
    want = {"pixel": not latent, "latent": latent, "text": text,
            "sd": text and family not in ("sdxl", "sd3", "flux"),
            "sdxl": family == "sdxl"}
    if expect is None:
        return
    if expect not in want:
        raise ModelSpecError(f"unknown expect={expect!r}; use one of {', '.join(want)}")
    if not want[expect]:
        raise ModelSpecError(
            f"{src}: is a {kind} ({family}, {'latent' if latent else 'pixel'}, "
            f"{'text-conditioned' if text else 'no text encoder'}) but a {expect} model was expected"
            + ("; give a StableDiffusionPipeline / StableDiffusionXLPipeline folder" if expect in ("text", "sd",
                                                                                               "sdxl") else "")
        )


def _load_modules(lay: _Layout, names: tuple[str | None, ...], dt: torch.dtype,
                  overrides: dict[str, dict[str, torch.Tensor]], src: str, source: str | None) -> dict[str, nn.Module]:
    """The model components ``names`` (absent ones skipped), from ``overrides`` or the component folders."""
    unknown = sorted(set(overrides) - set(lay.components))
    if unknown:
        raise ModelSpecError(f"{src}: has weights for {unknown} but {lay.root} has no such component "
                             f"(components: {', '.join(sorted(lay.components))})")
    mods: dict[str, nn.Module] = {}
    for name in names:
        if name is None or name not in lay.components:
            continue
        lib, cls_name = lay.components[name]
        sd = overrides.get(name)
        if sd is None and not lay.folders[name].is_dir():
            raise ModelSpecError(f"{lay.folders[name]}: missing component folder for {cls_name}")
        if sd is None and not component_weights(lay.folders[name]):
            raise ModelSpecError(
                f"{lay.folders[name]}: {cls_name} has no .safetensors weights here"
                + (f" and {src} has no '{name}.' keys" if source else "")
            )
        mods[name] = build_module(lib, cls_name, lay.folders[name], dt, sd, src)
    return mods


def _load_folder(path: str | Path, device: torch.device | str | None, dtype: torch.dtype | str | None,
                 expect: str | None, overrides: dict[str, dict[str, torch.Tensor]] | None, source: str | None,
                 default_cfg: float, image_size: int | None = None) -> DiffusersDenoiser:
    root, index = _locate(Path(path).expanduser())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = _resolve_dtype(dtype, dev)
    src = source or str(root)
    if index is not None and "transformer" in index:
        return _load_flow_pipeline(root, index, dt, expect, dict(overrides or {}), src, source, default_cfg,
                                   image_size).to(dev)
    if image_size is not None:
        raise ModelSpecError(f"{src}: image_size is for the SD3/Flux transformer pipelines; a UNet model's size is "
                             "fixed by its config (sample_size)")
    lay = _layout(root, index)
    scfg = read_json(lay.sched, "scheduler config")
    param = Parameterization.from_scheduler_config(scfg, str(lay.sched))
    text = _check_unet(lay)
    vae_name = "vae" if "vae" in lay.components else "vqvae" if "vqvae" in lay.components else None
    latent = vae_name is not None
    family = _family(lay.index_class, lay.unet_cfg, param, latent)
    _check_expect(expect, src, lay.index_class or lay.components["unet"][1], family, latent, text)
    mods = _load_modules(lay, ("unet", vae_name, "text_encoder", "text_encoder_2"), dt, dict(overrides or {}), src,
                         source)
    vae = mods.get(vae_name) if vae_name else None
    if vae is not None and dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.float()  # e.g. the SDXL VAE overflows in fp16
    bundle = None
    if text:
        pipe = _text_pipeline(root, lay.index_class, lay.components, mods, scfg)
        vsf = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        size = lay.unet_cfg.get("sample_size", 64)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        bundle = TextEncoderBundle(pipe, family == "sdxl", (int(size[0]) * vsf, int(size[1]) * vsf))
    den = DiffusersDenoiser(mods["unet"], param, family=family, name=Path(src).name or src, vae=vae,
                            vae_kind=vae_name, text=bundle, default_cfg=default_cfg)
    return den.to(dev)


def _load_flow_pipeline(root: Path, index: dict[str, Any], dt: torch.dtype, expect: str | None,
                        overrides: dict[str, dict[str, torch.Tensor]], src: str, source: str | None,
                        default_cfg: float, image_size: int | None) -> FlowTransformerDenoiser:
    """An SD3 / Flux pipeline folder (module docstring) as a flow-model denoiser."""
    index_class = str(index.get("_class_name", ""))
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
                  and v[0] is not None}
    if index_class not in FLOW_PIPELINES:
        raise ModelSpecError(f"{root}: transformer pipeline {index_class!r} is not supported; supported: "
                             f"{', '.join(FLOW_PIPELINES)}")
    net_cls, family = FLOW_PIPELINES[index_class]
    missing = [k for k in ("transformer", "vae", "text_encoder", "tokenizer") if k not in components]
    if missing:
        raise ModelSpecError(f"{root / 'model_index.json'}: {index_class} lacks {', '.join(missing)}")
    if components["transformer"][1] != net_cls:
        raise ModelSpecError(f"{root}: a {index_class} with a {components['transformer'][1]}; expected {net_cls}")
    folders = {k: root / k for k in components}
    tcfg = read_json(folders["transformer"] / "config.json", "transformer config (transformer/config.json)")
    vcfg = read_json(folders["vae"] / "config.json", "VAE config (vae/config.json)")
    sched = root / "scheduler" / "scheduler_config.json"
    scfg = read_json(sched, "scheduler config")
    vsf = 2 ** (len(vcfg.get("block_out_channels", [0] * 4)) - 1)
    if image_size is None:
        image_size = int(tcfg.get("sample_size", 128)) * vsf if family == "sd3" else 1024
    side = int(image_size) // (vsf * 2) * 2  # latent side, a multiple of the 2 x 2 patch
    if side < 2:
        raise ModelSpecError(f"{src}: image_size {image_size} is below one 2 x 2 latent patch ({2 * vsf} pixels)")
    param = Parameterization.from_scheduler_config(scfg, str(sched), image_seq_len=(side // 2) ** 2,
                                                   timestep_scale=1.0 if family == "flux" else None)
    if param.kind != "flow":
        raise ModelSpecError(f"{sched}: {index_class} needs a FlowMatch scheduler config, got "
                             f"{scfg.get('_class_name')}")
    _check_expect(expect, src, index_class, family, True, True)
    lay = _Layout(root, index_class, components, folders, tcfg, sched)
    mods = _load_modules(lay, ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"), dt,
                         overrides, src, source)
    vae = mods["vae"]
    if dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.float()
    text = FlowTextEncoder(_text_pipeline(root, index_class, components, mods, scfg), family)
    return FlowTransformerDenoiser(mods["transformer"], param, family=family, name=Path(src).name or src, vae=vae,
                                   text=text, latent_size=(side, side), default_cfg=default_cfg)


def _text_pipeline(root: Path, index_class: str, components: dict[str, list], mods: dict[str, nn.Module],
                   scfg: dict[str, Any]) -> Any:
    """The diffusers pipeline object (used only for ``encode_prompt``) around the already-loaded modules."""
    diffusers = _diffusers()
    pipe_cls = getattr(diffusers, index_class, None)
    if pipe_cls is None:
        raise ModelSpecError(f"{root}: diffusers has no pipeline class {index_class!r}")
    kw: dict[str, Any] = {}
    params = inspect.signature(pipe_cls.__init__).parameters
    for name in params:
        if name == "self":
            continue
        if name in mods:
            kw[name] = mods[name]
        elif name.startswith("tokenizer") and name in components:
            lib, cls_name = components[name]
            tok_cls = _class(lib, cls_name, str(root / name))
            try:
                kw[name] = tok_cls.from_pretrained(str(root / name), local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                raise ModelSpecError(f"{root / name}: cannot load the {cls_name} tokenizer ({exc})") from exc
        elif name == "scheduler":
            kw[name] = diffusers.DDIMScheduler.from_config(scfg) if "FlowMatch" not in scfg.get("_class_name", "") \
                else diffusers.FlowMatchEulerDiscreteScheduler.from_config(scfg)
        elif name == "requires_safety_checker":
            kw[name] = False
        elif name == "force_zeros_for_empty_prompt":
            idx = read_json(root / "model_index.json", "pipeline index")
            kw[name] = bool(idx.get("force_zeros_for_empty_prompt", True))
        elif params[name].default is inspect.Parameter.empty:
            kw[name] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe_cls(**kw)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             **kw: Any) -> DiffusersDenoiser:
    if not rest:
        raise ModelSpecError("diffusers: spec needs a folder, e.g. diffusers:/models/stable-diffusion-v1-5")
    if kw.get("config") is not None:
        raise ModelSpecError(f"diffusers:{rest}: --config is for single-file:FILE specs; a diffusers folder carries "
                             "its own configs")
    kw.pop("config", None)
    return load_folder(os.path.expanduser(rest), device=device, dtype=dtype, **kw)


register_resolver("diffusers", _resolve)
