"""A tiny random-weight ``StableDiffusionPipeline`` folder (SD 1.x architecture: UNet2DConditionModel with cross
attention, KL VAE, CLIP text encoder with a BPE tokenizer written here), sized so that its images are 3 x 28 x 28
(latents 4 x 14 x 14) and the FD-FMNIST feature network can score them.  Nothing touches the network."""

from __future__ import annotations

from pathlib import Path

import torch

from .diffusers_models import tiny_tokenizer

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def make_sd28_folder(root: Path, seed: int = 0) -> Path:
    """Write the pipeline folder to ``root`` (``save_pretrained`` layout) and return it."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1, sample_size=14,
                                in_channels=4, out_channels=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=4, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=28)
    tok = tiny_tokenizer(root.parent / (root.name + "_tok"))
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8,
                                        intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=len(tok.get_vocab()) + 2, max_position_embeddings=16))
    sched = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root)
    return root
