"""SD3 / Flux pipeline folders (``diffusers:DIR`` with a ``transformer`` component) ->
:class:`~.flow_denoiser.FlowTransformerDenoiser` (the shift from the scheduler config at the chosen resolution)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import ModelSpecError
from .checkpoint import read_json
from .components import Layout, check_expect, index_components, load_modules, text_pipeline
from .conditioning import FlowTextEncoder
from .flow_denoiser import FlowTransformerDenoiser
from .parameterisation import Parameterization

# pipeline class -> (transformer class, family) of the flow-model pipelines
FLOW_PIPELINES = {"StableDiffusion3Pipeline": ("SD3Transformer2DModel", "sd3"),
                  "FluxPipeline": ("FluxTransformer2DModel", "flux")}


def load_flow_pipeline(root: Path, index: dict[str, Any], dt: torch.dtype, expect: str | None,
                        overrides: dict[str, dict[str, torch.Tensor]], src: str, source: str | None,
                        default_cfg: float, image_size: int | None) -> FlowTransformerDenoiser:
    """An SD3 / Flux pipeline folder (module docstring) as a flow-model denoiser."""
    index_class = str(index.get("_class_name", ""))
    components = index_components(index, root)
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
    check_expect(expect, src, index_class, family, True, True)
    lay = Layout(root, index_class, components, folders, tcfg, sched)
    mods = load_modules(lay, ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"), dt,
                         overrides, src, source)
    vae = mods["vae"]
    if dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.float()
    text = FlowTextEncoder(text_pipeline(root, index_class, components, mods, scfg), family)
    return FlowTransformerDenoiser(mods["transformer"], param, family=family, name=Path(src).name or src, vae=vae,
                                   text=text, latent_size=(side, side), default_cfg=default_cfg)
