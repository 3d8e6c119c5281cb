"""``AdaSDEScheduler`` / ``AMEDPluginScheduler`` inside a real ``StableDiffusionPipeline`` built from tiny configs:
same latents as the functional ``sample_adasde`` with the same coefficients and noise (docs/HOSTS.md section D2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from adasde.coefficients import Coefficients
from adasde.models import load_model
from adasde.samplers import CoefficientMismatchWarning, get_sigmas, sample_adasde

diffusers = pytest.importorskip("diffusers")
from adasde.diffusers_scheduler import AdaSDEScheduler, AMEDPluginScheduler  # noqa: E402

PROMPTS = ["a cat", "dog"]


@pytest.fixture(scope="module")
def den(sd_dir):
    return load_model(f"diffusers:{sd_dir}")


@pytest.fixture(scope="module")
def pipe(sd_dir):
    p = diffusers.StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def trained(den, steps: int = 3, K: int = 1, afs: bool = True, kind: str = "adasde", base: str | None = None,
            seed: int = 1) -> Coefficients:
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(steps, K, generator=g)  # noqa: E731
    w = torch.softmax(torch.randn(steps, K, generator=g), -1)
    sig = get_sigmas("discrete", steps + 1, model_sigmas=den.model_sigmas, dtype=torch.float64)
    return Coefficients(r=u(0.3, 0.7), a=u(0.85, 1.15), c=u(0.95, 1.05), gamma=u(0.01, 0.08), w=w, sigmas=sig,
                        schedule="discrete", afs=afs, kind=kind, base=base)


def _run_pipe(pipe, sched, z, steps, cfg=7.5):
    pipe.scheduler = sched
    return pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=cfg, latents=z.clone(),
                output_type="latent", height=16, width=16).images


@pytest.mark.parametrize("afs,K", [(True, 1), (False, 2)])
def test_pipeline_matches_functional_sampler(den, pipe, afs: bool, K: int) -> None:
    co = trained(den, steps=3, K=K, afs=afs)
    sched = AdaSDEScheduler.from_coefficients(co, pipe.scheduler.config)
    sched.set_noise_seeds([10, 11])
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = _run_pipe(pipe, sched, z, co.steps)
    assert len(sched.timesteps) == co.nfe  # one timestep per model call
    ref = sample_adasde(den, z * co.sigmas[0].float(), co.sigmas.float(),
                        extra_args={"prompts": PROMPTS, "cfg": 7.5, "seed": [10, 11]}, coeffs=co)
    torch.testing.assert_close(out, ref, atol=5e-4, rtol=1e-4)
    # churn noise matters: another seed gives another image
    sched.set_noise_seeds([12, 13])
    assert (_run_pipe(pipe, sched, z, co.steps) - out).abs().max() > 1e-3


def test_generator_churn_is_reproducible_and_config_round_trips(den, pipe, tmp_path: Path) -> None:
    co = trained(den, steps=2, afs=False)
    sched = AdaSDEScheduler.from_coefficients(co, pipe.scheduler.config)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    def run(s):
        pipe.scheduler = s
        return pipe(prompt=PROMPTS, num_inference_steps=2, guidance_scale=3.0, latents=z.clone(), height=16,
                    width=16, output_type="latent", generator=torch.Generator().manual_seed(7)).images

    a, b = run(sched), run(sched)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    sched.save_pretrained(tmp_path / "sched")
    loaded = AdaSDEScheduler.from_pretrained(tmp_path / "sched")
    assert isinstance(loaded.config.r, list) and loaded.config.r == sched.config.r
    torch.testing.assert_close(run(loaded), a, atol=0, rtol=0)
    loaded.set_timesteps(2)
    sched.set_timesteps(2)
    torch.testing.assert_close(loaded.timesteps, sched.timesteps)
    assert len(loaded) == 1000 and loaded.order == 2
    assert loaded.init_noise_sigma == pytest.approx(float(co.sigmas[0]))


def test_file_round_trip_policy_checks_and_add_noise(den, tmp_path: Path, monkeypatch) -> None:
    """steps = intervals; a stored file must fit the step count (the policy's error text); ``auto`` without a
    fitting file and ``untrained`` run untrained AdaSDE, ``auto`` with the policy's note as a warning."""
    from adasde import policy
    from adasde.coefficients import save
    from adasde.errors import UsageError

    monkeypatch.delenv("ADASDE_COEFFICIENTS", raising=False)
    co = trained(den, steps=3)
    save(co, tmp_path / "c.safetensors")
    sched = AdaSDEScheduler.from_coefficients(tmp_path / "c.safetensors")
    sched.set_timesteps()
    assert len(sched.timesteps) == co.nfe and sched.plan.coeffs_path == str(tmp_path / "c.safetensors")
    with pytest.raises(UsageError) as err:
        sched.set_timesteps(5)
    with pytest.raises(UsageError) as lib:
        policy.plan(sched.model_info(), "adasde", steps=5, coefficients=tmp_path / "c.safetensors")
    assert str(err.value) == str(lib.value) and "trained for 3 steps" in str(err.value)
    auto = AdaSDEScheduler(model_family="sd15", coefficient_dirs=[str(tmp_path / "empty")])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        auto.set_timesteps(5)
    notes = [str(w.message) for w in rec if issubclass(w.category, CoefficientMismatchWarning)]
    assert notes == policy.plan(auto.model_info(), "adasde", steps=5, dirs=[tmp_path / "empty"]).notes
    assert len(notes) == 1 and "5 steps" in notes[0]
    assert len(auto.timesteps) == 10 and not auto.tables.trained
    quiet = AdaSDEScheduler(coefficients="untrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.set_timesteps(5)
    torch.testing.assert_close(quiet.timesteps, auto.timesteps)
    x0, noise = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    sigma = float(den.model_sigmas[500])
    torch.testing.assert_close(sched.add_noise(x0, noise, torch.tensor([500])), noise * sigma, rtol=1e-4, atol=0)


def test_untrained_scheduler_is_dpm_solver_2_on_v_prediction(den) -> None:
    """No coefficients: midpoint DPM-Solver-2 on the discrete schedule; v-prediction conversion in the scheduler."""
    sched = AdaSDEScheduler(prediction_type="v_prediction", coefficients="untrained")
    sched.set_timesteps(3)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sched.init_noise_sigma
    ehs, _ = den.text.encode(["a cat"], x.device)

    def vpred(xin, t):  # a fixed "v-model": the real UNet output read as v
        return den.unet(xin, t, encoder_hidden_states=ehs).sample

    y = x.clone()
    for t in sched.timesteps:
        y = sched.step(vpred(sched.scale_model_input(y, t), t), t, y).prev_sample

    def D(xx, s, **_):  # the same model in sigma form (v: D = x/(1+s^2) - s/sqrt(1+s^2) v)
        s4 = s.view(-1, 1, 1, 1)
        t = den.param.timestep(s.double()).float()
        return xx / (1 + s4**2) - s4 / (1 + s4**2).sqrt() * vpred(xx / (1 + s4**2).sqrt(), t)

    sig = get_sigmas("discrete", 4, model_sigmas=den.model_sigmas)
    torch.testing.assert_close(y, sample_adasde(D, x, sig), atol=1e-4, rtol=1e-4)


def test_amed_plugin_scheduler_euler_and_dpm2(den) -> None:
    ehs, _ = den.text.encode(["dog"], torch.device("cpu"))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def D(xx, s):
        return den(xx, s.expand(xx.shape[0]), prompt_embeds=ehs)

    for base in ("euler", "dpm_2"):
        co = trained(den, steps=2, afs=False, kind="amed_plugin", base=base)
        sched = AMEDPluginScheduler.from_coefficients(co, {"prediction_type": "epsilon"})
        sched.set_timesteps()
        y = x * sched.init_noise_sigma
        ref = y.clone()
        for t in sched.timesteps:
            out = den.unet(sched.scale_model_input(y, t), t, encoder_hidden_states=ehs).sample
            y = sched.step(out, t, y).prev_sample
        s = [float(v) for v in co.sigmas]
        for n in range(2):  # docs/ALGORITHMS.md section 4.3, written out
            r, a, c = float(co.r[n, 0]), float(co.a[n, 0]), float(co.c[n, 0])
            d_n = (ref - D(ref, torch.tensor([s[n]]))) / s[n]
            sm = s[n + 1] ** r * s[n] ** (1 - r)
            x_s = ref + (sm - s[n]) * d_n
            d_s = (x_s - D(x_s, torch.tensor([a * sm]))) / sm
            if base == "euler":
                ref = x_s + c * (s[n + 1] - sm) * d_s
            else:
                ref = ref + c * (s[n + 1] - s[n]) * (d_s / (2 * r) + (1 - 1 / (2 * r)) * d_n)
        torch.testing.assert_close(y, ref, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="AMEDPluginScheduler"):
        AdaSDEScheduler.from_coefficients(trained(den, kind="amed_plugin", base="euler"))
    with pytest.raises(ValueError, match="ipndm"):
        AMEDPluginScheduler.from_coefficients(trained(den, kind="amed_plugin", base="ipndm"))
