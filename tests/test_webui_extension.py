"""The A1111 / Forge extension (``scripts/adasde.py``, ``webui/``) against a WebUI STAND-IN.

Neither WebUI can be installed here, so these tests run the real script against ``tests/webui_standin/modules``, a
minimal STAND-IN (not WebUI code) that reproduces the documented registry contract of A1111 1.10 and Forge
(docs/HOSTS.md section C; see tests/webui_standin/README.md).  The "U-Net" is an exact Gaussian-mixture denoiser, so the
samples are real.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from adasde import policy
from adasde.coefficients import Coefficients, ModelIdentity, load, save
from adasde.errors import AdasdeError, UsageError
from adasde.samplers import get_sigmas, sample_adasde

ROOT = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "webui_standin"
SCRIPT = ROOT / "scripts" / "adasde.py"


@pytest.fixture(params=["a1111", "forge"])
def host(request, tmp_path, monkeypatch):
    """The stand-in ``modules`` package configured as A1111 1.10 or Forge, with ``models/`` under tmp_path."""
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.delenv("ADASDE_COEFFICIENTS", raising=False)
    saved = {k: v for k, v in sys.modules.items() if k == "modules" or k.startswith("modules.")}
    for k in saved:
        del sys.modules[k]
    import modules.standin as st

    st.configure(request.param, models_path=str(tmp_path / "models"))
    ns = types.SimpleNamespace(kind=request.param, models=tmp_path / "models", family=(
        "sd15" if request.param == "a1111" else "sdxl"))
    yield ns
    from adasde.webui import core

    core.set_generation(None)
    for k in [k for k in sys.modules if k == "modules" or k.startswith("modules.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    gr = sys.modules.get("gradio")
    if gr is not None and str(STANDIN) in str(getattr(gr, "__file__", "")):
        del sys.modules["gradio"]


def load_script():
    """Execute scripts/adasde.py the way the WebUI does (a loose module named after the file)."""
    spec = importlib.util.spec_from_file_location("adasde.py", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trained(family: str, steps: int = 3) -> Coefficients:
    from modules.standin import sd15_sigmas

    sig = get_sigmas("discrete", steps + 1, model_sigmas=sd15_sigmas(), dtype=torch.float64)
    full = lambda v: torch.full((steps, 1), v)  # noqa: E731
    return Coefficients(r=torch.tensor([[0.2], [0.45], [0.15]]), a=torch.tensor([[0.85], [1.02], [0.9]]),
                        c=full(1.01), gamma=full(0.05), w=full(1.0), sigmas=sig, schedule="discrete", afs=True,
                        model=ModelIdentity(family=family, prediction="eps", sigma_min=0.0292, sigma_max=14.61))


def run(p, mod):
    from modules.processing import process_images

    return process_images(p, [mod.Script()])


def direct(p, sampler_name, sigmas, coeffs):
    """What sample_adasde gives when called by hand with the host's model, noise sampler and arguments."""
    from modules import sd_samplers

    s = sd_samplers.create_sampler(sampler_name, p.sd_model)
    s.initialize(p)
    x = p.initial_noise() * sigmas[0]
    cond, uncond = p.conds()
    extra = {"cond": cond, "image_cond": None, "uncond": uncond, "cond_scale": p.cfg_scale, "s_min_uncond": 0.0}
    return sample_adasde(s.model_wrap_cfg, x, sigmas, extra_args=extra, coeffs=coeffs,
                         noise_sampler=s.create_noise_sampler(x, sigmas, p))


def test_registers_once(host):
    from modules import sd_samplers, sd_schedulers

    load_script()
    load_script()  # WebUI "reload UI" imports the script again
    names = [s.name for s in sd_samplers.all_samplers]
    assert names.count("AdaSDE") == 1 and names.count("AMED") == 1 and "Euler" in names
    assert set(sd_samplers.all_samplers_map) == set(names)
    assert sd_samplers.samplers_map["adasde"] == "AdaSDE" and sd_samplers.samplers_map["amed"] == "AMED"
    assert "AdaSDE" in sd_samplers.visible_sampler_names()
    cfg = sd_samplers.all_samplers_map["AdaSDE"]
    assert cfg.options["brownian_noise"] is True and cfg.options["scheduler"] == "adasde"
    # two model calls per step: prompt editing, alternation, refiner switch and "skip early CFG" count the calls
    assert cfg.options["second_order"] is True and cfg.total_steps(3) == 6
    assert sd_samplers.all_samplers_map["AMED"].total_steps(4) == 8
    assert [s.name for s in sd_schedulers.schedulers].count("adasde") == 1
    assert sd_schedulers.schedulers_map["AdaSDE"] is sd_schedulers.schedulers_map["adasde"]
    if host.kind == "forge":
        assert sd_samplers.add_sampler_calls == 4  # registered through Forge's add_sampler
    else:
        assert not hasattr(sd_samplers, "add_sampler")


def test_generation_matches_direct_call(host):
    from modules.processing import StableDiffusionProcessing

    coeffs = trained(host.family)
    path = save(coeffs, host.models / "adasde" / f"{host.family}_nfe5.safetensors")
    mod = load_script()
    p = StableDiffusionProcessing(steps=3, script_args=("(Settings)",))
    samples, info, sampler = run(p, mod)
    kw = sampler.last_kwargs
    assert set(kw) == {"sigmas", "n", "sigma_min", "sigma_max", "noise_sampler"}  # what the WebUI passes
    assert torch.allclose(kw["sigmas"], coeffs.sigmas.float())  # AdaSDE scheduler: the trained grid, no 0
    assert kw["n"] == 3 and kw["noise_sampler"].calls  # churn noise came from the host's seeded sampler
    assert f"AdaSDE coefficients: {path.name}" in info and "AdaSDE NFE: 5" in info and "Schedule type: AdaSDE" in info
    assert sampler.callback_steps == [0, 1, 2]
    ref = direct(StableDiffusionProcessing(steps=3), "AdaSDE", kw["sigmas"], load(path))
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)
    assert samples.isfinite().all() and not torch.allclose(samples, p.initial_noise() * 14.61)
    # same seed, same sample, whatever the batch
    alone, _, _ = run(StableDiffusionProcessing(steps=3, seeds=[12], script_args=("(Settings)",)), mod)
    assert torch.allclose(alone[0], samples[1], atol=1e-6)


def test_other_scheduler_falls_back_to_untrained(host):
    from adasde.webui import detect_model
    from modules.processing import StableDiffusionProcessing

    save(trained(host.family), host.models / "adasde" / "c.safetensors")
    mod = load_script()
    # Karras with 4 steps: 4 positive points + 0, so the 3-step file is found but its grid does not match
    p = StableDiffusionProcessing(steps=4, scheduler="Karras", script_args=("auto",))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        samples, info, sampler = run(p, mod)
    sig = sampler.last_kwargs["sigmas"]
    expected = policy.plan_for_sigmas(detect_model(p.sd_model, sampler.model_wrap), "adasde", sig,
                                      dirs=[host.models / "adasde"])
    assert expected.source == "fallback" and len(expected.notes) == 1
    assert list(p.comments) == expected.notes  # the policy's text, shown under the image
    assert "Use the 'adasde' scheduler" in expected.notes[0]  # right advice: another scheduler was in use
    assert not rec  # the sampler was told "untrained": no second, different warning
    assert "AdaSDE coefficients: untrained" in info and "AdaSDE NFE: 7" in info  # 3 steps x 2 calls + final 0
    assert "AdaSDE coefficients hash" not in info
    ref = direct(StableDiffusionProcessing(steps=4), "AdaSDE", sig, None)
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["missing", "broken", "wrong family"])
def test_bad_named_file_stops_with_one_line(host, case):
    """A file picked by name must exist, be readable and fit the model: the same one-line error as every door."""
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    mod = load_script()
    args = ("(Settings)",)
    if case == "broken":
        (host.models / "adasde").mkdir(parents=True)
        (host.models / "adasde" / "broken.safetensors").write_bytes(b"\x00" * 12)
        shared.opts.adasde_coefficients = "broken.safetensors"  # chosen in Settings
    elif case == "wrong family":
        other = "sdxl" if host.family == "sd15" else "sd15"
        path = save(trained(other), host.models / "adasde" / "other.safetensors")
        args = ("other.safetensors",)  # chosen per generation
    else:
        args = ("gone.safetensors",)
    p = StableDiffusionProcessing(steps=3, script_args=args)
    with pytest.raises(AdasdeError) as err:
        run(p, mod)
    text = str(err.value)
    assert "\n" not in text
    if case == "broken":
        assert "broken.safetensors" in text and "not a safetensors file" in text
    elif case == "missing":
        assert "gone.safetensors" in text and "models/adasde" in text
    else:
        from adasde.webui import detect_model

        with pytest.raises(UsageError) as lib:
            policy.plan(detect_model(p.sd_model), "adasde", steps=3, coefficients=path)
        assert text == str(lib.value) and "was trained for model family" in text


def _hooks_clean(sd_model, original_unet):
    if hasattr(sd_model, "forge_objects"):
        unet = sd_model.forge_objects.unet
        return unet is original_unet and not unet.model_options["transformer_options"].get("block_modifiers")
    return len(sd_model.model.diffusion_model.middle_block._forward_hooks) == 0


@pytest.mark.parametrize("fail", [False, True])
def test_amed_bottleneck_hook(host, fail):
    """AMED with a real predictor: features come from the middle-block hook / Forge block modifier, the result equals
    sample_amed fed with the bottleneck computed independently, and the hook is gone afterwards (also on error)."""
    import torch.nn.functional as F
    from adasde.samplers import AMEDPredictor, sample_amed
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    c = trained(host.family)
    c.kind, c.gamma = "amed", torch.zeros(3, 1)
    net = AMEDPredictor(scale_dir=0.05, scale_time=0.2, seed=3)
    c.predictor, c.predictor_config = dict(net.state_dict()), net.config()
    path = save(c, host.models / "adasde" / "amed.safetensors")
    mod = load_script()
    original = getattr(getattr(shared.sd_model, "forge_objects", None), "unet", None)
    p = StableDiffusionProcessing(steps=3, sampler_name="AMED", seeds=[1, 2, 3], script_args=("auto",))
    if fail:
        p.raise_at_step = 1
        with pytest.raises(RuntimeError, match="interrupted"):
            run(p, mod)
        assert _hooks_clean(shared.sd_model, original)
        return
    samples, info, sampler = run(p, mod)
    assert _hooks_clean(shared.sd_model, original)
    assert "AdaSDE coefficients: amed.safetensors" in info and "AdaSDE NFE: 5" in info
    sig = sampler.last_kwargs["sigmas"]

    ref_p = StableDiffusionProcessing(steps=3, seeds=[1, 2, 3])
    from modules import sd_samplers

    s = sd_samplers.create_sampler("AMED", ref_p.sd_model)
    s.initialize(ref_p)
    last = {}

    def model(x, sigma, **extra):  # the stand-in's middle block is a 2x2 average pool of the input
        last["h"] = F.avg_pool2d(x, 2)
        return s.model_wrap_cfg(x, sigma, **extra)

    x = ref_p.initial_noise() * sig[0]
    cond, uncond = ref_p.conds()
    extra = {"cond": cond, "image_cond": None, "uncond": uncond, "cond_scale": ref_p.cfg_scale, "s_min_uncond": 0.0}
    ref = sample_amed(model, x, sig, extra_args=extra, coeffs=load(path), features=lambda: last["h"])
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)
    zero = sample_amed(model, x, sig, extra_args=extra, coeffs=load(path), features=None)
    assert not torch.allclose(samples, zero, atol=1e-4)  # the features really reached the predictor


def test_load_package_under_another_name():
    """The fallback path of the script: the extension folder loaded as a package when ``adasde`` is not importable."""
    src = SCRIPT.read_text()
    code = compile(src.split("\nwebui = ")[0], str(SCRIPT), "exec")
    ns: dict = {"__file__": str(SCRIPT), "__name__": "adasde_script_probe"}
    fake = types.ModuleType("modules")
    fake.script_callbacks = fake.scripts = fake.shared = None
    sys.modules.setdefault("modules", fake)
    try:
        exec(code, ns)  # noqa: S102 - our own file
        pkg = ns["load_package"](ROOT, name="adasde_copy_for_test")
        assert pkg.__name__ == "adasde_copy_for_test"
        samplers = importlib.import_module("adasde_copy_for_test.samplers")  # relative imports resolve in the copy
        assert callable(samplers.sample_adasde) and samplers is not importlib.import_module("adasde.samplers")
        assert ns["load_package"](ROOT, name="adasde").__file__ == sys.modules["adasde"].__file__  # importable: reused
    finally:
        if sys.modules.get("modules") is fake:
            del sys.modules["modules"]
        for k in [k for k in sys.modules if k.startswith("adasde_copy_for_test")]:
            del sys.modules[k]


def test_install_py_installs_only_missing(monkeypatch):
    calls = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: name != "scipy"
    launch.run_pip = lambda cmd, desc: calls.append(cmd)
    monkeypatch.setitem(sys.modules, "launch", launch)
    exec(compile((ROOT / "install.py").read_text(), "install.py", "exec"), {"__name__": "install"})  # noqa: S102
    assert calls == ['install "scipy>=1.10"']
    assert "torch" not in (ROOT / "install.py").read_text().split('"""')[-1]
    monkeypatch.setitem(sys.modules, "launch", None)  # outside the WebUI (ComfyUI-Manager runs install.py too)
    exec(compile((ROOT / "install.py").read_text(), "install.py", "exec"), {"__name__": "install"})  # noqa: S102
    assert calls == ['install "scipy>=1.10"']


def test_settings_and_script_ui(host):
    """Settings section and the always-visible script section (``gradio`` is a stand-in too: tests/webui_standin)."""
    from modules import script_callbacks, scripts, shared

    save(trained(host.family), host.models / "adasde" / "mine.safetensors")
    mod = load_script()
    for cb in script_callbacks.callbacks_ui_settings:
        cb()
    labels = shared.opts.data_labels
    assert {"adasde_coefficients", "adasde_comfyui_dir", "adasde_final_denoise"} <= set(labels)
    info = labels["adasde_coefficients"]
    assert info.default == "auto" and info.section == ("adasde", "AdaSDE")
    choices = info.component_args()["choices"]
    assert choices[:3] == ["auto", "untrained", "mine.safetensors"]  # the user's folder first, then shipped files
    assert all(c.endswith(".safetensors") for c in choices[2:])
    script = mod.Script()
    assert script.show(False) is scripts.AlwaysVisible and script.title() == "AdaSDE"
    assert callable(info.refresh)  # A1111 draws a refresh button next to a setting with a refresh callback
    (dropdown,) = script.ui(False)
    assert "mine.safetensors" in dropdown.kwargs["choices"]
    # refresh button: a file added after the UI was built appears in the choices
    save(trained(host.family), host.models / "adasde" / "later.safetensors")
    from gradio import Button

    button = [c for c in Button.created if isinstance(c, Button)][-1]
    update = button.handler()
    assert "later.safetensors" in update["choices"] and update["choices"][:3] == ["(Settings)", "auto", "untrained"]
    assert "later.safetensors" in info.refresh()
    assert script.infotext_fields == [(dropdown, "AdaSDE coefficients")]  # pasting an infotext restores the choice


def test_comfyui_folder_and_final_denoise_setting(host, tmp_path):
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    comfy = tmp_path / "ComfyUI"
    path = save(trained(host.family), comfy / "models" / "adasde_coefficients" / "from_comfy.safetensors")
    mod = load_script()
    shared.opts.adasde_comfyui_dir = str(comfy)
    shared.opts.adasde_final_denoise = True
    p = StableDiffusionProcessing(steps=3, script_args=("(Settings)",))
    samples, info, sampler = run(p, mod)
    sig = sampler.last_kwargs["sigmas"]
    assert len(sig) == 5 and sig[-1] == 0 and torch.allclose(sig[:-1], load(path).sigmas.float())
    assert "AdaSDE coefficients: from_comfy.safetensors" in info and "AdaSDE NFE: 6" in info  # 5 + final denoise
    from adasde.webui.core import file_hash

    assert f"AdaSDE coefficients hash: {file_hash(path)}" in info


def test_detect_model_families():
    """Family / prediction detection from A1111 flags and Forge engine classes (plain objects with those attributes)."""
    from adasde.webui import detect_model

    def obj(cls_name, **attrs):
        return type(cls_name, (), attrs)()

    def fp(info):
        return info.family, info.prediction, info.flow

    forge_unet = lambda kind, **kw: types.SimpleNamespace(  # noqa: E731
        unet=types.SimpleNamespace(model=types.SimpleNamespace(predictor=types.SimpleNamespace(prediction_type=kind,
                                                                                               **kw))))
    assert fp(detect_model(obj("LatentDiffusion", is_sd1=True, parameterization="eps"))) == ("sd15", "eps", False)
    assert fp(detect_model(obj("DiffusionEngine", is_sdxl=True))) == ("sdxl", "eps", False)
    assert fp(detect_model(obj("LatentDiffusion", is_sd2=True, parameterization="v"))) == ("sd21", "v", False)
    assert fp(detect_model(obj("SD3Inferencer", is_sd3=True))) == ("sd3", "flow", True)
    flux = detect_model(obj("Flux", forge_objects=forge_unet("const", shift=1.15)))
    assert fp(flux) == ("flux", "flow", True) and flux.flow_shift == 1.15 and flux.schedule() == ("flow_shift", 1.15)
    assert detect_model(obj("StableDiffusionXL", forge_objects=forge_unet("v_prediction"))).prediction == "v"
    assert fp(detect_model(None)) == ("unknown", "unknown", False)
    # the sigma table: from the host's sampler wrapper, else alphas_cumprod (A1111 models carry it)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    info = detect_model(obj("LatentDiffusion", is_sd1=True, alphas_cumprod=ac.float()))
    assert info.schedule() == ("discrete", 1.0) and info.model_sigmas.numel() == 1000
    assert info.sigma_min == pytest.approx(0.0292, abs=1e-4) and info.sigma_max == pytest.approx(14.61, abs=1e-2)


def _plan_for(p, sampler, n=None, **kw):
    """The policy's plan for the stand-in's model (what every door must yield)."""
    from adasde.webui import coefficient_dirs, detect_model
    from modules import sd_samplers

    wrap = sd_samplers.create_sampler("AdaSDE", p.sd_model).model_wrap
    return policy.plan(detect_model(p.sd_model, wrap), sampler, steps=n or p.steps, dirs=coefficient_dirs(), **kw)


def test_discard_next_to_last_sigma_keeps_trained_points(host):
    """The host's "always discard next-to-last sigma" asks for steps + 1 and cuts one value: the trained grid
    survives whole."""
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    path = save(trained(host.family), host.models / "adasde" / "c.safetensors")
    mod = load_script()
    shared.opts.always_discard_next_to_last_sigma = True
    p = StableDiffusionProcessing(steps=3, script_args=("(Settings)",))
    samples, info, sampler = run(p, mod)
    sig = sampler.last_kwargs["sigmas"]
    assert torch.allclose(sig, load(path).sigmas.float()) and "Discard penultimate sigma: True" in info
    assert f"AdaSDE coefficients: {path.name}" in info and "AdaSDE NFE: 5" in info
    ref = direct(StableDiffusionProcessing(steps=3), "AdaSDE", sig, load(path))
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fix_steps", [True, False])
def test_img2img_uses_the_trained_rows(host, fix_steps):
    """img2img at denoise 0.6.  With A1111's "img2img_fix_steps", 3 steps: the last 3 intervals of the 5-step
    trained grid, rows 2.., exactly the policy's plan for denoise 0.6.  Without it, 5 steps: the host runs
    int(0.6 * 5) + 1 = 4 intervals, rows 1.., the policy's plan for that grid."""
    from adasde.webui import detect_model
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    c = trained(host.family, steps=5)
    c.r, c.a = torch.linspace(0.3, 0.6, 5)[:, None], torch.linspace(0.9, 1.05, 5)[:, None]
    path = save(c, host.models / "adasde" / "five.safetensors")
    mod = load_script()
    shared.opts.img2img_fix_steps = fix_steps
    init = torch.full((2, 4, 4, 4), 0.2)
    p = StableDiffusionProcessing(steps=3 if fix_steps else 5, denoising_strength=0.6, init_latent=init,
                                  script_args=("auto",))
    samples, info, sampler = run(p, mod)
    if fix_steps:
        expected = _plan_for(p, "adasde", denoise=0.6)
        assert expected.offset == 2 and expected.steps == 3
    else:
        from modules import sd_samplers

        wrap = sd_samplers.create_sampler("AdaSDE", p.sd_model).model_wrap
        expected = policy.plan_for_sigmas(detect_model(p.sd_model, wrap), "adasde", load(path).sigmas[1:],
                                          coefficients=path)
        assert expected.offset == 1 and expected.steps == 4
    assert expected.coeffs_path == str(path) and not expected.notes and not p.comments
    sig = sampler.last_kwargs["sigmas"]
    torch.testing.assert_close(sig.double(), expected.sigmas, rtol=1e-6, atol=0)
    assert f"AdaSDE coefficients: {path.name}" in info and f"AdaSDE NFE: {expected.nfe}" in info
    from modules import sd_samplers

    s = sd_samplers.create_sampler("AdaSDE", p.sd_model)
    s.initialize(p)
    cond, uncond = p.conds()
    extra = {"cond": cond, "image_cond": None, "uncond": uncond, "cond_scale": p.cfg_scale, "s_min_uncond": 0.0}
    x = init + p.initial_noise() * sig[0]
    full = load(path).sigmas.float()
    ref = sample_adasde(s.model_wrap_cfg, x, sig, extra_args=extra, coeffs=load(path),
                        noise_sampler=s.create_noise_sampler(x, full, p))  # the host spans the uncut grid
    torch.testing.assert_close(samples, ref, atol=1e-6, rtol=0)


def test_hires_after_another_sampler_has_no_trailing_zero(host):
    """First pass Euler (+ the AdaSDE schedule with its final 0), hires pass AdaSDE: the hires grid is the trained
    one without a trailing 0, and the hires infotext names the file."""
    from modules.processing import StableDiffusionProcessing

    c = trained(host.family, steps=5)
    c.r = torch.linspace(0.3, 0.6, 5)[:, None]
    c.a, c.c, c.w, c.gamma = torch.ones(5, 1), torch.ones(5, 1), torch.ones(5, 1), torch.zeros(5, 1)
    path = save(c, host.models / "adasde" / "five.safetensors")
    mod = load_script()
    p = StableDiffusionProcessing(steps=5, sampler_name="Euler", scheduler="AdaSDE", enable_hr=True,
                                  hr_sampler_name="AdaSDE", hr_second_pass_steps=3, hr_denoising_strength=0.6,
                                  script_args=("auto",))
    samples, info, sampler = run(p, mod)
    sig = sampler.last_kwargs["sigmas"]
    assert float(sig[-1]) > 0 and len(sig) == 4
    torch.testing.assert_close(sig.double(), load(path).sigmas[2:], rtol=1e-6, atol=0)
    assert f"Hires AdaSDE coefficients: {path.name}" in info and "Hires AdaSDE NFE: 6" in info
    assert samples.isfinite().all()


def test_older_host_says_what_is_unavailable(host, caplog):
    """A1111 1.6-1.8: no sd_schedulers, no process_before_every_sampling.  One log line says what is missing;
    the samplers still register (without the "scheduler" option)."""
    from modules import scripts, sd_samplers

    sys.modules["modules.sd_schedulers"] = None  # import fails, as on a host without the module
    saved = scripts.Script.process_before_every_sampling
    del scripts.Script.process_before_every_sampling
    try:
        with caplog.at_level(logging.INFO, logger="adasde"):
            load_script()
    finally:
        scripts.Script.process_before_every_sampling = saved
        del sys.modules["modules.sd_schedulers"]
    lines = [r.getMessage() for r in caplog.records if "needs A1111" in r.getMessage()]
    assert len(lines) == 1 and "A1111 >= 1.9" in lines[0] and "A1111 >= 1.10" in lines[0]
    assert "scheduler" not in sd_samplers.all_samplers_map["AdaSDE"].options
    from adasde.webui import host_features

    assert host_features() == host_features().__class__(
        "Forge" if host.kind == "forge" else "AUTOMATIC1111",
        "v1.10.1" if host.kind == "a1111" else "f2.0.1v1.10.1-previous-669-gdfdcbab6", True, True)
    assert host_features().missing() == []
