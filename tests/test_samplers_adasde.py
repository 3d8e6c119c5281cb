"""AdaSDE with coefficients (docs/ALGORITHMS.md sections 3.1-3.3): the step against an independent transcription of
section 3.2, grid fitting (trained grid, suffix, mismatch), seeded per-sample churn noise, noise_sampler, flow churn."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from adasde.coefficients import Coefficients
from adasde.samplers import CoefficientMismatchWarning, SeededNoise, get_sigmas, resolve_tables, sample_adasde
from adasde.samplers.adasde import adasde_step
from adasde.samplers.baselines import sample_dpm_2
from adasde.samplers.common import churn
from helpers.samplers import Counted, DiagGaussian, trained_record

GRID = get_sigmas("time_uniform", 6, 0.002, 80.0, dtype=torch.float64)


def reference(model: Any, x: torch.Tensor, s: list[float], co: Coefficients, rows: range, afs: bool,
              noises: list[torch.Tensor]) -> torch.Tensor:
    """Section 3.2 written out (gamma_0 = 0 on trained row 0), independent of samplers.adasde."""
    noises = list(noises)
    full = lambda v: torch.full((x.shape[0],), v, dtype=x.dtype)  # noqa: E731
    for n, row in zip(range(len(s) - 1), rows):
        t, tn = s[n], s[n + 1]
        r, a, c, g, w = (getattr(co, k)[row].double() for k in ("r", "a", "c", "gamma", "w"))
        gbar = 0.0 if row == 0 else float((w * g).sum())
        th = (1 + gbar) * t
        xh = x + math.sqrt(th**2 - t**2) * noises.pop(0) if gbar else x
        dh = xh / math.sqrt(1 + th**2) if (afs and n == 0) else (xh - model(xh, full(th))) / th
        acc = torch.zeros_like(x)
        for k in range(r.numel()):
            sk = tn ** float(r[k]) * th ** (1 - float(r[k]))
            xk = xh + (sk - th) * dh
            dk = (xk - model(xk, full(float(a[k]) * sk))) / sk
            acc = acc + float(w[k] * c[k]) * dk
        x = xh + (tn - th) * acc
    return x


class Recorder:
    """noise_sampler that hands out fixed draws and records its calls."""

    def __init__(self, shape: tuple[int, ...], n: int = 10, seed: int = 5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        self.calls.append((sigma, sigma_next))
        return self.draws[len(self.calls) - 1]


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return 80.0 * torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("afs", [True, False])
def test_trained_grid_matches_section_3_2(K: int, afs: bool) -> None:
    co = trained_record(GRID, K=K, afs=afs)
    model, x = DiagGaussian(), _x()
    noise = Recorder(tuple(x.shape))
    out = sample_adasde(model, x.clone(), GRID, coeffs=co, noise_sampler=noise, disable=True)
    s = GRID.tolist()
    assert noise.calls == [(s[i], s[i + 1]) for i in range(1, len(s) - 1)]  # no draw on step 0 (gamma_0 = 0)
    ref = reference(model, x.clone(), s, co, range(len(s) - 1), afs, noise.draws)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)


def test_suffix_grid_uses_its_rows_without_afs() -> None:
    """img2img / denoise < 1: sampling starts at trained point 2 -> rows 2.., AFS off, gamma of row 2 used."""
    co = trained_record(GRID, afs=True)
    model, x = Counted(DiagGaussian()), _x()
    noise = Recorder(tuple(x.shape))
    tables = resolve_tables(co, GRID[2:].tolist())
    assert tables.trained and tables.offset == 2 and not tables.afs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sample_adasde(model, x.clone(), GRID[2:].float(), coeffs=co, noise_sampler=noise, disable=True)
    s = GRID[2:].float().tolist()
    assert len(noise.calls) == len(s) - 1  # every step churns (no row 0)
    assert model.calls == 2 * (len(s) - 1)
    ref = reference(DiagGaussian(), x.clone(), s, co, range(2, co.steps), False, noise.draws)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("grid", [get_sigmas("time_uniform", 5, 0.002, 80.0, dtype=torch.float64),
                                  get_sigmas("polynomial", 6, 0.002, 80.0, dtype=torch.float64),
                                  torch.cat([GRID[:2], GRID[3:]])])
def test_mismatched_grid_warns_and_equals_dpm_2(grid: torch.Tensor) -> None:
    co = trained_record(GRID, afs=True)
    co.source = "cifar-nfe9.safetensors"
    model, x = DiagGaussian(), _x()
    with pytest.warns(CoefficientMismatchWarning) as rec:
        out = sample_adasde(model, x.clone(), grid, coeffs=co, extra_args={"seed": 1}, disable=True)
    msg = str(rec[0].message)
    assert "cifar-nfe9.safetensors" in msg and "6-point grid" in msg and f"{grid.numel()}-point grid" in msg
    assert torch.equal(out, sample_dpm_2(model, x.clone(), grid, disable=True))


def test_a_segment_of_the_trained_grid_uses_its_rows() -> None:
    """The first and second stage of a split run (any contiguous part of the trained grid) use the trained rows:
    the prefix from row 0 with AFS, a middle segment from its own row without."""
    co = trained_record(GRID, afs=True)
    first = resolve_tables(co, GRID[:-2].tolist())
    assert first.trained and first.offset == 0 and first.afs and first.steps == co.steps - 2
    torch.testing.assert_close(first.r, co.r[: co.steps - 2].double())
    middle = resolve_tables(co, GRID[1:4].tolist())
    assert middle.trained and middle.offset == 1 and not middle.afs
    torch.testing.assert_close(middle.gamma, co.gamma[1:3].double())


def test_bad_tables_name_the_file_and_the_table() -> None:
    co = trained_record(GRID)
    co.source = "broken.safetensors"
    co.a = co.a[:-1]
    with pytest.raises(ValueError, match=r"broken.safetensors: table 'a' has shape \(4, 1\), expected \[steps=5"):
        sample_adasde(DiagGaussian(), _x(), GRID, coeffs=co, disable=True)
    co = trained_record(GRID)
    co.r[1, 0] = float("nan")
    with pytest.raises(ValueError, match="table 'r' contains non-finite"):
        sample_adasde(DiagGaussian(), _x(), GRID, coeffs=co, disable=True)


def test_callback_reports_sigma_hat() -> None:
    co = trained_record(GRID, afs=False)
    seen: list[dict] = []
    sample_adasde(DiagGaussian(), _x(), GRID, coeffs=co, extra_args={"seed": 0}, callback=seen.append, disable=True)
    s = GRID.tolist()
    assert seen[0]["sigma_hat"] == s[0]
    for e in seen[1:]:
        i = e["i"]
        gbar = float((co.w[i] * co.gamma[i]).sum())
        assert e["sigma_hat"] == pytest.approx((1 + gbar) * s[i], rel=1e-12) and e["sigma_hat"] > s[i]


# --------------------------------------------------------------------------------------------------- seeded noise
def test_same_seed_same_sample_whatever_the_batch() -> None:
    co = trained_record(GRID, gamma=0.3)
    model = DiagGaussian()
    xs = _x(3, seed=4)
    one = sample_adasde(model, xs[2:].clone(), GRID, coeffs=co, extra_args={"seed": [7]}, disable=True)
    three = sample_adasde(model, xs.clone(), GRID, coeffs=co, extra_args={"seed": [1, 2, 7]}, disable=True)
    assert torch.equal(three[2:], one)
    consecutive = sample_adasde(model, xs.clone(), GRID, coeffs=co, extra_args={"seed": 5}, disable=True)
    assert torch.equal(consecutive[2:], one)  # int seed s gives s, s + 1, s + 2
    other = sample_adasde(model, xs[2:].clone(), GRID, coeffs=co, extra_args={"seed": 8}, disable=True)
    assert not torch.allclose(other, one)
    untrained = sample_adasde(model, xs[2:].clone(), GRID, extra_args={"seed": 7}, disable=True)
    assert not torch.allclose(untrained, one)  # the churn really changes the result
    with pytest.raises(ValueError, match="got 2 seeds for a batch of 3"):
        sample_adasde(model, xs, GRID, coeffs=co, extra_args={"seed": [1, 2]}, disable=True)


def test_seeded_noise_is_standard_normal_and_independent_of_position() -> None:
    x = torch.zeros(3, 4, 16, 16)
    a, b = SeededNoise(x, [11, 12, 13]), SeededNoise(x[:1], [13])
    za, zb = a(), b()
    assert torch.equal(za[2:], zb)
    z = torch.cat([a() for _ in range(20)])
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_noise_sampler_is_honoured_over_the_seed() -> None:
    co = trained_record(GRID, gamma=0.3)
    model, x = DiagGaussian(), _x()
    noise = Recorder(tuple(x.shape))
    out = sample_adasde(model, x.clone(), GRID, coeffs=co, extra_args={"seed": 3}, noise_sampler=noise, disable=True)
    assert len(noise.calls) == GRID.numel() - 2
    seeded = sample_adasde(model, x.clone(), GRID, coeffs=co, extra_args={"seed": 3}, disable=True)
    assert not torch.allclose(out, seeded)
    ref = reference(model, x.clone(), GRID.tolist(), co, range(co.steps), True, noise.draws)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)


# ------------------------------------------------------------------------------------------------------- flow churn
def test_flow_churn_keeps_x_on_the_flow_path() -> None:
    """x = (1 - s) y + s e  ->  churn to s_hat gives (1 - s_hat) y + s_hat e' (alpha^2 s^2 + std^2 = s_hat^2)."""
    g = torch.Generator().manual_seed(0)
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    sigma, sigma_hat = 0.6, 0.75
    x = (1 - sigma) * y + sigma * torch.randn(200_000, 8, generator=g, dtype=torch.float64)
    out = churn(x, sigma, sigma_hat, torch.randn(200_000, 8, generator=g, dtype=torch.float64), flow=True)
    resid = out - (1 - sigma_hat) * y
    assert abs(float(resid.mean())) < 3e-3
    assert float(resid.var()) == pytest.approx(sigma_hat**2, rel=1e-2)
    alpha = (1 - sigma_hat) / (1 - sigma)
    std = float(((out - alpha * x) / 1.0).std())  # the added noise alone
    assert alpha**2 * sigma**2 + std**2 == pytest.approx(sigma_hat**2, rel=1e-2)
    # sigma form: variance adds up to sigma_hat^2 around y
    out = churn(y + sigma * torch.randn(200_000, 8, generator=g, dtype=torch.float64), sigma, sigma_hat,
                torch.randn(200_000, 8, generator=g, dtype=torch.float64))
    assert float((out - y).var()) == pytest.approx(sigma_hat**2, rel=1e-2)


def test_flow_model_sampling_clamps_sigma_hat_at_one() -> None:
    class Flow(DiagGaussian):
        flow = True

    grid = torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64)
    co = trained_record(grid, gamma=0.5, afs=False)
    model = Counted(Flow())
    out = sample_adasde(model, 0.5 * _x(), grid, coeffs=co, extra_args={"seed": 0}, disable=True)
    assert torch.isfinite(out).all()
    # step 1 starts at 0.9 with gamma_bar >= 0.25: the network sees sigma_hat = min((1 + gamma) 0.9, 1) = 1
    assert float(model.sigmas[2][0]) == 1.0
    assert all(float(s.max()) <= 1.0 for s in model.sigmas)


def test_adasde_step_is_differentiable_in_every_coefficient() -> None:
    model, x = DiagGaussian(), _x()
    params = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True)
              for k, v in (("r", 0.4), ("a", 1.05), ("c", 0.98), ("gamma", 0.02), ("w", 1.0))}
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_next, den, sigma_hat = adasde_step(model, x, 6.95, 1.29, params["r"], params["a"], params["c"], params["gamma"],
                                         params["w"], noise=noise)
    x_next.pow(2).sum().backward()
    for k, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs()) > 0, k
    assert float(sigma_hat.detach()) == pytest.approx(6.95 * 1.02)
