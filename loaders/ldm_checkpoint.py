"""Original CompVis / Stability single-file Stable Diffusion checkpoints (SD 1.x, SD 2.x, SDXL base) -> a
:class:`~.diffusers_denoiser.DiffusersDenoiser`, with the configs built here (no config folder).

The key layout is the one the original training code saves (``model.diffusion_model.*`` U-Net,
``first_stage_model.*`` KL autoencoder, ``cond_stage_model.transformer.*`` CLIP ViT-L for SD 1.x,
``cond_stage_model.model.*`` OpenCLIP ViT-H for SD 2.x, ``conditioner.embedders.{0,1}.*`` CLIP ViT-L + OpenCLIP
ViT-bigG for SDXL), in a ``.safetensors`` file or a ``.ckpt`` whose ``state_dict`` holds it (read with
``torch.load(weights_only=True)``, :func:`~.checkpoint.read_checkpoint`).

* The architecture is detected from the keys (:func:`detect_architecture`); the network sizes (channels, levels,
  blocks per level, attention levels and depths, context width, text-encoder widths and depths) are read from the
  tensor shapes, the rest are the family's fixed choices: attention heads (SD 1.x: 8 per layer; SD 2.x / SDXL:
  64 channels per head), linear projections (SD 2.x / SDXL), activation (CLIP quick-GELU, OpenCLIP GELU), the
  penultimate OpenCLIP layer for SD 2.x, SDXL's size/crop conditioning, the VAE scaling factor (0.18215; SDXL
  0.13025) and the noise schedule (scaled-linear betas 0.00085 .. 0.012, 1000 steps; SD 2.x v-prediction at
  768 px, SD 1.x / SDXL epsilon; ``prediction=`` overrides, e.g. for SD 2.x-base).
* Keys are mapped with diffusers' own converters (``diffusers.loaders.single_file_utils``), then loaded with the
  strict checker :func:`~.checkpoint.load_checked`.
* Tokenizers are not part of a checkpoint: they come from ``tokenizer_dir`` (a folder with ``tokenizer/`` and, for
  SDXL, ``tokenizer_2/``, e.g. any saved pipeline of the family) or, offline, from the Hugging Face cache.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .base import ModelSpecError
from .checkpoint import load_checked

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
# family -> (image size, prediction, VAE scaling factor)
FAMILY = {"sd15": (512, "epsilon", 0.18215), "sd2": (768, "v_prediction", 0.18215),
          "sdxl": (1024, "epsilon", 0.13025)}
# offline fallbacks for the tokenizers (Hugging Face cache only, never downloaded)
HUB_TOKENIZERS = {"sd15": [("openai/clip-vit-large-patch14", None)],
                  "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer")],
                  "sdxl": [("openai/clip-vit-large-patch14", None),
                           ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", None)]}


def is_ldm_layout(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the original CompVis key names (a ``model.diffusion_model.*`` U-Net)."""
    return any(k.startswith(UNET) for k in sd)


def detect_architecture(sd: dict[str, torch.Tensor], source: str) -> str:
    """``"sd15"`` | ``"sd2"`` | ``"sdxl"`` from the keys; anything else raises naming ``source``."""
    if not is_ldm_layout(sd):
        raise ModelSpecError(f"{source}: no model.diffusion_model.* keys; not an original Stable Diffusion checkpoint")
    if any(k.startswith(UNET + "joint_blocks.") or k.startswith(UNET + "double_blocks.") for k in sd):
        raise ModelSpecError(f"{source}: an SD3 / Flux single file; load their diffusers pipeline folder with "
                             "diffusers:DIR (StableDiffusion3Pipeline / FluxPipeline)")
    if UNET + "input_blocks.0.0.weight" not in sd:
        raise ModelSpecError(f"{source}: model.diffusion_model.* is not an SD U-Net (no input_blocks.0.0.weight)")
    if not any(k.startswith(VAE) for k in sd):
        raise ModelSpecError(f"{source}: no first_stage_model.* (VAE) keys; a U-Net-only file needs the rest of its "
                             "pipeline: save the pipeline as a diffusers folder and use single-file:FILE --config DIR")
    if any(k.startswith("conditioner.embedders.1.model.") for k in sd):
        if not any(k.startswith("conditioner.embedders.0.transformer.") for k in sd):
            raise ModelSpecError(f"{source}: SDXL checkpoint without its CLIP ViT-L encoder (an SDXL refiner?); "
                                 "supported: SD 1.x, SD 2.x, SDXL base")
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in sd):
        return "sd15"
    raise ModelSpecError(f"{source}: a U-Net and VAE without a known text encoder (cond_stage_model.transformer.* "
                         "CLIP or cond_stage_model.model.* OpenCLIP); supported: SD 1.x, SD 2.x, SDXL base")


def _indices(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers ``n`` of keys ``prefix + "n." ...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _shape(sd: dict[str, torch.Tensor], key: str, source: str) -> torch.Size:
    if key not in sd:
        raise ModelSpecError(f"{source}: missing tensor {key}; the checkpoint is truncated or of another model")
    return sd[key].shape


def unet_config(sd: dict[str, torch.Tensor], family: str, source: str, latent_size: int) -> dict[str, Any]:
    """``UNet2DConditionModel`` config of the checkpoint's U-Net (module docstring); ``latent_size``: default
    latent side (the family's image size over the VAE's downsampling factor)."""
    p = UNET
    cin = _shape(sd, p + "input_blocks.0.0.weight", source)[1]
    downs = [i for i in _indices(sd, p + "input_blocks.") if p + f"input_blocks.{i}.0.op.weight" in sd]
    nrb = downs[0] - 1 if downs else len(_indices(sd, p + "input_blocks.")) - 1
    levels = len(downs) + 1
    channels, attn, depth = [], [], []
    for lv in range(levels):
        first = 1 + lv * (nrb + 1)
        channels.append(int(_shape(sd, p + f"input_blocks.{first}.0.out_layers.3.weight", source)[0]))
        n = len(_indices(sd, p + f"input_blocks.{first}.1.transformer_blocks."))
        attn.append(n > 0)
        depth.append(max(n, 1))
    k_ctx = next((k for k in sd if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if k_ctx is None:
        raise ModelSpecError(f"{source}: the U-Net has no cross-attention; not a text-to-image Stable Diffusion model")
    proj = next(k for k in sd if k.startswith(p) and k.endswith(".proj_in.weight"))
    heads: Any = 8 if family == "sd15" else [max(1, c // 64) for c in channels]
    cfg: dict[str, Any] = {
        "sample_size": latent_size, "in_channels": int(cin),
        "out_channels": int(_shape(sd, p + "out.2.weight", source)[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": channels, "layers_per_block": nrb, "cross_attention_dim": int(sd[k_ctx].shape[1]),
        "attention_head_dim": heads, "use_linear_projection": sd[proj].ndim == 2,
        "transformer_layers_per_block": depth if family == "sdxl" else 1,
    }
    if family == "sd2":
        cfg["upcast_attention"] = True  # fp32 attention scores, as the SD 2.x releases configure
    if family == "sdxl":
        adm = int(_shape(sd, p + "label_emb.0.0.weight", source)[1])
        pooled = int(_shape(sd, "conditioner.embedders.1.model.text_projection", source)[1])
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled) // 6,
                   projection_class_embeddings_input_dim=adm)
    return cfg


def vae_config(sd: dict[str, torch.Tensor], family: str, source: str, image_size: int) -> dict[str, Any]:
    """``AutoencoderKL`` config of ``first_stage_model.*``."""
    p = VAE + "encoder."
    levels = _indices(sd, p + "down.")
    if not levels:
        raise ModelSpecError(f"{source}: first_stage_model.* is not a KL autoencoder (no encoder.down.*)")
    channels = [int(_shape(sd, p + f"down.{i}.block.0.conv2.weight", source)[0]) for i in levels]
    return {
        "in_channels": int(_shape(sd, p + "conv_in.weight", source)[1]),
        "out_channels": int(_shape(sd, VAE + "decoder.conv_out.weight", source)[0]),
        "latent_channels": int(_shape(sd, VAE + "decoder.conv_in.weight", source)[1]),
        "block_out_channels": channels, "layers_per_block": len(_indices(sd, p + "down.0.block.")),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels), "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "sample_size": image_size, "scaling_factor": FAMILY[family][2],
    }


def clip_config(sd: dict[str, torch.Tensor], prefix: str, source: str, tok: Any) -> dict[str, Any]:
    """``CLIPTextConfig`` of a transformers-layout CLIP text model under ``prefix`` (``...text_model.*``)."""
    p = prefix + "text_model."
    vocab, hidden = _shape(sd, p + "embeddings.token_embedding.weight", source)
    return {
        "vocab_size": int(vocab), "hidden_size": int(hidden),
        "num_hidden_layers": len(_indices(sd, p + "encoder.layers.")),
        "intermediate_size": int(_shape(sd, p + "encoder.layers.0.mlp.fc1.weight", source)[0]),
        "max_position_embeddings": int(_shape(sd, p + "embeddings.position_embedding.weight", source)[0]),
        "num_attention_heads": max(1, int(hidden) // 64), "hidden_act": "quick_gelu",
        **_token_ids(tok),
    }


def open_clip_config(sd: dict[str, torch.Tensor], prefix: str, source: str, tok: Any, drop_last: bool
                     ) -> dict[str, Any]:
    """``CLIPTextConfig`` of an OpenCLIP text tower under ``prefix`` (``transformer.resblocks.*``)."""
    vocab, hidden = _shape(sd, prefix + "token_embedding.weight", source)
    layers = len(_indices(sd, prefix + "transformer.resblocks."))
    cfg = {
        "vocab_size": int(vocab), "hidden_size": int(hidden), "num_hidden_layers": layers - int(drop_last),
        "intermediate_size": int(_shape(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight", source)[0]),
        "max_position_embeddings": int(_shape(sd, prefix + "positional_embedding", source)[0]),
        "num_attention_heads": max(1, int(hidden) // 64), "hidden_act": "gelu", **_token_ids(tok),
    }
    if prefix + "text_projection" in sd:
        cfg["projection_dim"] = int(sd[prefix + "text_projection"].shape[1])
    return cfg


def _token_ids(tok: Any) -> dict[str, int]:
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    return {k: int(v) for k, v in ids.items() if v is not None}


def _tokenizer_from(folder: Any) -> Any:
    """A CLIP tokenizer from a folder holding its vocabulary (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``),
    or None (transformers builds an empty tokenizer from a folder without them, so they are checked here)."""
    from pathlib import Path

    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) \
            and not (folder / "tokenizer.json").is_file():
        return None
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelSpecError(f"{folder}: cannot load the CLIP tokenizer ({exc})") from exc


def _tokenizers(family: str, tokenizer_dir: Any, source: str) -> list[Any]:
    """The CLIP tokenizer(s) of ``family`` (module docstring)."""
    from pathlib import Path

    names = ["tokenizer", "tokenizer_2"][: 2 if family == "sdxl" else 1]
    if tokenizer_dir is not None:
        root = Path(tokenizer_dir).expanduser()
        out = [_tokenizer_from(root / name) for name in names]
        if any(t is None for t in out):
            raise ModelSpecError(f"{root}: no CLIP tokenizer in {', '.join(n + '/' for n in names)} (vocab.json + "
                                 f"merges.txt); for {source} give a folder holding the {family} pipeline's tokenizers")
        return out
    from huggingface_hub import try_to_load_from_cache

    out = []
    for repo, sub in HUB_TOKENIZERS[family]:
        hit = try_to_load_from_cache(repo, f"{sub}/vocab.json" if sub else "vocab.json")
        tok = _tokenizer_from(Path(hit).parent) if isinstance(hit, str) else None
        if tok is None:
            raise ModelSpecError(
                f"{source}: the {family} tokenizer is not stored in checkpoints and {repo} is not in the local "
                f"Hugging Face cache; add --config DIR with a folder holding {', '.join(names)} (e.g. a saved "
                f"{family} diffusers pipeline)"
            )
        out.append(tok)
    return out


def load_ldm_checkpoint(sd: dict[str, torch.Tensor], source: str, dtype: torch.dtype,
                        tokenizer_dir: Any = None, prediction: str | None = None, default_cfg: float = 1.0,
                        image_size: int | None = None) -> Any:
    """A CompVis-layout state dict (module docstring) -> :class:`~.diffusers_denoiser.DiffusersDenoiser`;
    ``image_size`` (pixels) overrides the family's default resolution (SD 1.x 512, SD 2.x 768, SDXL 1024)."""
    import diffusers
    from diffusers.loaders import single_file_utils as conv
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .conditioning import TextEncoderBundle
    from .diffusers_denoiser import DiffusersDenoiser
    from .parameterisation import Parameterization

    family = detect_architecture(sd, source)
    size, pred, _ = FAMILY[family]
    if prediction is not None:
        names = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}
        if prediction not in names:
            raise ModelSpecError(f"{source}: prediction={prediction!r}; use epsilon or v_prediction")
        pred = names[prediction]
    image_size = int(image_size or size)
    vcfg = vae_config(sd, family, source, image_size)
    vsf = 2 ** (len(vcfg["block_out_channels"]) - 1)
    if image_size % vsf or image_size < vsf:
        raise ModelSpecError(f"{source}: image_size {image_size} is not a multiple of the VAE's factor {vsf}")
    ucfg = unet_config(sd, family, source, image_size // vsf)
    toks = _tokenizers(family, tokenizer_dir, source)

    def build(model: nn.Module, weights: dict[str, torch.Tensor], what: str) -> nn.Module:
        load_checked(model, _own_prefix(model, weights), source, f"{what} built for this {family} checkpoint")
        return model.to(dtype)

    unet = build(diffusers.UNet2DConditionModel(**ucfg), conv.convert_ldm_unet_checkpoint(sd, ucfg), "U-Net")
    vae = build(diffusers.AutoencoderKL(**vcfg), conv.convert_ldm_vae_checkpoint(sd, vcfg), "VAE")
    sched_cfg = {"_class_name": "DDIMScheduler", **SD_BETAS, "prediction_type": pred, "clip_sample": False,
                 "set_alpha_to_one": False, "steps_offset": 1}
    scheduler = diffusers.DDIMScheduler.from_config(sched_cfg)
    if family == "sd15":
        prefix = "cond_stage_model.transformer."
        te = CLIPTextModel(CLIPTextConfig(**clip_config(sd, prefix, source, toks[0])))
        te = build(te, conv.convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(prefix)}),
                   "CLIP text encoder")
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=toks[0], unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    elif family == "sd2":
        prefix = "cond_stage_model.model."
        cfg = open_clip_config(sd, prefix, source, toks[0], drop_last=True)
        last = f"{prefix}transformer.resblocks.{cfg['num_hidden_layers']}."
        tower = {k: v for k, v in sd.items() if k.startswith(prefix) and not k.startswith(last)
                 and not k.endswith(("text_projection", "logit_scale"))}
        te = CLIPTextModel(CLIPTextConfig(**cfg))
        te = build(te, _open_clip(conv, te, tower, prefix), "OpenCLIP text encoder")
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=toks[0], unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    else:
        p1, p2 = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
        te1 = CLIPTextModel(CLIPTextConfig(**clip_config(sd, p1, source, toks[0])))
        te1 = build(te1, conv.convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(p1)}),
                    "CLIP text encoder")
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**open_clip_config(sd, p2, source, toks[1], False)))
        tower = {k: v for k, v in sd.items() if k.startswith(p2) and not k.endswith("logit_scale")}
        te2 = build(te2, _open_clip(conv, te2, tower, p2), "OpenCLIP text encoder")
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=toks[0],
                                                   tokenizer_2=toks[1], unet=unet, scheduler=scheduler,
                                                   force_zeros_for_empty_prompt=True)
    param = Parameterization.from_scheduler_config(dict(sched_cfg), f"{source} ({family} noise schedule)")
    bundle = TextEncoderBundle(pipe, family == "sdxl", (image_size, image_size))
    name = source.rsplit("/", 1)[-1]
    return DiffusersDenoiser(unet, param, family=family, name=name, vae=vae, vae_kind="vae", text=bundle,
                             default_cfg=default_cfg)


def _own_prefix(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``text_model.`` prefix of converted CLIP keys where the installed transformers' ``CLIPTextModel``
    has none (its state-dict layout differs between major versions)."""
    own = model.state_dict()
    if any(k.startswith("text_model.") for k in own) or not any(k.startswith("text_model.") for k in weights):
        return weights
    return {k.removeprefix("text_model."): v for k, v in weights.items()}


def _open_clip(conv: Any, model: nn.Module, tower: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP tower -> transformers CLIP keys (diffusers' converter; q/k/v split by the tower width)."""
    out = conv.convert_open_clip_checkpoint(model, tower, prefix=prefix)
    if prefix + "text_projection" not in tower:
        out.pop("text_projection.weight", None)
    return out
