"""``diffusers:DIR`` loaders on tiny random-weight diffusers models (docs/TESTBEDS.md section 4): sigma-form conversions
checked against diffusers' own schedulers, CFG, prompts, bottleneck, samplers/distill acceptance, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from adasde.loaders import ModelSpecError
from adasde.models import load_model
from adasde.samplers import get_sigmas, sample_adasde
from helpers.diffusers_models import make_ddpm_folder, make_sdxl_folder, tiny_unet2d


@pytest.fixture(scope="module")
def ddpm(ddpm_dir):
    return load_model(f"diffusers:{ddpm_dir}")


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_model(f"diffusers:{sd_dir}")


def _x0_oracle(scheduler, unet, x, i):
    """x0 from diffusers' DDPMScheduler.step at integer timestep i, for the VP input x_t = sqrt(alpha_bar) x."""
    ac = scheduler.alphas_cumprod[i].double()
    xt = (ac.sqrt() * x.double()).float()
    out = unet(xt, torch.tensor([i] * x.shape[0]), return_dict=False)[0]
    return scheduler.step(out, i, xt).pred_original_sample


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_conversion_matches_diffusers_scheduler(tmp_path: Path, prediction: str) -> None:
    from diffusers import DDPMScheduler

    folder = make_ddpm_folder(tmp_path / "m", prediction_type=prediction)
    den = load_model(f"diffusers:{folder}")
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    sched.config.clip_sample = False
    sched = DDPMScheduler.from_config({**sched.config, "clip_sample": False})
    i = 537
    sigma = float(((1 - sched.alphas_cumprod[i].double()) / sched.alphas_cumprod[i].double()).sqrt())
    assert abs(float(den.param.timestep(torch.tensor([sigma], dtype=torch.float64))) - i) < 1e-3  # float32 table
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        got = den(x, torch.tensor([sigma, sigma]))
        ref = _x0_oracle(sched, den.unet, x, i)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    assert den.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]


def test_pixel_model_contract_and_samplers(ddpm) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    table = ((1 - sched.alphas_cumprod.double()) / sched.alphas_cumprod.double()).sqrt()
    torch.testing.assert_close(ddpm.model_sigmas.double(), table, rtol=2e-4, atol=0)  # float32 in diffusers
    assert ddpm.sigma_min == pytest.approx(float(table[0]), rel=2e-4)
    assert ddpm.sigma_max == pytest.approx(float(table[-1]), rel=1e-6)
    assert ddpm.sample_shape == (3, 8, 8) and ddpm.family == "ddpm" and not ddpm.flow
    assert ddpm.default_schedule == ("time_uniform", 1.0)
    from adasde import samplers

    sig = get_sigmas("time_uniform", 4, ddpm.sigma_min, ddpm.sigma_max)
    x = torch.randn(2, *ddpm.sample_shape) * ddpm.sigma_max
    for fn in (sample_adasde, getattr(samplers, "sample_euler", None), getattr(samplers, "sample_heun", None)):
        if fn is None:
            continue
        y = fn(ddpm, x, sig, extra_args={"seed": 3})
        assert y.shape == x.shape and torch.isfinite(y).all()
    assert ddpm.bottleneck().shape == (2, 8, 4, 4)
    img = ddpm.decode(y)
    assert img.shape == (2, 3, 8, 8) and 0 <= float(img.min()) and float(img.max()) <= 1


def test_sd_cfg_is_one_batched_call_and_prompts_are_per_sample(sd) -> None:
    assert sd.family == "sd" and sd.default_schedule == ("discrete", 1.0) and sd.text_conditioned
    assert sd.sigma_min == pytest.approx(0.029168, abs=2e-6) and sd.sigma_max == pytest.approx(14.614641, abs=2e-5)
    calls = []
    hook = sd.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 5.0])
    with torch.no_grad():
        guided = sd(x, s, prompts=["a cat", "dog"], cfg=4.0)
        feat = sd.bottleneck()
        cond = sd(x, s, prompts=["a cat", "dog"], cfg=1.0)
        feat_cond = sd.bottleneck()
        unc = sd(x, s, prompts=["", ""], cfg=1.0)
        single = sd(x[:1], s[:1], prompts=["a cat"], cfg=4.0)
        emb, _ = sd.text.encode(["a cat", "dog"], x.device)
        neg, _ = sd.text.encode(["", ""], x.device, negative=True)
        by_embeds = sd(x, s, prompt_embeds=emb, negative_prompt_embeds=neg, cfg=4.0)
    hook.remove()
    assert calls[0] == 4 and calls[1] == 2  # [uncond; cond] in one call, then cond only
    torch.testing.assert_close(guided, unc + 4.0 * (cond - unc), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feat, feat_cond, atol=1e-5, rtol=1e-5)  # conditional half under CFG
    torch.testing.assert_close(single, guided[:1], atol=1e-4, rtol=1e-4)  # batch-independent
    torch.testing.assert_close(by_embeds, guided, atol=1e-6, rtol=1e-6)
    assert (cond[0] - cond[1]).abs().max() > 0  # the prompt matters


def test_sd_sampling_decode_and_default_condition(sd) -> None:
    sig = get_sigmas(*sd.default_schedule[:1], 4, model_sigmas=sd.model_sigmas)
    x = torch.randn(2, *sd.sample_shape, generator=torch.Generator().manual_seed(0)) * sd.sigma_max
    y = sample_adasde(sd, x, sig, extra_args={"prompts": ["a cat", "dog"], "cfg": 7.5, "seed": [0, 1]})
    y1 = sample_adasde(sd, x[1:], sig, extra_args={"prompts": ["dog"], "cfg": 7.5, "seed": [1]})
    torch.testing.assert_close(y[1:], y1, atol=1e-4, rtol=1e-4)
    img = sd.decode(y)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    y0 = sample_adasde(sd, x, sig)  # no prompt given: the empty prompt, no guidance
    assert torch.isfinite(y0).all()
    with pytest.raises(TypeError, match="unexpected extra_args"):
        sd(x, torch.tensor([1.0, 1.0]), promts=["typo"])


def test_sdxl_pipeline_folder(tmp_path: Path) -> None:
    den = load_model(f"diffusers:{make_sdxl_folder(tmp_path / 'xl')}", expect="sdxl")
    assert den.family == "sdxl" and den.text.sdxl
    sig = get_sigmas("discrete", 3, model_sigmas=den.model_sigmas)
    x = torch.randn(2, *den.sample_shape) * den.sigma_max
    y = sample_adasde(den, x, sig, extra_args={"prompts": ["a cat", "a cat"], "cfg": 5.0, "seed": 0})
    assert torch.isfinite(y).all() and den.decode(y).shape == (2, 3, 16, 16)
    with pytest.raises(ModelSpecError, match="but a sd model was expected"):
        load_model(f"diffusers:{tmp_path / 'xl'}", expect="sd")


def _save_unet_folder(tmp: Path, scheduler) -> Path:
    tiny_unet2d().save_pretrained(tmp / "unet")
    scheduler.save_pretrained(tmp / "unet")
    return tmp / "unet"


def test_edm_and_flow_unet_folders(tmp_path: Path) -> None:
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    edm = load_model(f"diffusers:{_save_unet_folder(tmp_path / 'edm', EDMEulerScheduler(sigma_data=0.5))}")
    assert edm.prediction == "edm" and (edm.sigma_min, edm.sigma_max) == (0.002, 80.0)
    x, sig = torch.randn(1, 3, 8, 8), torch.tensor([2.0])
    with torch.no_grad():
        f = edm.unet(x / (4 + 0.25) ** 0.5, torch.log(sig) / 4, return_dict=False)[0]
        ref = 0.25 / 4.25 * x + 2 * 0.5 / 4.25**0.5 * f
        torch.testing.assert_close(edm(x, sig), ref, atol=1e-5, rtol=1e-5)
    flow = load_model(f"diffusers:{_save_unet_folder(tmp_path / 'fl', FlowMatchEulerDiscreteScheduler())}")
    assert flow.flow and flow.prediction == "flow" and flow.sigma_max == 1.0
    s = torch.tensor([0.25])
    with torch.no_grad():
        v = flow.unet(x, s * 1000, return_dict=False)[0]
        torch.testing.assert_close(flow(x, s), x - 0.25 * v, atol=1e-6, rtol=1e-6)
    y = sample_adasde(flow, torch.randn(1, 3, 8, 8), get_sigmas("time_uniform", 3, flow.sigma_min, 0.99))
    assert torch.isfinite(y).all()


def test_distill_accepts_diffusers_denoisers(ddpm, sd) -> None:
    distill = pytest.importorskip("adasde.distill").distill
    from adasde.loaders.prompts import PromptCondition

    for den, cond in ((ddpm, None), (sd, PromptCondition(["a cat", "dog"], cfg=2.0).distill_condition(2))):
        co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=2, condition_fn=cond, seed=0)
        assert co.steps == 2 and torch.isfinite(co.r).all()
        assert co.model.family == den.family


def test_folder_errors_name_the_file(tmp_path: Path, ddpm_dir: Path, sd_dir: Path) -> None:
    with pytest.raises(ModelSpecError, match="no scheduler config"):
        tiny_unet2d().save_pretrained(tmp_path / "bare")
        load_model(f"diffusers:{tmp_path / 'bare'}")
    with pytest.raises(ModelSpecError, match="a text model was expected.*StableDiffusionPipeline"):
        load_model(f"diffusers:{ddpm_dir}", expect="text")
    bad = tmp_path / "trunc"
    shutil.copytree(ddpm_dir, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    with pytest.raises(ModelSpecError, match=rf"{w}.*truncated"):
        load_model(f"diffusers:{bad}")
    w.unlink()
    (bad / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelSpecError, match="only pickle weights"):
        load_model(f"diffusers:{bad}")
    mixed = tmp_path / "mixed"
    shutil.copytree(sd_dir, mixed)
    shutil.rmtree(mixed / "unet")
    shutil.copytree(ddpm_dir / "unet", mixed / "unet")
    with pytest.raises(ModelSpecError, match="is a UNet2DModel but .*model_index.json expects a UNet2DConditionModel"):
        load_model(f"diffusers:{mixed}")
    idx = json.loads((sd_dir / "model_index.json").read_text())
    assert idx["unet"][1] == "UNet2DConditionModel"
    with pytest.raises(ModelSpecError, match="no such folder"):
        load_model(f"diffusers:{tmp_path / 'nope'}")
    with pytest.raises(ModelSpecError, match="single-file"):
        load_model(f"diffusers:{w.parent / 'config.json'}")


def test_reduced_precision_weights(ddpm_dir: Path) -> None:
    bf = load_model(f"diffusers:{ddpm_dir}", dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    x = torch.randn(2, 3, 8, 8)
    y = bf(x, torch.tensor([1.0, 1.0]))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    with pytest.warns(UserWarning, match="fp16 is not supported .* on CPU"):
        assert load_model(f"diffusers:{ddpm_dir}", dtype="fp16").dtype == torch.float32


def test_latent_pipeline_with_vqvae(tmp_path: Path) -> None:
    """``LDMPipeline`` folder (UNet2DModel on VQ latents): discrete schedule, VQ-VAE decode to [0, 1] images."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=4,
                       in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    vq = VQModel(block_out_channels=[4, 8], norm_num_groups=4, latent_channels=3, num_vq_embeddings=8,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ldm")
    den = load_model(f"diffusers:{tmp_path / 'ldm'}", expect="latent")
    assert den.family == "ldm" and den.default_schedule == ("discrete", 1.0) and den.sample_shape == (3, 4, 4)
    sig = get_sigmas("discrete", 3, model_sigmas=den.model_sigmas)
    y = sample_adasde(den, torch.randn(2, 3, 4, 4) * den.sigma_max, sig)
    img = den.decode(y)
    assert img.shape == (2, 3, 8, 8) and 0 <= float(img.min()) and float(img.max()) <= 1
    with torch.no_grad():
        ref = vq.decode(y / vq.config.scaling_factor, return_dict=False)[0]
    torch.testing.assert_close(img, ((ref + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_fixture_folders_are_offline_diffusers_layouts(ddpm_dir: Path, sd_dir: Path) -> None:
    assert json.loads((ddpm_dir / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    idx = json.loads((sd_dir / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionPipeline"
    assert (sd_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (sd_dir / "tokenizer" / "tokenizer_config.json").is_file()
