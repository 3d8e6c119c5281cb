"""Building the components of a local diffusers folder: model classes by name, weights from ``.safetensors`` or a
checked state dict, the pipeline object whose ``encode_prompt`` the text encoders use, quiet hub logs."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelSpecError
from .checkpoint import component_weights, load_checked, read_json


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
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


ALLOWED_LIBRARIES = ("diffusers", "transformers")  # the libraries a model_index.json / config.json may name


def _check_library(lib: str, where: str) -> None:
    """Refuse a component library outside :data:`ALLOWED_LIBRARIES` before importing anything it names."""
    if str(lib).split(".")[0] not in ALLOWED_LIBRARIES:
        raise ModelSpecError(f"{where}: names the library {str(lib)[:60]!r} for a component; only "
                             f"{', '.join(ALLOWED_LIBRARIES)} are loaded (model_index.json). Fix or replace the file")


def index_components(index: dict[str, Any], root: Path) -> dict[str, list]:
    """The components a pipeline's ``model_index.json`` names (``name -> [library, class]``), each library checked
    against :data:`ALLOWED_LIBRARIES` before anything is imported."""
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v
                  and v[0] is not None}
    for lib, *_ in components.values():
        _check_library(lib, str(root / "model_index.json"))
    return components


def _class(lib: str, name: str, where: str) -> type:
    _check_library(lib, where)
    try:
        return getattr(importlib.import_module(lib), name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"{where}: needs the '{lib}' package: pip install 'adasde[diffusers]'") from exc
    except AttributeError as exc:
        raise ModelSpecError(f"{where}: {lib} has no class {name!r} (too old a version?)") from exc


def require_diffusers() -> Any:
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


@dataclass
class Layout:
    """What a folder holds: pipeline class, components (name -> [library, class]), their folders, configs."""

    root: Path
    index_class: str
    components: dict[str, list]
    folders: dict[str, Path]
    unet_cfg: dict[str, Any]
    sched: Path


def check_expect(expect: str | None, src: str, kind: str, family: str, latent: bool, text: bool) -> None:
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


def load_modules(lay: Layout, names: tuple[str | None, ...], dt: torch.dtype,
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


def text_pipeline(root: Path, index_class: str, components: dict[str, list], mods: dict[str, nn.Module],
                   scfg: dict[str, Any]) -> Any:
    """The diffusers pipeline object (used only for ``encode_prompt``) around the already-loaded modules."""
    diffusers = require_diffusers()
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
