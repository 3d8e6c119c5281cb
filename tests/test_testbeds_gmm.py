"""Exact Gaussian-mixture testbed: denoiser, score, sampling, flow form, single-Gaussian ODE, error variant, loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adasde.models import load_model
from adasde.testbeds import (
    GaussianMixture,
    GMMDenoiser,
    GMMFlowDenoiser,
    controlled_error,
    denoiser_error,
    gaussian_ode_solution,
    read_idx,
    reference_solve,
    single_gaussian,
    synthetic_gmm,
)


def dense_mixture(d: int = 2, K: int = 3, seed: int = 0) -> tuple[GaussianMixture, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.5, 0.3, 0.2][:K], dtype=torch.float64)
    mu = 2.5 * torch.randn(K, d, generator=g, dtype=torch.float64)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture.from_dense(w, mu, covs), w, mu, covs


def brute_posterior_mean(w, mu, covs, x, sigma):
    """Textbook formula with dense solves and torch's MultivariateNormal (independent of the eigen-form code)."""
    d = mu.shape[1]
    noisy = covs + sigma**2 * torch.eye(d, dtype=torch.float64)
    logp = torch.stack([torch.distributions.MultivariateNormal(mu[k], noisy[k]).log_prob(x) + torch.log(w[k])
                        for k in range(len(w))], 1)
    r = torch.softmax(logp, 1)
    comp = torch.stack([mu[k] + (covs[k] @ torch.linalg.solve(noisy[k], (x - mu[k]).T)).T for k in range(len(w))], 1)
    return (r[..., None] * comp).sum(1), torch.logsumexp(logp, 1)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_denoiser_equals_quadrature_posterior_mean_2d(sigma):
    """D(x; sigma) against E[y | x] by direct numerical integration over a fine 2-D grid."""
    mix, w, mu, covs = dense_mixture()
    x = torch.tensor([[0.3, -1.0], [2.0, 1.5], [-3.0, 0.5]], dtype=torch.float64)
    lo, hi, m = mu.min() - 6, mu.max() + 6, 701
    grid = torch.linspace(float(lo), float(hi), m, dtype=torch.float64)
    Y = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    logp0 = mix.log_prob(Y)  # log density on the grid
    if sigma < 0.2:  # the likelihood is narrower than the grid: integrate on a local grid around each x instead
        out = []
        for xi in x:
            loc = torch.linspace(-8 * sigma, 8 * sigma, 401, dtype=torch.float64)
            Yl = xi + torch.stack(torch.meshgrid(loc, loc, indexing="ij"), -1).reshape(-1, 2)
            lw = mix.log_prob(Yl) - ((Yl - xi) ** 2).sum(1) / (2 * sigma**2)
            p = torch.softmax(lw, 0)
            out.append((p[:, None] * Yl).sum(0))
        expect = torch.stack(out)
    else:
        lw = logp0[None] - ((Y[None] - x[:, None]) ** 2).sum(-1) / (2 * sigma**2)
        p = torch.softmax(lw, 1)
        expect = p @ Y
    got = mix.denoise(x, sigma)
    assert torch.allclose(got, expect, atol=2e-4 * max(1.0, sigma)), (got, expect)


def test_denoiser_and_log_prob_match_dense_formula_low_rank():
    """Low-rank + isotropic mixture (d = 6, rank 2) against the dense textbook formula, float64, many sigmas."""
    mix = synthetic_gmm(d=6, K=4, rank=2, seed=3)
    P = mix.params()
    covs = mix.covariances()
    x = mix.sample_noisy(64, 1.3, seed=5)
    for sigma in (0.002, 0.1, 1.0, 80.0):
        xs = mix.sample(64, 1) + sigma * torch.randn(64, 6, dtype=torch.float64)
        expect, logp = brute_posterior_mean(P["weights"], P["means"], covs, xs, sigma)
        assert torch.allclose(mix.denoise(xs, sigma), expect, rtol=1e-9, atol=1e-10)
        assert torch.allclose(mix.log_prob(xs, sigma), logp, rtol=1e-10, atol=1e-9)
    # float32 compute agrees to float32 accuracy
    m32 = synthetic_gmm(d=6, K=4, rank=2, seed=3, dtype=torch.float32)
    assert torch.allclose(m32.denoise(x.float(), 0.5).double(), mix.denoise(x, 0.5), atol=1e-5)


def test_score_is_gradient_of_log_density():
    mix = synthetic_gmm(d=8, K=3, rank=3, seed=1)
    for sigma in (0.05, 0.8, 10.0):
        x = mix.sample_noisy(16, sigma, seed=2).requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
        assert torch.allclose(mix.score(x.detach(), sigma), grad, rtol=1e-8, atol=1e-8)


def test_exact_sampling_moments_and_prefix_determinism():
    mix = synthetic_gmm(d=5, K=3, rank=2, seed=4)
    y, k = mix.sample(40_000, seed=0, return_labels=True)
    assert torch.allclose(y.mean(0), mix.mean(), atol=0.02)
    assert torch.allclose(torch.cov(y.T), mix.covariance(), atol=0.02)
    freq = torch.bincount(k, minlength=3).double() / len(k)
    assert torch.allclose(freq, mix.params()["weights"], atol=0.01)
    assert torch.equal(mix.sample(700, seed=9), mix.sample(2000, seed=9)[:700])
    assert not torch.equal(mix.sample(10, seed=1), mix.sample(10, seed=2))
    xT = mix.sample_noisy(20_000, 80.0, seed=1)
    assert abs(float(xT.std()) - math.sqrt(80.0**2 + float(mix.covariance().trace()) / 5)) < 1.0


def test_flow_denoiser_matches_sigma_form():
    mix = synthetic_gmm(d=10, K=4, rank=3, seed=2)
    sig, flow = GMMDenoiser(mix), GMMFlowDenoiser(mix)
    x = torch.randn(32, 10, dtype=torch.float64)
    for s in (0.01, 0.3, 0.9):
        a = 1 - s
        got = flow(x, torch.full((32,), s, dtype=torch.float64))
        expect = sig(x / a, torch.full((32,), s / a, dtype=torch.float64))
        assert torch.allclose(got, expect, rtol=1e-9, atol=1e-10)
    # at s = 1 the data is unidentifiable: E[y | x] = m*
    assert torch.allclose(flow(x, torch.ones(32, dtype=torch.float64)), mix.mean().expand(32, -1), atol=1e-12)
    assert flow.flow and not sig.flow and flow.sigma_max == 1.0


def test_single_gaussian_closed_form_ode():
    g = torch.Generator().manual_seed(0)
    d, r = 12, 3
    V = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    mix = single_gaussian(0.3 * torch.randn(d, generator=g, dtype=torch.float64), V,
                          torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64), 0.01)
    model = GMMDenoiser(mix, sigma_max=80.0)
    xT = mix.sample_noisy(8, 80.0, seed=0)
    exact = gaussian_ode_solution(mix, xT, 80.0, 0.002)
    e50 = (reference_solve(model, xT, n_steps=50) - exact).abs().max().item()
    e100 = (reference_solve(model, xT, n_steps=100) - exact).abs().max().item()
    assert e100 < 2e-3 and 3.5 < e50 / e100 < 4.5  # Heun converges to the closed form at second order
    # composition property of the flow map
    mid = gaussian_ode_solution(mix, xT, 80.0, 1.0)
    assert torch.allclose(gaussian_ode_solution(mix, mid, 1.0, 0.002), exact, atol=1e-12)
    with pytest.raises(ValueError, match="single Gaussian"):
        gaussian_ode_solution(synthetic_gmm(d=4, K=2, rank=1), torch.zeros(1, 4), 1.0, 0.1)


def test_controlled_error_documented_and_deterministic():
    mix = synthetic_gmm()
    m1, m2 = controlled_error(mix), controlled_error(mix)
    x = mix.sample_noisy(64, 1.0, seed=3)
    s = torch.ones(64, dtype=torch.float64)
    assert torch.equal(m1(x, s), m2(x, s))
    rows = denoiser_error(m1, [80.0, 2.0, 0.5, 0.02], n=256)
    by = {r["sigma"]: r for r in rows}
    # a real error at mid sigma, small relative to the posterior spread, vanishing in D as sigma -> 0
    assert 0.01 < by[2.0]["rmse"] < 0.5 * by[2.0]["posterior_rmse"]
    assert by[0.02]["rmse"] < 0.1 * by[2.0]["rmse"]
    assert by[0.02]["rel_score_error"] > 0.05  # but the score error stays (the covariance is off)
    exact_rows = denoiser_error(GMMDenoiser(mix), [2.0], n=64)
    assert exact_rows[0]["rmse"] < 1e-12
    assert m1.target is mix


def test_loader_specs_and_errors(tmp_path):
    for spec in ("testbed:gmm", "testbed:gmm-error", "testbed:gmm-flow"):
        m = load_model(spec)
        x = m.sample_prior(3, seed=0)
        assert x.shape == (3, 1, 8, 8) and m.family == spec.split(":")[1]
        out = m(x, torch.full((3,), m.sigma_max))
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert m.decode(out).min() >= 0 and m.decode(out).max() <= 1
    assert load_model("testbed:gmm-flow").flow
    m = load_model("testbed:gmm", d=16, K=2, rank=2, shape=(16,))
    assert m.sample_shape == (16,)
    with pytest.raises(ValueError, match="testbed:nope"):
        load_model("testbed:nope")
    with pytest.raises(ValueError, match="unknown options"):
        load_model("testbed:gmm", colour=3)


def test_idx_reader_and_missing_dataset(tmp_path, monkeypatch):
    import gzip

    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes() + arr.tobytes())
    assert np.array_equal(read_idx(p), arr)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(bad)
    from adasde.testbeds import load_fashion_mnist

    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="orthonormal"):
        GaussianMixture([1.0], torch.zeros(1, 3), 2 * torch.eye(3)[None, :, :1], torch.ones(1, 1), 0.1)
    with pytest.raises(ValueError, match="tau2"):
        GaussianMixture([1.0], torch.zeros(1, 3), torch.eye(3)[None, :, :1], torch.ones(1, 1), 0.0)
    with pytest.raises(ValueError, match="sample_shape"):
        GMMDenoiser(synthetic_gmm(d=8), sample_shape=(1, 3, 3))


def test_class_conditional_denoiser():
    """With class_labels the denoiser is E[y | x, k]: the single-component posterior mean (dense formula)."""
    mix = synthetic_gmm(d=6, K=3, rank=2, seed=7)
    P, covs = mix.params(), mix.covariances()
    x = mix.sample_noisy(9, 0.8, seed=1)
    labels = torch.tensor([0, 1, 2] * 3)
    model = GMMDenoiser(mix)
    got = model(x, torch.full((9,), 0.8, dtype=torch.float64), class_labels=labels)
    for i in range(9):
        k = int(labels[i])
        expect = P["means"][k] + covs[k] @ torch.linalg.solve(covs[k] + 0.64 * torch.eye(6, dtype=torch.float64),
                                                              x[i] - P["means"][k])
        assert torch.allclose(got[i], expect, atol=1e-10)
    with pytest.raises(ValueError, match="component indices"):
        model(x, torch.full((9,), 0.8, dtype=torch.float64), class_labels=torch.full((9,), 5))


def test_flow_ode_matches_sigma_ode():
    """x_flow(s) = (1 - s) x_sigma(s / (1 - s)): the flow-form PF-ODE, solved with the flow denoiser, lands where the
    sigma-form ODE lands (both by a fine Heun solve on corresponding grids)."""
    mix = synthetic_gmm(d=8, K=3, rank=2, seed=5)
    sig_model, flow_model = GMMDenoiser(mix), GMMFlowDenoiser(mix)
    s_grid = torch.linspace(0.95, 0.02, 151, dtype=torch.float64)
    x_flow0 = (1 - 0.95) * mix.sample(16, 0) + 0.95 * torch.randn(16, 8, dtype=torch.float64,
                                                                   generator=torch.Generator().manual_seed(1))
    end_flow = reference_solve(flow_model, x_flow0, sigmas=s_grid)
    end_sigma = reference_solve(sig_model, x_flow0 / 0.05, sigmas=s_grid / (1 - s_grid))
    assert torch.allclose(end_flow, (1 - 0.02) * end_sigma, atol=2e-4)  # 7e-5 here; 1.7e-5 with 301 points
