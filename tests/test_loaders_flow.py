"""``diffusers:DIR`` on SD3 and Flux pipeline folders (flow models with their shift), tiny random weights: the
denoiser against D = x - s v on the raw transformer output (Flux: packed latents, guidance embedding), the shift
and the shift-aware default schedule against diffusers' own scheduler, sampling, distillation, pickle refusal."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from adasde.loaders import ModelSpecError
from adasde.models import load_model
from adasde.samplers import get_sigmas, sample_adasde

diffusers = pytest.importorskip("diffusers")


def _default_sigmas(den, n: int, sigma_min: float | None = None) -> torch.Tensor:
    kind, rho = den.default_schedule
    return get_sigmas(kind, n, sigma_min or den.sigma_min, den.sigma_max, rho=rho, model_sigmas=den.model_sigmas,
                      dtype=torch.float64)


def _check_shift_aware(den, sched, n: int, **kw) -> None:
    """The default schedule is shift(u) on a uniform u grid: the formula, and diffusers' FlowMatchEulerDiscrete
    scheduler (which ends at its own sigma_min) over the same end points."""
    u = torch.linspace(1, 1 / 1000, n, dtype=torch.float64)
    sh = den.flow_shift
    torch.testing.assert_close(_default_sigmas(den, n), sh * u / (1 + (sh - 1) * u), atol=1e-3, rtol=0)
    sched.set_timesteps(n, **kw)
    ref = sched.sigmas[:n].double()
    torch.testing.assert_close(_default_sigmas(den, n, float(ref[-1])), ref, atol=1e-3, rtol=0)


def test_sd3_denoiser_shift_and_schedule(sd3_dir: Path) -> None:
    den = load_model(f"diffusers:{sd3_dir}")
    assert (den.family, den.flow, den.prediction, den.flow_shift) == ("sd3", True, "flow", 3.0)
    assert den.sample_shape == (4, 8, 8) and den.sigma_max == 1.0
    assert den.default_schedule == ("discrete", 1.0)
    # the default schedule is the one diffusers' FlowMatchEulerDiscreteScheduler (shift 3) samples with
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(sd3_dir / "scheduler"))
    _check_shift_aware(den, sched, 6)
    tr = diffusers.SD3Transformer2DModel.from_pretrained(str(sd3_dir / "transformer"))
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([0.9, 0.3])
    emb, pooled = torch.randn(2, 24, 32), torch.randn(2, 16)
    nemb, npooled = torch.randn(2, 24, 32), torch.randn(2, 16)
    with torch.no_grad():
        v_c = tr(hidden_states=x, timestep=s * 1000, encoder_hidden_states=emb, pooled_projections=pooled).sample
        v_u = tr(hidden_states=x, timestep=s * 1000, encoder_hidden_states=nemb, pooled_projections=npooled).sample
        sv = s.view(-1, 1, 1, 1)
        torch.testing.assert_close(den(x, s, prompt_embeds=emb, pooled_prompt_embeds=pooled), x - sv * v_c,
                                   atol=1e-5, rtol=1e-5)
        got = den(x, s, prompt_embeds=emb, pooled_prompt_embeds=pooled, negative_prompt_embeds=nemb,
                  negative_pooled_prompt_embeds=npooled, cfg=7.0)
        torch.testing.assert_close(got, x - sv * (v_u + 7.0 * (v_c - v_u)), atol=1e-5, rtol=1e-5)
        # prompts go through the pipeline's own encode_prompt; one prompt per sample
        a = den(x, s, prompts=["a cat", "dog"], cfg=4.0)
        b = den(x[:1], s[:1], prompts=["a cat"], cfg=4.0)
        torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[1:], den(x[1:], s[1:], prompts=["a cat"], cfg=4.0))
    assert den.bottleneck().shape == (1, 16, 4, 4)  # hidden tokens of the middle block on the 4 x 4 patch grid


def test_flux_denoiser_packed_latents_guidance_and_dynamic_shift(flux_dir: Path) -> None:
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

    den = load_model(f"diffusers:{flux_dir}", image_size=16)
    assert (den.family, den.flow, den.prediction) == ("flux", True, "flow")
    assert den.sample_shape == (4, 8, 8)
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)  # 4 x 4 packed tokens
    assert den.flow_shift == pytest.approx(math.exp(mu))
    big = load_model(f"diffusers:{flux_dir}?image_size=128")  # resolution-dependent shift
    assert big.sample_shape == (4, 64, 64) and big.flow_shift == pytest.approx(math.exp(calculate_shift(1024)))
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(flux_dir / "scheduler"))
    _check_shift_aware(den, sched, 6, mu=mu)
    tr = diffusers.FluxTransformer2DModel.from_pretrained(str(flux_dir / "transformer"))
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([0.8, 0.2])
    emb, pooled = torch.randn(2, 12, 32), torch.randn(2, 8)
    with torch.no_grad():
        packed = FluxPipeline._pack_latents(x, 2, 4, 8, 8)
        img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, x.device, x.dtype)
        v = tr(hidden_states=packed, timestep=s, guidance=torch.full((2,), 3.5), pooled_projections=pooled,
               encoder_hidden_states=emb, txt_ids=torch.zeros(12, 3), img_ids=img_ids).sample
        v = FluxPipeline._unpack_latents(v, 16, 16, 2)
        got = den(x, s, prompt_embeds=emb, pooled_prompt_embeds=pooled, cfg=3.5)
        torch.testing.assert_close(got, x - s.view(-1, 1, 1, 1) * v, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, den(x, s, prompt_embeds=emb, pooled_prompt_embeds=pooled, cfg=1.0))
        assert torch.isfinite(den(x, s, prompts=["a cat", "dog"], cfg=3.5)).all()


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_flow_pipelines_sample_and_distil(sd3_dir: Path, flux_dir: Path, which: str) -> None:
    from adasde.distill import distill
    from adasde.loaders.prompts import PromptCondition

    den = load_model(f"diffusers:{sd3_dir if which == 'sd3' else flux_dir}", image_size=16)
    sig = _default_sigmas(den, 4).float()
    y = sample_adasde(den, torch.randn(2, *den.sample_shape), sig,
                      extra_args={"prompts": ["a cat", "dog"], "cfg": 3.0, "seed": 0})
    assert torch.isfinite(y).all() and den.decode(y).shape == (2, 3, 16, 16)
    cond = PromptCondition(["a cat", "dog"], cfg=3.0).distill_condition(2)
    co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=2, condition_fn=cond, seed=0)
    assert co.steps == 2 and torch.isfinite(co.r).all() and co.model.family == which
    assert co.model.prediction == "flow"
    if which == "sd3":  # AMED reads the transformer's middle-block tokens as its bottleneck map
        from adasde.distill.amed import distill_amed

        amed = distill_amed(den, nfe=5, batch=2, trajectories=2, seed=0, condition_fn=cond)
        assert amed.kind == "amed" and amed.model.family == "sd3"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_flow_folder_errors_and_pickled_weights(sd3_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(sd3_dir, bad)
    marker = tmp_path / "marker"
    for f in (bad / "transformer").glob("*.safetensors"):
        f.unlink()
    torch.save({"w": _Payload(marker)}, bad / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelSpecError, match=r"transformer: only pickle weights \(diffusion_pytorch_model.bin\)"):
        load_model(f"diffusers:{bad}")
    assert not marker.exists()
    with pytest.raises(ModelSpecError, match="but a sd model was expected"):
        load_model(f"diffusers:{sd3_dir}", expect="sd")
    with pytest.raises(ModelSpecError, match="image_size 2 is below one 2 x 2 latent patch"):
        load_model(f"diffusers:{sd3_dir}", image_size=2)
