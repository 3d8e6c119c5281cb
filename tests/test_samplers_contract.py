"""The sampler contract (docs/ARCHITECTURE.md): exact NFE for every sampler/config (counted model calls), callbacks,
trailing zero, AFS, bad grids, and the reductions between solvers (docs/ALGORITHMS.md sections 3.2, 4.2, 4.3 and 5)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from adasde.coefficients import Coefficients
from adasde.samplers import SAMPLERS, CoefficientMismatchWarning, append_zero, get_sigmas, nfe
from adasde.samplers import baselines as B
from adasde.samplers.amed import sample_amed_plugin
from adasde.samplers.common import afs_direction, sigma_list
from helpers.samplers import Counted, DiagGaussian, trained_record

GRID = get_sigmas("time_uniform", 5, 0.002, 80.0, dtype=torch.float64)


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return 80.0 * torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------ NFE
CONFIGS: list[tuple[str, dict]] = [(name, {}) for name in SAMPLERS]
CONFIGS += [(name, {"afs": True}) for name in SAMPLERS]
CONFIGS += [
    ("dpm_2", {"r": 0.3}), ("ipndm", {"max_order": 2}), ("dpmpp_2m", {"predict_x0": False}),
    ("dpmpp_3m", {"lower_order_final": True, "taylor_d2": True}), ("unipc", {"max_order": 1}),
    ("unipc", {"predict_x0": False, "variant": "bh1"}), ("unipc", {"lower_order_final": True, "afs": True}),
    ("amed_plugin", {"base": "euler"}), ("amed_plugin", {"base": "dpm_2", "afs": True}),
    ("amed_plugin", {"base": "dpmpp", "max_order": 3}), ("amed_plugin", {"base": "dpmpp", "predict_x0": False}),
]


@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("points", [2, 3, 6])
@pytest.mark.parametrize("name,options", CONFIGS)
def test_nfe_equals_counted_model_calls(name: str, options: dict, points: int, zero: bool) -> None:
    sigmas = get_sigmas("logsnr", points, 0.05, 80.0, dtype=torch.float64)
    if zero:
        sigmas = append_zero(sigmas)
    model = Counted(DiagGaussian())
    SAMPLERS[name](model, _x(), sigmas, disable=True, **options)
    assert model.calls == nfe(name, sigmas, **options)
    if not zero:
        assert nfe(name, points, **options) == model.calls


@pytest.mark.parametrize("name,K", [("adasde", 1), ("adasde", 2), ("amed", 1)])
@pytest.mark.parametrize("grid", ["trained", "suffix", "other"])
def test_nfe_with_coefficients(name: str, K: int, grid: str) -> None:
    """K and AFS come from the record: (1 + K)(N - 1) - [AFS] on the trained grid, AFS off on a suffix, untrained
    K = 1 without AFS on another grid."""
    coeffs = trained_record(GRID, K=K, afs=True)
    sigmas = {"trained": GRID, "suffix": GRID[1:], "other": get_sigmas("time_uniform", 4, 0.002, 80.0)}[grid]
    model = Counted(DiagGaussian())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SAMPLERS[name](model, _x(), sigmas, disable=True, coeffs=coeffs)
    assert any(issubclass(w.category, CoefficientMismatchWarning) for w in caught) == (grid == "other")
    assert model.calls == nfe(name, sigmas, coeffs=coeffs)
    steps = sigmas.numel() - 1
    expected = {"trained": (1 + K) * steps - 1, "suffix": (1 + K) * steps, "other": 2 * steps}[grid]
    assert model.calls == expected
    if grid == "trained":
        assert nfe(name, GRID.numel(), coeffs=coeffs) == coeffs.nfe == expected


def test_nfe_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp_9m'"):
        nfe("dpmpp_9m", 5)


# ------------------------------------------------------------------------------------------- callback, zero, AFS
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_contract_and_trailing_zero(name: str) -> None:
    model = DiagGaussian()
    seen: list[dict] = []
    x = _x()
    out = SAMPLERS[name](model, x.clone(), append_zero(GRID), disable=True, callback=seen.append)
    s = GRID.tolist()
    assert [e["i"] for e in seen] == list(range(len(s)))  # one call per step plus the final denoising call
    for e in seen:
        assert {"i", "x", "denoised", "sigma", "sigma_hat"} <= set(e)
        assert e["x"].shape == x.shape and e["denoised"].shape == x.shape
        assert e["sigma"] == s[e["i"]]
    assert seen[-1]["x"] is out
    # the trailing 0 is exactly one denoising call x = D(x; sigma_last)
    positive = SAMPLERS[name](model, x.clone(), GRID, disable=True)
    torch.testing.assert_close(out, model(positive, torch.full((2,), s[-1], dtype=torch.float64)))
    # a grid [sigma, 0] is just that call
    one = SAMPLERS[name](model, x.clone(), torch.tensor([3.0, 0.0], dtype=torch.float64), disable=True)
    torch.testing.assert_close(one, model(x, torch.full((2,), 3.0, dtype=torch.float64)))


def test_afs_replaces_the_first_model_call() -> None:
    """AFS: d_0 = x / sqrt(1 + sigma_0^2) (section 5); a one-step Euler is then x + (s1 - s0) d_0 with no call."""
    model = Counted(DiagGaussian())
    x = _x()
    out = B.sample_euler(model, x.clone(), GRID[:2], disable=True, afs=True)
    assert model.calls == 0
    s0, s1 = GRID[:2].tolist()
    torch.testing.assert_close(out, x + (s1 - s0) * x / math.sqrt(1 + s0**2))
    torch.testing.assert_close(afs_direction(x, 0.5, flow=True), x / 0.5)

    class Flow(DiagGaussian):
        flow = True

    flow_grid = torch.tensor([1.0, 0.5], dtype=torch.float64)  # flow AFS (D ~ 0): d_0 = x / sigma, auto-detected
    for name in ("euler", "dpmpp_2m", "unipc", "ipndm"):
        torch.testing.assert_close(SAMPLERS[name](Flow(), x.clone(), flow_grid, afs=True, disable=True), 0.5 * x)


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "sigmas,match",
    [
        ([1.0, 2.0], r"strictly decreasing, but sigmas\[1\] = 2.0"),
        ([5.0, 1.0, 1.0], r"sigmas\[2\] = 1.0 >= sigmas\[1\] = 1.0"),
        ([5.0, float("nan"), 0.1], r"sigmas\[1\] = nan"),
        ([5.0, -1.0], r"sigmas\[1\] = -1.0"),
        ([5.0], "at least 2 points"),
        ([5.0, 0.0, 0.0], r"sigmas\[2\] = 0.0"),
        ("abc", "1-D tensor or a sequence of numbers"),
    ],
)
@pytest.mark.parametrize("name", ["euler", "unipc", "adasde", "amed_plugin"])
def test_bad_sigmas_raise_clear_errors(sigmas: Any, match: str, name: str) -> None:
    s = torch.tensor(sigmas, dtype=torch.float64) if not isinstance(sigmas, str) else sigmas
    with pytest.raises(ValueError, match=match) as info:
        SAMPLERS[name](DiagGaussian(), _x(), s, disable=True)
    assert "get_sigmas" in str(info.value)  # the fix


def test_bad_options_raise_clear_errors() -> None:
    m, x = DiagGaussian(), _x()
    with pytest.raises(ValueError, match=r"r must lie in \(0, 1\], got 0"):
        B.sample_dpm_2(m, x, GRID, r=0.0, disable=True)
    with pytest.raises(ValueError, match="max_order must be an integer in 1..4, got 5"):
        B.sample_ipndm(m, x, GRID, max_order=5, disable=True)
    with pytest.raises(ValueError, match="variant must be 'bh1' or 'bh2'"):
        B.sample_unipc(m, x, GRID, variant="bh3", disable=True)
    with pytest.raises(ValueError, match="unknown base solver 'heun'"):
        sample_amed_plugin(m, x, GRID, base="heun", disable=True)
    with pytest.raises(ValueError, match="flow models need sigmas <= 1, got sigmas"):
        SAMPLERS["adasde"](m, x, GRID, flow=True, disable=True)
    assert sigma_list([3, 2, 0]) == [3.0, 2.0, 0.0]


# ------------------------------------------------------------------------------------------------ reductions
def test_untrained_adasde_amed_and_plugin_dpm2_are_dpm_solver_2() -> None:
    m, x = DiagGaussian(), _x()
    ref = B.sample_dpm_2(m, x.clone(), GRID, disable=True)
    assert torch.equal(SAMPLERS["adasde"](m, x.clone(), GRID, disable=True), ref)
    assert torch.equal(SAMPLERS["amed"](m, x.clone(), GRID, disable=True), ref)
    assert torch.equal(sample_amed_plugin(m, x.clone(), GRID, base="dpm_2", disable=True), ref)
    record = Coefficients.untrained(GRID, afs=False)  # explicit r = 0.5, a = c = 1, gamma = 0 tables
    torch.testing.assert_close(SAMPLERS["adasde"](m, x.clone(), GRID, coeffs=record, extra_args={"seed": 0},
                                                  disable=True), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SAMPLERS["amed"](m, x.clone(), GRID, coeffs=record, disable=True), ref,
                               rtol=1e-12, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(SAMPLERS["adasde"](m, x32.clone(), GRID.float(), disable=True),
                               B.sample_dpm_2(m, x32.clone(), GRID.float(), disable=True), rtol=1e-6, atol=1e-5)


def test_dpm2_with_r1_is_heun() -> None:
    m, x = DiagGaussian(), _x()
    torch.testing.assert_close(B.sample_dpm_2(m, x.clone(), GRID, r=1.0, disable=True),
                               B.sample_heun(m, x.clone(), GRID, disable=True), rtol=1e-12, atol=1e-12)


def _interleaved(sigmas: torch.Tensor, r: float = 0.5) -> torch.Tensor:
    s = sigmas.tolist()
    out = []
    for a, b in zip(s[:-1], s[1:]):
        out += [a, b**r * a ** (1 - r)]
    return torch.tensor(out + [s[-1]], dtype=torch.float64)


def _dpmpp_3m_lof(m: Any, x: torch.Tensor, grid: torch.Tensor, disable: bool) -> torch.Tensor:
    return B.sample_dpmpp_3m(m, x, grid, lower_order_final=True, thresholding=True, disable=disable)


@pytest.mark.parametrize("base,ref", [("euler", B.sample_euler), ("ipndm", B.sample_ipndm),
                                      ("dpmpp", _dpmpp_3m_lof)])
def test_untrained_plugin_is_its_base_on_the_interleaved_grid(base: str, ref: Any) -> None:
    """Section 4.3 with r = 0.5, c = a = 1: the base solver on the grid with geometric midpoints inserted (dpmpp:
    the AMED reference's defaults, order 3 with lower-order-final and dynamic thresholding; order 2 without
    lower-order-final is DPM-Solver++(2M))."""
    m, x = DiagGaussian(), _x()
    torch.testing.assert_close(sample_amed_plugin(m, x.clone(), GRID, base=base, disable=True),
                               ref(m, x.clone(), _interleaved(GRID), disable=True), rtol=1e-12, atol=1e-12)
    if base == "dpmpp":
        torch.testing.assert_close(
            sample_amed_plugin(m, x.clone(), GRID, base=base, max_order=2, lower_order_final=False, disable=True),
            B.sample_dpmpp_2m(m, x.clone(), _interleaved(GRID), thresholding=True, disable=True), rtol=1e-12,
            atol=1e-12)
        torch.testing.assert_close(
            sample_amed_plugin(m, x.clone(), GRID, base=base, thresholding=False, disable=True),
            B.sample_dpmpp_3m(m, x.clone(), _interleaved(GRID), lower_order_final=True, disable=True), rtol=1e-12,
            atol=1e-12)


def test_dpmpp_lower_order_final_and_thresholding() -> None:
    m, x = DiagGaussian(), _x()
    grid = GRID[:3]
    out = B.sample_dpmpp_3m(m, x.clone(), grid, lower_order_final=True, disable=True)
    y = x.clone()  # DPM-Solver++(1) twice: x <- (t1 / t0) x + (1 - t1 / t0) D(x; t0)
    for a, b in zip(grid.tolist()[:-1], grid.tolist()[1:]):
        y = (b / a) * y + (1 - b / a) * m(y, torch.full((2,), a, dtype=torch.float64))
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(B.sample_dpmpp_3m(m, x.clone(), grid, disable=True), y)
    big = torch.tensor([[3.0, -0.5, 0.2, 0.1]], dtype=torch.float64)
    th = B.dynamic_threshold(big, ratio=0.995)
    assert th.abs().max() <= 1.0 and th[0, 1] < 0
    small = torch.tensor([[0.3, -0.5, 0.2, 0.1]], dtype=torch.float64)
    assert torch.equal(B.dynamic_threshold(small), small)


def test_ab_and_unipc_coefficients() -> None:
    """Adams-Bashforth weights sum to 1; UniPC's order-1 step is DPM-Solver++(1) plus the 1/2 corrector."""
    for order, b in B.AB_COEFFS.items():
        assert abs(sum(b) - 1) < 1e-12 and len(b) == order
    co = B.unipc_coefficients([], 2.0, 1.0, 1)
    assert co["rhos_p"] == [] and co["rhos_c"] == [0.5] and co["k"] == 0.5
    assert abs(co["h_phi_1"] - math.expm1(-math.log(2))) < 1e-15
    co3 = B.unipc_coefficients([8.0, 4.0], 2.0, 1.0, 3)
    assert len(co3["rhos_p"]) == 2 and len(co3["rhos_c"]) == 3 and all(rk < 0 for rk in co3["rks"])
