"""In-process checks of the ComfyUI adapter's model identity (real ComfyUI 0.30.0 modules, no server): the policy's
ModelInfo built from ComfyUI's model_sampling classes (prediction, sigma range, discrete table, flow shift) and the
scheduler's recovery of the model family from a bare ``model_sampling`` object (docs/HOSTS.md sections A4, A5).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from helpers.comfyui import REPO, import_comfy_in_process

pytestmark = [pytest.mark.comfyui]


@pytest.fixture(scope="module")
def host():
    import_comfy_in_process()
    from adasde.nodes import host as h

    return h


def _sampling(config_name: str, model_type: str):
    import comfy.model_base
    import comfy.supported_models

    cfg = getattr(comfy.supported_models, config_name)({})
    return comfy.model_base.model_sampling(cfg, getattr(comfy.model_base.ModelType, model_type))


def test_sd_discrete_model_info(host) -> None:
    ms = _sampling("SD15", "EPS")
    info = host.info_from_sampling(ms, "sd15")
    assert (info.family, info.prediction, info.flow) == ("sd15", "eps", False)
    assert info.model_sigmas is not None and info.model_sigmas.numel() == 1000
    assert abs(info.sigma_max - 14.614642) < 1e-4 and abs(info.sigma_min - 0.0291675) < 1e-5
    assert info.schedule() == ("discrete", 1.0)
    v = host.info_from_sampling(_sampling("SD20", "V_PREDICTION"), "sd21")
    assert v.prediction == "v"


@pytest.mark.parametrize(("config", "model_type", "family"), [("SD3", "FLOW", "sd3"), ("Flux", "FLUX", "flux")])
def test_flow_models_take_a_shift_aware_grid(host, config: str, model_type: str, family: str) -> None:
    """The default grid is uniform in the flow time t of ComfyUI's own sigma(t): SD3's shift is the time map's
    factor, Flux stores mu = log(shift)."""
    from adasde.policy import plan

    ms = _sampling(config, model_type)
    info = host.info_from_sampling(ms, family)
    assert info.flow and info.prediction == "flow" and info.model_sigmas is None
    shift = float(ms.shift) if config == "SD3" else math.exp(float(ms.shift))
    assert info.flow_shift == pytest.approx(shift)
    assert info.schedule() == ("flow_shift", pytest.approx(shift))
    p = plan(info, "adasde", steps=4, dirs=[])
    assert p.coeffs is None and len(p.sigmas) == 5 and float(p.sigmas[0]) == pytest.approx(1.0)
    # the grid points are ComfyUI's sigma(t) at t uniform between the ends (timestep units: SD3 x1000, Flux x1)
    scale = 1000.0 if config == "SD3" else 1.0
    t_of = lambda s: s / (shift - (shift - 1) * s)  # noqa: E731 - inverse of sigma = shift t / (1 + (shift - 1) t)
    ts = torch.linspace(t_of(info.sigma_max), t_of(info.sigma_min), 5, dtype=torch.float64)
    want = torch.stack([torch.as_tensor(ms.sigma(t * scale), dtype=torch.float64) for t in ts])
    torch.testing.assert_close(p.sigmas, want, rtol=1e-5, atol=1e-7)


def test_family_from_config_class(host) -> None:
    import comfy.supported_models as sm

    assert host.family_of_config(sm.SD15({})) == "sd15"
    assert host.family_of_config(sm.SDXL({})) == "sdxl"
    assert host.family_of_config(sm.SD3({})) == "sd3"


def test_scheduler_recovers_the_family_of_a_bare_model_sampling(host) -> None:
    """The scheduler gets only ``model_sampling``: the family comes from the BaseModel owning it, or from the
    ModelPatcher that patched a new one in, without our code having seen the model before."""
    import comfy.model_base

    sys.path.insert(0, str(REPO / "tests"))
    from comfy_test_pack import build_toy_model

    mp = build_toy_model(7)
    ms = mp.model.model_sampling
    host._FAMILY_OF_SAMPLING.clear()
    assert host.family_of_sampling(ms) == "sd15"
    patched = mp.clone()
    new_ms = comfy.model_base.model_sampling(mp.model.model_config, comfy.model_base.ModelType.V_PREDICTION)
    patched.add_object_patch("model_sampling", new_ms)
    host._FAMILY_OF_SAMPLING.clear()
    assert host.family_of_sampling(new_ms) == "sd15"
    assert host.model_info(patched).prediction == "v"
    orphan = comfy.model_base.model_sampling(mp.model.model_config, comfy.model_base.ModelType.EPS)
    assert host.family_of_sampling(orphan) == "unknown"  # owned by nothing: every family is considered (logged)
