"""Original CompVis / Stability single-file checkpoints written from tiny diffusers/transformers models.

The key renaming here (diffusers -> original names) is written independently of the loader, which maps the other way
with diffusers' converters: a file written here loads only if both agree key by key.  The tiny models follow the
families' fixed choices (GroupNorm 32, SD 1.x: 8 attention heads; SD 2.x / SDXL: 64 channels per head, linear
projections; CLIP quick-GELU, OpenCLIP GELU).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .diffusers_models import SD_BETAS, tiny_tokenizer

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{RESNET[head]}.{tail}"


def unet_to_ldm(sd: dict[str, torch.Tensor], layers: int, up_attn: list[bool]) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` keys -> ``model.diffusion_model.*`` (``layers`` resnets per down level)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        u = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if k.startswith("time_embedding.linear_"):
            n = {"1": "0", "2": "2"}[k[len("time_embedding.linear_")]]
            new = f"time_embed.{n}{k[len('time_embedding.linear_1'):]}"
        elif k.startswith("add_embedding.linear_"):
            n = {"1": "0", "2": "2"}[k[len("add_embedding.linear_")]]
            new = f"label_emb.0.{n}{k[len('add_embedding.linear_1'):]}"
        elif k.startswith("conv_in."):
            new = "input_blocks.0.0." + k[len("conv_in."):]
        elif m:
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = 1 + b * (layers + 1) + j
            new = f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
        elif (d := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)):
            new = f"input_blocks.{(int(d[1]) + 1) * (layers + 1)}.0.op.{d[2]}"
        elif (c := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)):
            if c[1] == "attentions":
                new = f"middle_block.1.{c[3]}"
            else:
                new = f"middle_block.{2 * int(c[2])}.{_resnet(c[3])}"
        elif u:
            b, kind, j, rest = int(u[1]), u[2], int(u[3]), u[4]
            idx = b * (layers + 1) + j
            new = f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
        elif (d := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)):
            b = int(d[1])
            new = f"output_blocks.{b * (layers + 1) + layers}.{2 if up_attn[b] else 1}.conv.{d[2]}"
        elif k.startswith("conv_norm_out."):
            new = "out.0." + k[len("conv_norm_out."):]
        elif k.startswith("conv_out."):
            new = "out.2." + k[len("conv_out."):]
        else:
            raise KeyError(k)
        out["model.diffusion_model." + new] = v
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> ``first_stage_model.*`` (mid attention as 1 x 1 convolutions)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        new = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if (m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", new)):
            lvl = int(m[3]) if m[1] == "encoder" else levels - 1 - int(m[3])
            new = f"{m[1]}.{m[2]}.{lvl}.block.{m[4]}.{m[5]}"
        elif (m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", new)):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif (m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", new)):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif (m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", new)):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", new)):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + new] = v
    return out


def clip_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text keys as the original checkpoints store them (``text_model.*``, whatever the installed
    transformers version calls them)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()}


def clip_to_open_clip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel(WithProjection)`` keys -> an OpenCLIP text tower under ``prefix``."""
    out = {}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in clip_keys(sd).items():
        if k.endswith("position_ids"):
            continue
        if k == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
        elif (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", k)):
            layer, mod, kind = m[1], m[2], m[3]
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{layer}.{kind}", {})[mod[-6]] = v
            else:
                out[f"{prefix}transformer.resblocks.{layer}.{names[mod]}.{kind}"] = v
        else:
            raise KeyError(k)
    for lk, parts in qkv.items():
        layer, kind = lk.split(".")
        qkv_cat = torch.cat([parts["q"], parts["k"], parts["v"]])
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = qkv_cat
    out[prefix + "logit_scale"] = torch.tensor(4.6)
    return out


def _clip_model(tok, hidden: int, act: str, projection: int | None = None, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                         hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=max(1, hidden // 64),
                         num_hidden_layers=layers, vocab_size=len(tok.get_vocab()), max_position_embeddings=16,
                         hidden_act=act, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], layers_per_block=1, in_channels=3, out_channels=3,
                         latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16, scaling_factor=scaling_factor)


def tiny_sd(root: Path, family: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], Path]:
    """(original-layout state dict, diffusers pipeline folder of the same weights) of a tiny ``family`` model
    (``sd15`` | ``sd2`` | ``sdxl``; images 16 x 16, latents 4 x 8 x 8).  The tokenizers are saved in the folder."""
    import diffusers
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer(root.parent / (root.name + "_tok"))
    sched = diffusers.DDIMScheduler(**SD_BETAS, prediction_type="v_prediction" if family == "sd2" else "epsilon",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    common = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = _vae(0.13025 if family == "sdxl" else 0.18215)
    if family == "sd15":
        te = _clip_model(tok, 32, "quick_gelu")
        unet = UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=8)
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
        text = {"cond_stage_model.transformer." + k: v for k, v in clip_keys(te.state_dict()).items()}
    elif family == "sd2":
        te = _clip_model(tok, 64, "gelu", layers=2)
        unet = UNet2DConditionModel(**common, cross_attention_dim=64, attention_head_dim=[1, 1],
                                    use_linear_projection=True)
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
        # the original tower has one more (unused: SD 2.x takes the penultimate layer) block and a projection
        full = _clip_model(tok, 64, "gelu", projection=16, layers=3)
        res = full.text_model.load_state_dict(
            {k.removeprefix("text_model."): v for k, v in clip_keys(te.state_dict()).items()}, strict=False)
        assert not res.unexpected_keys and all(".layers.2." in k for k in res.missing_keys), res
        text = clip_to_open_clip(full.state_dict(), "cond_stage_model.model.")
    else:
        te1 = _clip_model(tok, 32, "quick_gelu")
        te2 = _clip_model(tok, 64, "gelu", projection=16)
        unet = UNet2DConditionModel(**{**common, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                                       "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
                                    cross_attention_dim=96, attention_head_dim=[1, 1], use_linear_projection=True,
                                    transformer_layers_per_block=[1, 2], addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
        sched = diffusers.EulerDiscreteScheduler(**SD_BETAS)
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                                   tokenizer_2=tok, unet=unet, scheduler=sched)
        text = {"conditioner.embedders.0.transformer." + k: v for k, v in clip_keys(te1.state_dict()).items()}
        text |= clip_to_open_clip(te2.state_dict(), "conditioner.embedders.1.model.")
    up_attn = ["Attn" in t for t in unet.config.up_block_types]
    sd = unet_to_ldm(unet.state_dict(), 1, up_attn) | vae_to_ldm(vae.state_dict(), 2) | text
    pipe.save_pretrained(root)
    return {k: v.contiguous() for k, v in sd.items()}, root
