"""Shared pieces of the sampler tests: the exact single-Gaussian denoiser (docs/TESTBEDS.md section 1.1) in closed form
(axis-aligned, element-wise: fast and bit-exact across batch sizes) and from ``adasde.testbeds.gmm`` (rotated), a
call-counting wrapper and a least-squares slope fit.  The tests in this file check the closed forms against each other.

Sampler tests run single-threaded (``one_thread``): on the shared 2-core machine two intra-op threads make every tiny
op ~50x slower.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def slope(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of -log(error) against log(steps): the measured convergence order."""
    lx = [math.log(n) for n in steps]
    ly = [-math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


@pytest.mark.usefixtures("one_thread")
def test_closed_forms_agree_with_the_testbed() -> None:
    """DiagGaussian equals the testbed's exact GMM denoiser with V = I, and its transport equals the testbed's."""
    ref = GMMDenoiser(single_gaussian(MU, torch.eye(D, dtype=torch.float64), LAM, tau2=0.05))
    diag = DiagGaussian()
    x = 5 * torch.randn(3, D, dtype=torch.float64)
    for s in (10.0, 0.7, 0.01):
        sv = torch.full((3,), s, dtype=torch.float64)
        torch.testing.assert_close(diag(x, sv), ref(x, sv), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diag.exact(x, 10.0, 0.1), exact_endpoint(ref, x, 10.0, 0.1), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_exact_endpoint_solves_the_ode() -> None:
    """The closed form satisfies dx/dsigma = (x - D(x; sigma)) / sigma (central difference) and is a flow map."""
    model = gaussian()
    x0 = torch.randn(3, D, dtype=torch.float64) * 10
    for s in (5.0, 1.0, 0.2):
        x = exact_endpoint(model, x0, 10.0, s)
        eps = 1e-5 * s
        dx = (exact_endpoint(model, x0, 10.0, s + eps) - exact_endpoint(model, x0, 10.0, s - eps)) / (2 * eps)
        d = (x - model(x, torch.full((3,), s, dtype=torch.float64))) / s
        torch.testing.assert_close(dx, d, rtol=1e-6, atol=1e-8)
    mid = exact_endpoint(model, x0, 10.0, 1.0)
    torch.testing.assert_close(exact_endpoint(model, mid, 1.0, 0.1), exact_endpoint(model, x0, 10.0, 0.1))


def test_slope_fit() -> None:
    assert abs(slope([10, 20, 40], [1e-2, 2.5e-3, 6.25e-4]) - 2.0) < 1e-12
