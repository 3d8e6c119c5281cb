"""In-process parity: our baseline samplers against ComfyUI's own ``comfy.k_diffusion.sampling`` (real ComfyUI 0.30.0).

Same denoiser, same sigma grid (ComfyUI style, ending in 0), same start: the results must agree to float tolerance.
Solvers compared: every name present in both (euler, heun, dpm_2, dpmpp_2m, ipndm) plus untrained AdaSDE against
ComfyUI's dpm_2 (AdaSDE with r = 0.5, a = c = 1, gamma = 0 is DPM-Solver-2's geometric midpoint).

Final-step handling agrees by construction: on the last interval sigma_last -> 0 ComfyUI takes an Euler step
(x + (0 - s) (x - D) / s = D) and we make one denoising call (x = D), the same value.
"""

from __future__ import annotations

import pytest
import torch
from helpers.comfyui import import_comfy_in_process

pytestmark = [pytest.mark.comfyui]


@pytest.fixture(scope="module")
def kds():
    import_comfy_in_process()
    import comfy.k_diffusion.sampling as sampling

    return sampling


class ToyDenoiser:
    """A smooth nonlinear x0-predictor (Gaussian data + tanh mixing), float64 for a tight comparison."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        self.calls += 1
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        lin = x / (1 + s**2)
        mix = torch.tanh(x.flatten(1) @ self.w).reshape(x.shape)
        return lin + 0.3 * mix / (1 + s)


def _grid() -> torch.Tensor:
    from adasde.samplers import append_zero, get_sigmas

    return append_zero(get_sigmas("polynomial", 7, 0.03, 14.6, rho=7.0, dtype=torch.float64))


PAIRS = [("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpm_2", "sample_dpm_2", {}),
         ("dpmpp_2m", "sample_dpmpp_2m", {}), ("ipndm", "sample_ipndm", {})]


@pytest.mark.parametrize(("ours", "theirs", "opts"), PAIRS, ids=[p[0] for p in PAIRS])
def test_baseline_matches_comfyui(kds, ours: str, theirs: str, opts: dict) -> None:
    from adasde import samplers

    ref_fn = getattr(kds, theirs, None)
    if ref_fn is None:
        pytest.skip(f"ComfyUI 0.30.0 has no {theirs}")
    our_fn = samplers.SAMPLERS[ours] if hasattr(samplers, "SAMPLERS") else getattr(samplers, theirs)
    sigmas = _grid()
    x0 = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
    m1, m2 = ToyDenoiser(), ToyDenoiser()
    want = ref_fn(m1, x0.clone(), sigmas, extra_args={}, disable=True)
    got = our_fn(m2, x0.clone(), sigmas, extra_args={}, disable=True, **opts)
    assert m1.calls == m2.calls, (ours, m1.calls, m2.calls)  # same NFE
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_untrained_adasde_is_comfyui_dpm_2(kds) -> None:
    from adasde.samplers import sample_adasde

    sigmas = _grid()
    x0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]
    want = kds.sample_dpm_2(ToyDenoiser(), x0.clone(), sigmas, extra_args={}, disable=True)
    got = sample_adasde(ToyDenoiser(), x0.clone(), sigmas, extra_args={"seed": 0}, disable=True, afs=False)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
