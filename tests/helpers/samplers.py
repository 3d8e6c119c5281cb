"""Shared pieces of the sampler tests: the exact single-Gaussian denoiser (docs/TESTBEDS.md section 1.1) in closed form
(axis-aligned, element-wise: fast and bit-exact across batch sizes) and from ``adasde.testbeds.gmm`` (rotated), a
call-counting wrapper, a least-squares slope fit and a trained-looking coefficient record.  Their checks against the
testbed are in ``tests/test_samplers_convergence.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from adasde.coefficients import Coefficients
from adasde.testbeds.gmm import GMMDenoiser, gaussian_ode_solution, single_gaussian

D = 6
MU = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
LAM = torch.tensor([0.05, 0.1, 0.3, 0.6, 1.0, 2.0], dtype=torch.float64)


def gaussian(lam: torch.Tensor = LAM, tau2: float = 0.05, seed: int = 3) -> GMMDenoiser:
    """Exact denoiser of N(MU, V diag(lam) V^T + tau2 (I - V V^T)) with a fixed random rotation V (full rank here)."""
    g = torch.Generator().manual_seed(seed)
    V = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    return GMMDenoiser(single_gaussian(MU, V, lam, tau2=tau2))


def exact_endpoint(model: GMMDenoiser, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Closed-form PF-ODE transport (x(s) - mu)_i = (x(s0) - mu)_i sqrt((lam_i + s^2) / (lam_i + s0^2))."""
    return gaussian_ode_solution(model.mixture, x, sigma_from, sigma_to)


class Counted:
    """Wraps a denoiser, counts calls and records the sigma vectors it was given."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls, self.sigmas = model, 0, []
        self.flow = getattr(model, "flow", False)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls += 1
        self.sigmas.append(sigma.detach().clone())
        return self.model(x, sigma, **kw)


class DiagGaussian:
    """N(mu, diag(lam)): D(x; s) = mu + lam / (lam + s^2) (x - mu), element-wise (``mu``/``lam`` numbers or tensors
    broadcasting against one sample), so every sample's result is bit-identical whatever the batch."""

    flow = False

    def __init__(self, mu: Any = MU, lam: Any = LAM) -> None:
        self.mu, self.lam = mu, lam

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return self.mu + self.lam / (self.lam + s2) * (x - self.mu)

    def exact(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Closed-form PF-ODE transport from sigma_from to sigma_to."""
        return self.mu + (x - self.mu) * torch.sqrt((self.lam + sigma_to**2) / (self.lam + sigma_from**2))


def slope(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of -log(error) against log(steps): the measured convergence order."""
    lx = [math.log(n) for n in steps]
    ly = [-math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)



def trained_record(sigmas: torch.Tensor, K: int = 1, afs: bool = True, gamma: float = 0.02, seed: int = 0,
                   **kw: Any) -> Coefficients:
    """A 'trained-looking' record: r in (0.2, 0.8), a/c near 1, small gamma, softmax w."""
    g = torch.Generator().manual_seed(seed)
    steps = sigmas.numel() - 1
    u = lambda: torch.rand(steps, K, generator=g, dtype=torch.float64)  # noqa: E731
    return Coefficients(r=0.2 + 0.6 * u(), a=0.9 + 0.2 * u(), c=0.95 + 0.1 * u(), gamma=gamma * (0.5 + u()),
                        w=torch.softmax(u(), dim=1), sigmas=sigmas.clone(), afs=afs, **kw)
