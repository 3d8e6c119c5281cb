"""AMED predictor, AMED-Solver and AMED-Plugin (docs/ALGORITHMS.md sections 4.1-4.3)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from adasde.coefficients import Coefficients
from adasde.samplers import (
    AMEDPredictor,
    CoefficientMismatchWarning,
    PluginHistory,
    amed_step,
    get_sigmas,
    nfe,
    plugin_step,
    sample_adasde,
    sample_amed,
    sample_amed_plugin,
    sample_dpm_2,
)
from adasde.samplers.amed import pool_bottleneck
from helpers.samplers import Counted, DiagGaussian, trained_record

GRID = get_sigmas("time_uniform", 5, 0.002, 80.0, dtype=torch.float64)


class Hooked:
    """A denoiser with a 'bottleneck hook': features() returns a [B, 3, 4, 4] map of the last call's input, the way
    a host adapter exposes the U-Net middle block."""

    flow = False

    def __init__(self) -> None:
        self.inner, self.last, self.feature_calls = DiagGaussian(0.3, 0.5), None, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.last = torch.tanh(x[:, :3] / (1 + sigma.reshape(-1, 1, 1, 1))).reshape(x.shape[0], 3, 4, 4)
        return self.inner(x, sigma)

    def features(self) -> torch.Tensor | None:
        self.feature_calls += 1
        return self.last


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return 80.0 * torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _trained_predictor(scale_dir: float = 0.05, scale_time: float = 0.2, seed: int = 1) -> AMEDPredictor:
    net = AMEDPredictor(scale_dir, scale_time, seed=seed)
    with torch.no_grad():  # give the heads a visible dependence on the features
        for head in (net.head_r, net.head_c, net.head_a):
            head.weight.mul_(3)
    return net.double()


# ---------------------------------------------------------------------------------------------------- predictor
def test_parameter_count_matches_section_4_1() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(AMEDPredictor()) == 8929
    assert count(AMEDPredictor(scale_dir=0.01)) == 8950
    assert count(AMEDPredictor(scale_dir=0.01, scale_time=0.2)) == 8971


def test_outputs_per_sample_in_their_ranges() -> None:
    net = _trained_predictor(0.05, 0.2)
    h = torch.randn(5, 32, 8, 8, dtype=torch.float64)
    r, c, a = net(h, 6.95, torch.full((5,), 1.29))
    assert r.shape == c.shape == a.shape == (5,)
    assert ((r > 0) & (r < 1)).all() and ((c > 0.95) & (c < 1.05)).all() and ((a > 0.8) & (a < 1.2)).all()
    assert r.std() > 0  # depends on the sample's features
    r0, c0, a0 = AMEDPredictor(seed=0)(None, torch.tensor([80.0, 6.9]), 1.0)
    assert r0.shape == (2,) and torch.equal(c0, torch.ones(2)) and torch.equal(a0, torch.ones(2))
    assert torch.equal(AMEDPredictor(seed=3).enc1.weight, AMEDPredictor(seed=3).enc1.weight)
    with pytest.raises(ValueError, match="scale_dir must lie in"):
        AMEDPredictor(scale_dir=1.5)


def test_bottleneck_pooling() -> None:
    h8 = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(pool_bottleneck(h8, 2), h8.mean(1).reshape(2, 64))
    h16 = torch.randn(2, 16, 16, 16)
    torch.testing.assert_close(pool_bottleneck(h16, 2), torch.nn.functional.avg_pool2d(h16.mean(1, keepdim=True), 2)
                               .reshape(2, 64))
    assert pool_bottleneck(torch.randn(2, 5, 4, 4), 2).shape == (2, 64)
    assert torch.equal(pool_bottleneck(None, 3), torch.zeros(3, 64))
    with pytest.raises(ValueError, match="conditional half only"):
        pool_bottleneck(torch.randn(4, 16, 8, 8), 2)


def test_state_round_trip_through_a_coefficient_record() -> None:
    net = _trained_predictor()
    rebuilt = AMEDPredictor.from_state(net.config(), {k: v.clone() for k, v in net.state_dict().items()})
    h = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    for u, v in zip(net(h, 2.0, 1.0), rebuilt.double()(h, 2.0, 1.0)):
        torch.testing.assert_close(u, v)
    with pytest.raises(ValueError, match="missing"):
        AMEDPredictor.from_state({"scale_dir": 0.05}, {"enc1.weight": torch.zeros(128, 64)})


# ------------------------------------------------------------------------------------------------- AMED-Solver
def _manual_amed(model: Hooked, net: AMEDPredictor, x: torch.Tensor, s: list[float], afs: bool) -> torch.Tensor:
    """Section 4.2 written out with per-sample (r, c, a)."""
    B = x.shape[0]
    for n in range(len(s) - 1):
        t, tn = s[n], s[n + 1]
        if afs and n == 0:
            d, h = x / math.sqrt(1 + t**2), None
        else:
            d = (x - model(x, torch.full((B,), t, dtype=x.dtype))) / t
            h = model.last
        r, c, a = net(h if h is not None else torch.zeros(B, 64, dtype=x.dtype), t, tn)
        sm = tn**r * t ** (1 - r)
        view = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        xs = x + view(sm - t) * d
        ds = (xs - model(xs, a * sm)) / view(sm)
        x = x + view(c) * (tn - t) * ds
    return x


@pytest.mark.parametrize("afs", [False, True])
def test_amed_with_predictor_follows_section_4_2(afs: bool) -> None:
    net, model, x = _trained_predictor(), Hooked(), _x()
    out = sample_amed(model, x.clone(), GRID, predictor=net, features=model.features, afs=afs, disable=True)
    assert model.feature_calls == GRID.numel() - 1 - int(afs)  # no feature read on the AFS step
    torch.testing.assert_close(out, _manual_amed(Hooked(), net, x.clone(), GRID.tolist(), afs), rtol=1e-10,
                               atol=1e-9)


def test_amed_is_per_sample_and_batch_invariant() -> None:
    net, model, xs = _trained_predictor(), Hooked(), _x(3, seed=2)
    three = sample_amed(model, xs.clone(), GRID, predictor=net, features=model.features, disable=True)
    one = sample_amed(model, xs[1:2].clone(), GRID, predictor=net, features=model.features, disable=True)
    torch.testing.assert_close(three[1:2], one, rtol=1e-12, atol=1e-10)


def test_amed_predictor_from_coefficients_and_grid_mismatch() -> None:
    net = _trained_predictor()
    co = Coefficients.untrained(GRID, afs=False, kind="amed", predictor=net.state_dict(),
                                predictor_config=net.config())
    model, x = Hooked(), _x()
    ref = sample_amed(model, x.clone(), GRID, predictor=net, features=model.features, disable=True)
    torch.testing.assert_close(sample_amed(model, x.clone(), GRID, coeffs=co, features=model.features, disable=True)
                               .double(), ref, rtol=1e-6, atol=1e-5)
    other = get_sigmas("time_uniform", 7, 0.002, 80.0, dtype=torch.float64)
    with pytest.warns(CoefficientMismatchWarning):
        out = sample_amed(model, x.clone(), other, coeffs=co, features=model.features, disable=True)
    assert torch.equal(out, sample_dpm_2(model, x.clone(), other, disable=True))


def test_constant_amed_is_adasde_without_churn() -> None:
    co = trained_record(GRID, afs=True)
    model, x = DiagGaussian(), 80.0 * torch.randn(2, 6, dtype=torch.float64)
    no_gamma = Coefficients(r=co.r, a=co.a, c=co.c, gamma=torch.zeros_like(co.gamma), w=co.w, sigmas=co.sigmas,
                            afs=True)
    torch.testing.assert_close(sample_amed(model, x.clone(), GRID, coeffs=co, disable=True),
                               sample_adasde(model, x.clone(), GRID, coeffs=no_gamma, disable=True),
                               rtol=1e-12, atol=1e-10)


def test_amed_rejects_multi_point_records() -> None:
    co = trained_record(GRID, K=2)
    co.source = "k2.safetensors"
    with pytest.raises(ValueError, match="k2.safetensors has K=2"):
        sample_amed(DiagGaussian(), 80.0 * torch.randn(2, 6, dtype=torch.float64), GRID, coeffs=co, disable=True)


def test_amed_step_trains_the_predictor() -> None:
    """The distillation path: gradients reach every predictor parameter through amed_step."""
    net, model, x = _trained_predictor(), Hooked(), _x()
    x_next, den, (r, c, a) = amed_step(model, x, 6.95, 1.29, net, model.features)
    assert r.requires_grad and den.shape == x.shape
    x_next.pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(net.enc1.weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------- AMED-Plugin
@pytest.mark.parametrize("base", ["euler", "dpm_2", "ipndm", "dpmpp"])
def test_plugin_with_predictor_runs_per_sample(base: str) -> None:
    net, xs = _trained_predictor(), _x(3, seed=5)
    model = Counted(Hooked())
    feats = lambda: model.model.last  # noqa: E731
    three = sample_amed_plugin(model, xs.clone(), GRID, base=base, predictor=net, features=feats, disable=True)
    assert model.calls == nfe("amed_plugin", GRID, base=base)
    one = sample_amed_plugin(model, xs[2:].clone(), GRID, base=base, predictor=net, features=feats, disable=True)
    torch.testing.assert_close(three[2:], one, rtol=1e-12, atol=1e-10)
    plain = sample_amed_plugin(model, xs.clone(), GRID, base=base, disable=True)
    assert not torch.allclose(three, plain)


def test_plugin_direction_scale_on_euler() -> None:
    """Euler plugin, one step: x_s = x + (s - t0) d0, x1 = x_s + c (t1 - s) d(x_s, a s) / ... (section 4.3)."""
    grid = GRID[:2]
    t0, t1 = grid.tolist()
    co = Coefficients(r=torch.tensor([[0.3]]), a=torch.tensor([[1.1]]), c=torch.tensor([[0.97]]),
                      gamma=torch.zeros(1, 1), w=torch.ones(1, 1), sigmas=grid, afs=False, kind="amed_plugin",
                      base="euler")
    model, x = DiagGaussian(), 80.0 * torch.randn(2, 6, dtype=torch.float64)
    out = sample_amed_plugin(model, x.clone(), grid, coeffs=co, disable=True)
    s = t1**0.3 * t0**0.7
    full = lambda v: torch.full((2,), v, dtype=torch.float64)  # noqa: E731
    xs = x + (s - t0) * (x - model(x, full(t0))) / t0
    ref = xs + 0.97 * (t1 - s) * (xs - model(xs, full(1.1 * s))) / s
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # tables are float32 in the record
    with pytest.raises(ValueError, match="trained on base 'euler', but base='ipndm'"):
        sample_amed_plugin(model, x, grid, coeffs=co, base="ipndm", disable=True)


@pytest.mark.parametrize("base", ["ipndm", "dpmpp"])
def test_plugin_step_is_differentiable(base: str) -> None:
    model, x = DiagGaussian(), 10.0 * torch.randn(2, 6, dtype=torch.float64)
    r = torch.full((2,), 0.4, dtype=torch.float64, requires_grad=True)
    c = torch.full((2,), 1.01, dtype=torch.float64, requires_grad=True)
    a = torch.full((2,), 0.95, dtype=torch.float64, requires_grad=True)
    hist = PluginHistory()
    s = [10.0, 4.0, 1.5]
    x1, _ = plugin_step(base, model, x, s[0], s[1], model(x, torch.full((2,), s[0], dtype=torch.float64)), r, c, a,
                        hist)
    hist = hist.detach()
    x2, _ = plugin_step(base, model, x1, s[1], s[2], model(x1, torch.full((2,), s[1], dtype=torch.float64)), r, c, a,
                        hist)
    x2.sum().backward()
    for p in (r, c, a):
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
    assert len(hist.d if base == "ipndm" else hist.m) > 0


def test_dpmpp_plugin_reference_defaults_and_thresholding() -> None:
    """DPM-Solver++ plugin: max_order 3 and lower-order-final by default (the AMED reference); ``thresholding``
    applies dynamic thresholding to every data prediction the update uses, and to nothing else."""
    from adasde.samplers.baselines import dynamic_threshold

    model = DiagGaussian()
    x = 80.0 * torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    default = sample_amed_plugin(model, x.clone(), GRID, base="dpmpp", disable=True)
    explicit = sample_amed_plugin(model, x.clone(), GRID, base="dpmpp", max_order=3, lower_order_final=True,
                                  disable=True)
    old = sample_amed_plugin(model, x.clone(), GRID, base="dpmpp", max_order=2, lower_order_final=False,
                             disable=True)
    assert torch.equal(default, explicit) and not torch.allclose(default, old)

    big = lambda x, s, **kw: 3.0 * model(x, s)  # noqa: E731 - data predictions well outside [-1, 1]
    clipped = lambda x, s, **kw: dynamic_threshold(big(x, s))  # noqa: E731
    grid, r = [10.0, 4.0, 1.5], torch.full((2,), 0.4, dtype=torch.float64)

    def run(net, thr: bool, pre) -> torch.Tensor:
        hist, cur = PluginHistory(), x / 8
        for i in range(2):
            den = pre(big(cur, torch.full((2,), grid[i], dtype=torch.float64)))
            cur, _ = plugin_step("dpmpp", net, cur, grid[i], grid[i + 1], den, r, 1.0, 1.0, hist, thresholding=thr)
        return cur

    with_thr = run(big, True, lambda t: t)
    torch.testing.assert_close(with_thr, run(clipped, False, dynamic_threshold), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(with_thr, run(big, False, lambda t: t))
