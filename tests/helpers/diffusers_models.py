"""Tiny random-weight diffusers folders built from configs (docs/TESTBEDS.md section 4), shared by the loader,
sampler-CLI and diffusers-scheduler tests (session fixtures ``ddpm_dir`` / ``sd_dir`` in tests/conftest.py).
Everything is written to a temporary folder; nothing touches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def tiny_unet2d(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=8,
                       in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def make_ddpm_folder(root: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A ``DDPMPipeline`` folder: pixel UNet2DModel (3x8x8) + DDPMScheduler config."""
    from diffusers import DDPMPipeline, DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    DDPMPipeline(unet=tiny_unet2d(seed), scheduler=sched).save_pretrained(root)
    return root


def tiny_tokenizer(root: Path):
    """A CLIP BPE tokenizer from a tiny vocabulary written here (no hub download)."""
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = ["#version: 0.2", "a t</w>", "c at</w>", "d o", "do g</w>"]
    for m in ("at</w>", "cat</w>", "do", "dog</w>"):
        vocab[m] = len(vocab)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"), model_max_length=16)


def tiny_sd_components(tmp: Path, seed: int = 0, prediction_type: str = "epsilon") -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1, sample_size=8,
                                in_channels=4, out_channels=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=4, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=16)
    tok = tiny_tokenizer(tmp / "_tok")
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8,
                                        intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=len(tok.get_vocab()) + 2, max_position_embeddings=16))
    sched = DDIMScheduler(**SD_BETAS, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tok, "scheduler": sched,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def make_sd_folder(root: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A ``StableDiffusionPipeline`` folder (latent 4x8x8, images 3x16x16, CLIP text encoder width 8)."""
    from diffusers import StableDiffusionPipeline

    comps = tiny_sd_components(root.parent / (root.name + "_parts"), seed, prediction_type)
    StableDiffusionPipeline(**comps).save_pretrained(root)
    return root


def make_sdxl_folder(root: Path, seed: int = 0) -> Path:
    """A ``StableDiffusionXLPipeline`` folder with two tiny text encoders (pooled projection width 8)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1, sample_size=8,
                                in_channels=4, out_channels=4, cross_attention_dim=16, attention_head_dim=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                addition_embed_type="text_time", addition_time_embed_dim=4,
                                projection_class_embeddings_input_dim=8 + 6 * 4, transformer_layers_per_block=1,
                                use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=4, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=16)
    tok = tiny_tokenizer(root.parent / (root.name + "_tok"))
    cfg = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16,
               num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tok.get_vocab()) + 2,
               max_position_embeddings=16)
    te1 = CLIPTextModel(CLIPTextConfig(**cfg))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg, projection_dim=8))
    sched = EulerDiscreteScheduler(**SD_BETAS)
    StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                              unet=unet, scheduler=sched).save_pretrained(root)
    return root
