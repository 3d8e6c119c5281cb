"""Metrics against the *exact* target of a Gaussian-mixture testbed (docs/TESTBEDS.md section 1.2).

All take samples as [n, ...] tensors (flattened to [n, d]) and compute in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..samplers.common import sigma_list, to_d
from ..samplers.schedules import get_sigmas
from .gmm import GaussianMixture


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _sqrtm_psd(S: torch.Tensor) -> torch.Tensor:
    ev, vec = torch.linalg.eigh(0.5 * (S + S.T))
    return (vec * ev.clamp(min=0).sqrt()) @ vec.T


class ExactMoments:
    """m*, S* of a mixture and the pieces of the Frechet distance that depend only on them (S*^1/2, tr S*)."""

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mean = mixture.mean()
        self.cov = mixture.covariance()
        self.sqrt_cov = _sqrtm_psd(self.cov)
        self.trace = float(torch.trace(self.cov))


def frechet_distance(x: torch.Tensor, target: GaussianMixture | ExactMoments) -> float:
    """Exact-moment Frechet distance (docs/TESTBEDS.md section 1.2):
    |m_hat - m*|^2 + tr(S_hat + S* - 2 (S*^1/2 S_hat S*^1/2)^1/2)."""
    mom = target if isinstance(target, ExactMoments) else ExactMoments(target)
    x = _flat(x)
    if x.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least 2 samples")
    m = x.mean(0)
    c = x - m
    S = c.T @ c / (x.shape[0] - 1)
    M = mom.sqrt_cov @ S @ mom.sqrt_cov
    ev = torch.linalg.eigvalsh(0.5 * (M + M.T)).clamp(min=0)
    return float((m - mom.mean).pow(2).sum() + torch.trace(S) + mom.trace - 2 * ev.sqrt().sum())


def fd_floor(mixture: GaussianMixture, n: int, repeats: int = 3, seed: int = 10_000,
             moments: ExactMoments | None = None) -> float:
    """Mean Frechet distance of ``n`` exact samples to the exact moments (the finite-n floor, ~ d/n), over ``repeats``
    independent draws (seeds ``seed``, ``seed + 1``, ...)."""
    mom = moments or ExactMoments(mixture)
    return sum(frechet_distance(mixture.sample(n, seed + i), mom) for i in range(repeats)) / repeats


def random_directions(d: int, n_dirs: int = 256, seed: int = 0) -> torch.Tensor:
    """``n_dirs`` fixed random unit vectors in R^d, [d, n_dirs] float64."""
    u = torch.randn(d, n_dirs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm(dim=0, keepdim=True)


def _quantiles(p: torch.Tensor, m: int) -> torch.Tensor:
    """Sorted columns of ``p`` resampled at m mid-point quantile levels (linear interpolation)."""
    p = p.sort(dim=0).values
    n = p.shape[0]
    if n == m:
        return p
    pos = (torch.arange(m, dtype=torch.float64) + 0.5) / m * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    f = (pos - lo).clamp(0, 1)[:, None]
    return p[lo] * (1 - f) + p[hi] * f


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_dirs: int = 256, seed: int = 0) -> float:
    """Sliced W2 (docs/TESTBEDS.md section 1.2): sqrt of the mean over ``n_dirs`` fixed random directions of squared
    1-D W2 between the projected samples (sorted-quantile coupling; unequal sizes via interpolated quantiles)."""
    x, y = _flat(x), _flat(y)
    U = random_directions(x.shape[1], n_dirs, seed)
    m = max(x.shape[0], y.shape[0])
    px, py = _quantiles(x @ U, m), _quantiles(y @ U, m)
    return math.sqrt(float((px - py).pow(2).mean()))


def median_bandwidth(y: torch.Tensor, max_n: int = 1000) -> float:
    """Median pairwise Euclidean distance of (the first ``max_n`` rows of) ``y``: the RBF bandwidth, computed once
    from exact samples and then kept fixed for every solver."""
    y = _flat(y)[:max_n]
    dist = torch.cdist(y, y)
    iu = torch.triu_indices(len(y), len(y), 1)
    return float(dist[iu[0], iu[1]].median())


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, bandwidth: float, exclude_diagonal: bool) -> float:
    """sum_ij exp(-|a_i - b_j|^2 / (2 h^2)) in float64; distances by float32 matmuls (the d = 784 cost)."""
    a32, b32 = a.float(), b.float()
    d2 = ((a32 * a32).sum(1)[:, None] + (b32 * b32).sum(1)[None] - 2 * a32 @ b32.T).clamp(min=0)
    k = torch.exp(d2.double() * (-0.5 / bandwidth**2))
    if exclude_diagonal:
        k.fill_diagonal_(0)
    return float(k.sum())


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float, yy_term: float | None = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2/(2h^2)) (docs/TESTBEDS.md section 1.2): 0 in expectation when x and y
    come from the same distribution, so it can be negative.  ``yy_term`` caches the y-y mean for a fixed y."""
    x, y = _flat(x), _flat(y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("unbiased MMD^2 needs at least 2 samples on each side")
    if yy_term is None:
        yy_term = _kernel_sum(y, y, bandwidth, True) / (m * (m - 1))
    return (_kernel_sum(x, x, bandwidth, True) / (n * (n - 1)) + yy_term
            - 2 * _kernel_sum(x, y, bandwidth, False) / (n * m))


def mode_histogram(x: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """Fraction of samples assigned to each component by argmax_k pi_k N(x; mu_k, Sigma_k), [K] float64."""
    k = mixture.component_log_prob(_flat(x).to(mixture.dtype)).argmax(1)
    return torch.bincount(k, minlength=mixture.K).to(torch.float64) / x.shape[0]


def mode_tv(x: torch.Tensor, mixture: GaussianMixture) -> float:
    """Mode-weight TV (docs/TESTBEDS.md section 1.2): 1/2 sum_k |h_k - pi_k|, h = :func:`mode_histogram`."""
    return 0.5 * float((mode_histogram(x, mixture) - mixture.params()["weights"]).abs().sum())


def mean_log_prob(x: torch.Tensor, mixture: GaussianMixture) -> float:
    """Mean log p0(x) under the exact mixture (sharpness diagnostic, a cross-entropy; docs/TESTBEDS.md section 1.2)."""
    return float(mixture.log_prob(_flat(x).to(mixture.dtype)).to(torch.float64).mean())


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root mean squared difference over all entries (few-step output vs reference solve from the same noise)."""
    return math.sqrt(float((_flat(x) - _flat(ref)).pow(2).mean()))


@torch.no_grad()
def reference_solve(denoiser: Any, x_T: torch.Tensor, n_steps: int = 200, sigmas: torch.Tensor | None = None,
                    schedule: tuple[str, float] = ("polynomial", 7.0)) -> torch.Tensor:
    """High-accuracy PF-ODE solve (EDM Heun, 2nd order, ``n_steps`` steps = 2 n_steps NFE) from ``x_T`` at
    ``sigma_max`` down to ``sigma_min`` (no final denoising, as in the papers; docs/TESTBEDS.md section 1.2)."""
    if sigmas is None:
        sigmas = get_sigmas(schedule[0], n_steps + 1, denoiser.sigma_min, denoiser.sigma_max, rho=schedule[1],
                            dtype=torch.float64)
    s = sigma_list(sigmas)
    x = x_T
    ones = x.new_ones([x.shape[0]])
    for a, b in zip(s[:-1], s[1:]):
        d = to_d(x, a, denoiser(x, a * ones))
        x_e = x + (b - a) * d
        if b > 0:
            d = 0.5 * (d + to_d(x_e, b, denoiser(x_e, b * ones)))
        x = x + (b - a) * d
    return x


class ExactReference:
    """What stays fixed while samplers are compared on one target (docs/TESTBEDS.md section 1.2): exact moments,
    ``n`` exact samples (seed ``seed``), their median bandwidth, their y-y MMD term and sorted projections."""

    def __init__(self, mixture: GaussianMixture, n: int, seed: int = 1, n_dirs: int = 256) -> None:
        self.mixture, self.moments = mixture, ExactMoments(mixture)
        self.samples = _flat(mixture.sample(n, seed))
        self.bandwidth = median_bandwidth(self.samples)
        self.yy_term = _kernel_sum(self.samples, self.samples, self.bandwidth, True) / (n * (n - 1))
        self.n_dirs = n_dirs

    def evaluate(self, samples: torch.Tensor, reference_solution: torch.Tensor | None = None) -> dict[str, float]:
        """fd, sw2, mmd2, tv, logp (and rmse given a reference solve from the same noise) of ``samples``."""
        out = {
            "fd": frechet_distance(samples, self.moments),
            "sw2": sliced_w2(samples, self.samples, self.n_dirs),
            "mmd2": mmd2_unbiased(samples, self.samples, self.bandwidth, self.yy_term),
            "tv": mode_tv(samples, self.mixture),
            "logp": mean_log_prob(samples, self.mixture),
        }
        if reference_solution is not None:
            out["rmse"] = rmse(samples, reference_solution)
        return out


def evaluate(samples: torch.Tensor, mixture: GaussianMixture, reference_samples: torch.Tensor, bandwidth: float,
             moments: ExactMoments | None = None, reference_solution: torch.Tensor | None = None) -> dict[str, float]:
    """All section 1.2 metrics of ``samples`` against the exact ``mixture`` in one dict (fd, sw2, mmd2, tv, logp and,
    given a reference solve from the same noise, rmse)."""
    out = {
        "fd": frechet_distance(samples, moments or ExactMoments(mixture)),
        "sw2": sliced_w2(samples, reference_samples),
        "mmd2": mmd2_unbiased(samples, reference_samples, bandwidth),
        "tv": mode_tv(samples, mixture),
        "logp": mean_log_prob(samples, mixture),
    }
    if reference_solution is not None:
        out["rmse"] = rmse(samples, reference_solution)
    return out
