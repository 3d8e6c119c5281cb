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
from adasde.coefficients import Coefficients, ModelIdentity, load, save
from adasde.samplers import CoefficientMismatchWarning, get_sigmas, sample_adasde

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
    from modules.processing import StableDiffusionProcessing

    save(trained(host.family), host.models / "adasde" / "c.safetensors")
    mod = load_script()
    # Karras with 4 steps: 4 positive points + 0, so the 3-step file is found but its grid does not match
    p = StableDiffusionProcessing(steps=4, scheduler="Karras", script_args=("auto",))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        samples, info, sampler = run(p, mod)
    assert any(issubclass(w.category, CoefficientMismatchWarning) for w in rec)
    assert "AdaSDE coefficients: untrained" in info and "AdaSDE NFE: 7" in info  # 3 steps x 2 calls + final 0
    ref = direct(StableDiffusionProcessing(steps=4), "AdaSDE", sampler.last_kwargs["sigmas"], None)
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["missing", "broken"])
def test_bad_coefficient_file_logs_and_falls_back(host, case, caplog):
    from modules import shared
    from modules.processing import StableDiffusionProcessing

    mod = load_script()
    if case == "broken":
        (host.models / "adasde").mkdir(parents=True)
        (host.models / "adasde" / "broken.safetensors").write_bytes(b"\x00" * 12)
        shared.opts.adasde_coefficients = "broken.safetensors"  # chosen in Settings
        args = ("(Settings)",)
    else:
        args = ("gone.safetensors",)  # chosen per generation
    p = StableDiffusionProcessing(steps=3, script_args=args)
    with caplog.at_level(logging.WARNING, logger="adasde"):
        samples, info, sampler = run(p, mod)
    text = caplog.text
    if case == "broken":
        assert "broken.safetensors" in text and "not a safetensors file" in text
    else:
        assert "gone.safetensors" in text and "not found" in text
    assert "untrained AdaSDE" in text and "AdaSDE coefficients: untrained" in info
    sig = sampler.last_kwargs["sigmas"]
    assert len(sig) == 4 and sig[-1] > 0  # fallback grid of the AdaSDE scheduler: discrete, rho 1, 3 steps
    ref = direct(StableDiffusionProcessing(steps=3), "AdaSDE", sig, None)
    assert torch.allclose(samples, ref, atol=1e-6, rtol=0)


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
    (dropdown,) = script.ui(False)
    assert "mine.safetensors" in dropdown.kwargs["choices"]
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
    from adasde.webui import ModelInfo, detect_model

    def obj(cls_name, **attrs):
        return type(cls_name, (), attrs)()

    forge_unet = lambda kind: types.SimpleNamespace(  # noqa: E731
        unet=types.SimpleNamespace(model=types.SimpleNamespace(predictor=types.SimpleNamespace(prediction_type=kind))))
    assert detect_model(obj("LatentDiffusion", is_sd1=True, parameterization="eps")) == ModelInfo("sd15", "eps", False)
    assert detect_model(obj("DiffusionEngine", is_sdxl=True)) == ModelInfo("sdxl", "eps", False)
    assert detect_model(obj("LatentDiffusion", is_sd2=True, parameterization="v")) == ModelInfo("sd21", "v", False)
    assert detect_model(obj("SD3Inferencer", is_sd3=True)) == ModelInfo("sd3", "flow", True)
    assert detect_model(obj("Flux", forge_objects=forge_unet("const"))) == ModelInfo("flux", "flow", True)
    assert detect_model(obj("StableDiffusionXL", forge_objects=forge_unet("v_prediction"))).prediction == "v"
    assert detect_model(None) == ModelInfo("unknown", "unknown", False)
