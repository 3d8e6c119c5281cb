"""Exact metrics of the Gaussian-mixture testbed: each is ~its floor on exact samples and grows on wrong ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adasde.testbeds import (
    ExactMoments,
    fd_floor,
    fmnist_gmm,
    frechet_distance,
    median_bandwidth,
    mmd2_unbiased,
    mode_tv,
    sliced_w2,
    synthetic_gmm,
)
from adasde.testbeds.metrics import evaluate, mode_histogram, random_directions


@pytest.fixture(scope="module")
def mix():
    return synthetic_gmm(d=16, K=5, rank=3, seed=0)


def test_frechet_distance_closed_form_gaussians():
    """FD between N(m, S) samples and N(m*, S*) with commuting covariances: |dm|^2 + sum (sqrt(a) - sqrt(b))^2."""
    d = 4
    S_star = torch.diag(torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64))
    mom = ExactMoments.__new__(ExactMoments)
    mom.mean, mom.cov = torch.zeros(d, dtype=torch.float64), S_star
    mom.sqrt_cov, mom.trace = S_star.sqrt(), float(S_star.trace())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    S_hat_diag = torch.tensor([4.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    x = 0.5 + z * S_hat_diag.sqrt()
    expect = d * 0.25 + float(((S_hat_diag.sqrt() - S_star.diagonal().sqrt()) ** 2).sum())
    assert abs(frechet_distance(x, mom) - expect) < 0.03


def test_fd_floor_and_exact_samples(mix):
    mom = ExactMoments(mix)
    floor = fd_floor(mix, 500, moments=mom)
    fd_exact = frechet_distance(mix.sample(500, seed=1), mom)
    assert 0.3 * floor < fd_exact < 3 * floor
    assert fd_floor(mix, 4000, moments=mom) < 0.25 * floor  # ~ d / n
    wrong = mix.perturbed(mean_shift=0.5, cov_scale=1.5).sample(500, seed=1)
    assert frechet_distance(wrong, mom) > 5 * floor


def test_mmd_unbiased_and_sliced_w2(mix):
    ref = mix.sample(400, seed=100)
    bw = median_bandwidth(ref)
    vals = [mmd2_unbiased(mix.sample(400, seed=s), ref, bw) for s in range(6)]
    spread = float(np.std(vals))
    assert abs(float(np.mean(vals))) < 2 * spread + 1e-4  # unbiased: zero mean for exact samples
    wrong = mix.perturbed(mean_shift=0.6, cov_scale=1.3).sample(400, seed=1)
    assert mmd2_unbiased(wrong, ref, bw) > 5 * spread
    sw_exact = sliced_w2(mix.sample(400, seed=1), ref)
    assert sliced_w2(wrong, ref) > 1.5 * sw_exact
    assert sliced_w2(ref, ref) == 0.0
    # a constant shift c moves every projection u.x by c.u: SW2 = sqrt(mean_u (c.u)^2) exactly
    c = torch.linspace(-0.3, 0.3, 16, dtype=torch.float64)
    expect = float((c @ random_directions(16, 512, 0)).pow(2).mean().sqrt())
    assert abs(sliced_w2(ref + c, ref, n_dirs=512) - expect) < 1e-9
    # unequal sizes are handled by quantile interpolation
    assert sliced_w2(mix.sample(300, seed=2), ref) < 2 * sw_exact + 0.05


def test_mode_tv(mix):
    x, k = mix.sample(3000, seed=0, return_labels=True)
    assert mode_tv(x, mix) < 0.05
    assert (mode_histogram(x, mix).sum() - 1).abs() < 1e-12
    # all mass in one mode: TV = 1 - pi_0
    one = mix.sample(3000, seed=0, return_labels=True)[0][k == 0][:200]
    assert abs(mode_tv(one, mix) - (1 - float(mix.params()["weights"][0]))) < 0.02


def test_evaluate_and_fmnist_mixture_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASDE_CACHE", str(tmp_path))
    m = fmnist_gmm(rank=8, split="test")
    files = list(tmp_path.glob("fmnist_gmm_*.npz"))
    assert len(files) == 1
    m2 = fmnist_gmm(rank=8, split="test")
    x = m.sample(256, seed=0)
    assert torch.allclose(m.denoise(x, 0.3), m2.denoise(x, 0.3))
    assert m.K == 10 and m.d == 784
    mean = m.mean()
    assert -0.6 < float(mean.mean()) < -0.3  # Fashion-MNIST mean 72.9/255 -> -0.43 in [-1, 1]
    ref = m.sample(256, seed=1)
    out = evaluate(x, m, ref, median_bandwidth(ref))
    assert set(out) == {"fd", "sw2", "mmd2", "tv", "logp"}
    assert out["tv"] < 0.15 and abs(out["mmd2"]) < 0.01
