"""Tiny random-weight SD3 and Flux pipeline folders (the ``save_pretrained`` layout of diffusers), built from configs
offline: CLIP tokenizers from a written vocabulary, a T5 tokenizer from an in-code unigram vocabulary (session
fixtures ``sd3_dir`` / ``flux_dir`` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from .diffusers_models import tiny_tokenizer

WORDS = "▁a ▁cat ▁dog ▁photo ▁of ▁the a c t d o g".split()


def t5_tokenizer():
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in WORDS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def _vae(latent_channels: int, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=4, in_channels=3, out_channels=3,
                         latent_channels=latent_channels, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16, scaling_factor=1.5,
                         shift_factor=shift_factor)


def _clip(tok, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16,
                         num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tok.get_vocab()) + 2,
                         max_position_embeddings=16, projection_dim=8)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def make_sd3_folder(root: Path, seed: int = 0, shift: float = 3.0) -> Path:
    """A ``StableDiffusion3Pipeline`` folder: latents 4 x 8 x 8 (images 16 x 16), two CLIP encoders, no T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)
    tok = tiny_tokenizer(root.parent / (root.name + "_tok"))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=_vae(4, 0.25),
        text_encoder=_clip(tok, True), tokenizer=tok, text_encoder_2=_clip(tok, True), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(root)
    return root


def make_flux_folder(root: Path, seed: int = 0, guidance: bool = True) -> Path:
    """A ``FluxPipeline`` folder: latents 4 x H x W packed into 2 x 2 patches, CLIP + T5 encoders, dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=8, guidance_embeds=guidance, axes_dims_rope=(2, 2, 4))
    tok = tiny_tokenizer(root.parent / (root.name + "_tok"))
    t5tok = t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=_vae(4, 0.1), text_encoder=_clip(tok, False), tokenizer=tok,
                        text_encoder_2=t5, tokenizer_2=t5tok, transformer=transformer)
    pipe.save_pretrained(root)
    return root
