"""Exact Gaussian-mixture testbed (docs/TESTBEDS.md section 1.1).

Data p0(y) = sum_k pi_k N(y; mu_k, Sigma_k) with low-rank-plus-isotropic covariances

    Sigma_k = V_k diag(lam_k - tau2_k) V_k^T + tau2_k I,     V_k: d x r orthonormal, lam_k >= tau2_k > 0

so Sigma_k has eigenvalues lam_k on span(V_k) and tau2_k on its complement.  Every quantity below works in that eigen
form, O(n K d r) per call (the "Woodbury" cost of section 1.1), and covers both parameterisations through
x = alpha y + s n:  sigma form (EDM/VE) is alpha = 1, s = sigma; flow form is alpha = 1 - s (x = (1 - s) y + s n).

    p(x) = sum_k pi_k N(x; alpha mu_k, alpha^2 Sigma_k + s^2 I)
    w_k  = softmax_k[log pi_k - 1/2 sum_i z_i^2 / c_i - 1/2 |res|^2 / c_iso - 1/2 (sum_i log c_i + (d - r) log c_iso)]
    E[y | x] = sum_k w_k [mu_k + alpha (V_k (lam_k / c) z + tau2_k res / c_iso)]

with diff = x - alpha mu_k, z = V_k^T diff, res = diff - V_k z, c = alpha^2 lam_k + s^2, c_iso = alpha^2 tau2_k + s^2.
For alpha = 1 this is section 1.1's D(x; sigma); the score is (D - x) / sigma^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..loaders.base import Denoiser

_CHUNK = 512  # rows per sampling block: makes sample(n, seed) a prefix of sample(m, seed) for n < m


def _as_vec(v: Any, n: int, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        t = t.expand(n)
    t = t.reshape(-1)
    if t.numel() != n:
        raise ValueError(f"expected a scalar or {n} noise levels, got {t.numel()}")
    return t


class GaussianMixture:
    """A K-component Gaussian mixture in R^d with covariances V diag(lam) V^T + tau2 (I - V V^T) (module docstring).

    ``weights`` [K] (normalised here), ``means`` [K, d], ``V`` [K, d, r] (orthonormal columns), ``lam`` [K, r]
    (eigenvalues along V, >= tau2), ``tau2`` [K] or scalar (> 0 unless r = d).  ``dtype`` float32 or float64 is the
    compute precision of every method; inputs of another dtype are converted and results converted back.
    """

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float],
        means: torch.Tensor,
        V: torch.Tensor,
        lam: torch.Tensor,
        tau2: torch.Tensor | float,
        dtype: torch.dtype = torch.float64,
        check: bool = True,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        means = torch.as_tensor(means, dtype=torch.float64)
        V = torch.as_tensor(V, dtype=torch.float64)
        lam = torch.as_tensor(lam, dtype=torch.float64)
        K = w.numel()
        if means.ndim != 2 or means.shape[0] != K:
            raise ValueError(f"means must be [K={K}, d], got {tuple(means.shape)}")
        d = means.shape[1]
        if V.ndim == 2:
            V = V.unsqueeze(-1)
        if V.shape[:2] != (K, d):
            raise ValueError(f"V must be [K={K}, d={d}, r], got {tuple(V.shape)}")
        r = V.shape[2]
        lam = lam.reshape(K, r)
        tau2 = torch.as_tensor(tau2, dtype=torch.float64).reshape(-1).expand(K).clone()
        if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        if (tau2 < 0).any() or (tau2 == 0).any() and r < d:
            raise ValueError(
                f"tau2 (isotropic residual variance) must be > 0 when rank {r} < d {d}, got {tau2.tolist()}"
            )
        if (lam <= 0).any():
            raise ValueError("eigenvalues lam must be > 0")
        if check:
            gram = V.transpose(1, 2) @ V
            err = (gram - torch.eye(r, dtype=torch.float64)).abs().max().item()
            if err > 1e-6:
                raise ValueError(
                    f"the columns of V must be orthonormal (max |V^T V - I| = {err:.2e}); use from_dense()"
                )
        self.K, self.d, self.r = K, d, r
        self._master = {"weights": w / w.sum(), "means": means, "V": V, "lam": lam, "tau2": tau2}
        self.to(dtype)

    # ------------------------------------------------------------------------------------------ construction
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> GaussianMixture:
        """Switch the compute precision and/or device (the float64 CPU master copy is kept)."""
        dtype = getattr(self, "dtype", torch.float64) if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"GaussianMixture computes in float32 or float64, got {dtype}")
        device = torch.device(device) if device is not None else getattr(self, "device", torch.device("cpu"))
        self.dtype, self.device = dtype, device
        m = {k: v.to(device=device, dtype=dtype) for k, v in self._master.items()}
        self.weights, self.means, self.V, self.lam, self.tau2 = m["weights"], m["means"], m["V"], m["lam"], m["tau2"]
        self.log_weights = torch.log(m["weights"])
        self._Vflat = self.V.permute(1, 0, 2).reshape(self.d, self.K * self.r)  # [d, K r]
        self._muV = torch.einsum("kd,kdr->kr", self.means, self.V)
        self._mu2 = (self.means * self.means).sum(1)
        return self

    @classmethod
    def from_dense(
        cls, weights: Sequence[float] | torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
        dtype: torch.dtype = torch.float64,
    ) -> GaussianMixture:
        """A mixture with full (dense, positive-definite) covariances ``covs`` [K, d, d] (full-rank eigen form)."""
        covs = torch.as_tensor(covs, dtype=torch.float64)
        lam, V = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        if (lam <= 0).any():
            raise ValueError(f"covariances must be positive definite (smallest eigenvalue {lam.min().item():.3g})")
        return cls(weights, means, V, lam, tau2=lam.min(dim=1).values, dtype=dtype)

    def params(self) -> dict[str, torch.Tensor]:
        """The float64 parameters (weights, means, V, lam, tau2)."""
        return dict(self._master)

    # ------------------------------------------------------------------------------------------ exact moments
    def covariances(self) -> torch.Tensor:
        """Dense Sigma_k, [K, d, d] float64 (for d up to a few thousand)."""
        m = self._master
        V, lam, tau2 = m["V"], m["lam"], m["tau2"]
        eye = torch.eye(self.d, dtype=torch.float64)
        return (V * (lam - tau2[:, None])[:, None, :]) @ V.transpose(1, 2) + tau2[:, None, None] * eye

    def mean(self) -> torch.Tensor:
        """m* = sum_k pi_k mu_k (docs/TESTBEDS.md section 1.2), float64."""
        return self._master["weights"] @ self._master["means"]

    def covariance(self) -> torch.Tensor:
        """S* = sum_k pi_k (Sigma_k + mu_k mu_k^T) - m* m*^T (docs/TESTBEDS.md section 1.2), dense [d, d] float64."""
        m = self._master
        w, mu = m["weights"], m["means"]
        mstar = self.mean()
        S = torch.einsum("k,kij->ij", w, self.covariances())
        S += (mu * w[:, None]).T @ mu - torch.outer(mstar, mstar)
        return 0.5 * (S + S.T)

    # ------------------------------------------------------------------------------------------ core
    def _terms(self, x: torch.Tensor, alpha: torch.Tensor, s: torch.Tensor):
        """Per-component log-likelihood terms for a block of rows (module docstring), by matmuls only: never forms the
        [n, K, d] residuals (|res|^2 = |diff|^2 - |z|^2, clamped at 0)."""
        a = alpha[:, None]
        z = (x @ self._Vflat).view(x.shape[0], self.K, self.r) - a[:, :, None] * self._muV[None]  # [n, K, r]
        diff2 = (x * x).sum(1, keepdim=True) - 2 * a * (x @ self.means.T) + (a * a) * self._mu2[None]
        z2 = z * z
        a2, s2 = (alpha * alpha)[:, None], (s * s)[:, None]
        c = a2[:, :, None] * self.lam[None] + s2[:, :, None]  # [n, K, r]
        c_iso = a2 * self.tau2[None] + s2  # [n, K]
        quad = (z2 / c).sum(-1)
        if self.r < self.d:
            quad = quad + (diff2 - z2.sum(-1)).clamp(min=0) / c_iso
        logdet = torch.log(c).sum(-1) + (self.d - self.r) * torch.log(c_iso)
        logits = self.log_weights[None] - 0.5 * quad - 0.5 * logdet - 0.5 * self.d * math.log(2 * math.pi)
        return logits, z, c, c_iso

    def _posterior_block(self, x, alpha, s, temperature: float = 1.0, labels: torch.Tensor | None = None):
        """sum_k w_k [mu_k (1 - alpha b_k) + b_k x + V_k ((alpha lam / c - b_k) z_k)], b_k = alpha tau2_k / c_iso."""
        logits, z, c, c_iso = self._terms(x, alpha, s)
        if labels is not None:  # conditional on the component: w = one-hot
            keep = torch.nn.functional.one_hot(labels.long().to(x.device), self.K).bool()
            logits = logits.masked_fill(~keep, float("-inf"))
        w = torch.softmax(logits / temperature, dim=1)  # [n, K]
        a = alpha[:, None]
        b = a * self.tau2[None] / c_iso  # [n, K]
        u = w[:, :, None] * (a[:, :, None] * self.lam[None] / c - b[:, :, None]) * z
        out = (w * (1 - a * b)) @ self.means + (w * b).sum(1, keepdim=True) * x
        return out + u.reshape(x.shape[0], -1) @ self._Vflat.T, w

    def _prep(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected points of shape [n, {self.d}], got {tuple(x.shape)}")
        if x.device != self.device:
            self.to(device=x.device)
        return x.to(self.dtype), x.dtype

    def posterior_mean(
        self, x: torch.Tensor, alpha: Any = 1.0, s: Any = 1.0, temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """E[y | x] for x = alpha y + s n (module docstring); ``alpha``, ``s`` scalars or [n].  ``temperature`` != 1
        tempers the responsibilities (only for the controlled-error variant, docs/TESTBEDS.md section 1.4); ``labels``
        [n] (component indices) gives the class-conditional E[y | x, k]."""
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1)
            if labels.numel() != x.shape[0] or (labels < 0).any() or (labels >= self.K).any():
                raise ValueError(
                    f"labels must be {x.shape[0]} component indices in [0, {self.K}), got {labels.tolist()}"
                )
        x, out_dtype = self._prep(x)
        alpha, s = _as_vec(alpha, x.shape[0], x), _as_vec(s, x.shape[0], x)
        if (s <= 0).any():
            raise ValueError("the noise level must be > 0 for the posterior mean (use D(x; sigma_min) near 0)")
        return self._posterior_block(x, alpha, s, temperature, labels)[0].to(out_dtype)

    def denoise(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Exact denoiser D(x; sigma) = E[y | x = y + sigma n] (docs/TESTBEDS.md section 1.1)."""
        return self.posterior_mean(x, 1.0, sigma)

    def score(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (docs/TESTBEDS.md section 1.1)."""
        sig = _as_vec(sigma, x.shape[0], x.to(self.dtype)).to(x.dtype)[:, None]
        return (self.denoise(x, sigma) - x) / sig**2

    def responsibilities(self, x: torch.Tensor, sigma: Any = 0.0, alpha: Any = 1.0) -> torch.Tensor:
        """w_k(x; sigma), [n, K] (sigma = 0 gives the data-space posterior over components)."""
        return torch.softmax(self.component_log_prob(x, sigma, alpha), dim=1)

    def component_log_prob(self, x: torch.Tensor, sigma: Any = 0.0, alpha: Any = 1.0) -> torch.Tensor:
        """log pi_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I), [n, K] in the compute dtype."""
        x, _ = self._prep(x)
        alpha, s = _as_vec(alpha, x.shape[0], x), _as_vec(sigma, x.shape[0], x)
        return self._terms(x, alpha, s)[0]

    def log_prob(self, x: torch.Tensor, sigma: Any = 0.0, alpha: Any = 1.0) -> torch.Tensor:
        """log p(x; sigma) of the noisy marginal (sigma = 0: the data density), [n].  Differentiable in x."""
        x, _ = self._prep(x)
        alpha, s = _as_vec(alpha, x.shape[0], x), _as_vec(sigma, x.shape[0], x)
        return torch.logsumexp(self._terms(x, alpha, s)[0], dim=1)

    # ------------------------------------------------------------------------------------------ exact sampling
    def sample(self, n: int, seed: int = 0, return_labels: bool = False):
        """n exact samples (docs/TESTBEDS.md section 1.1): k ~ Cat(pi), y = mu_k + V_k(sqrt(lam - tau2) xi) + tau xi'.

        Drawn in blocks of 512 from generators seeded by (seed, block), so ``sample(m, seed)[:n] == sample(n, seed)``.
        Returns float in the compute dtype ([n, d]) and, with ``return_labels``, the components [n].
        """
        ys, ks = [], []
        cdf = torch.cumsum(self._master["weights"], 0)
        for b in range(0, n, _CHUNK):
            m = min(_CHUNK, n - b)  # full blocks are drawn and cut, so a sample does not depend on n
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + b // _CHUNK)
            u = torch.rand(_CHUNK, generator=g, dtype=torch.float64)[:m]
            k = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.K - 1)
            xi_r = torch.randn(_CHUNK, self.r, generator=g, dtype=torch.float64)[:m]
            xi_d = torch.randn(_CHUNK, self.d, generator=g, dtype=torch.float64)[:m]
            M = self._master
            extra = (M["lam"] - M["tau2"][:, None]).clamp(min=0).sqrt()
            y = M["means"][k] + M["tau2"][k].sqrt()[:, None] * xi_d
            for j in range(self.K):
                idx = k == j
                if idx.any():
                    y[idx] += (extra[j] * xi_r[idx]) @ M["V"][j].T
            ys.append(y)
            ks.append(k)
        y, k = torch.cat(ys).to(self.dtype), torch.cat(ks)
        return (y, k) if return_labels else y

    def standard_noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """N(0, I) draws [n, d] float64, block-seeded like :meth:`sample` but from an independent stream."""
        blocks = []
        for b in range(0, n, _CHUNK):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + b // _CHUNK + 7919)
            blocks.append(torch.randn(_CHUNK, self.d, dtype=torch.float64, generator=g)[: min(_CHUNK, n - b)])
        return torch.cat(blocks)

    def sample_noisy(self, n: int, sigma: float, seed: int = 0, alpha: float = 1.0) -> torch.Tensor:
        """n exact samples of the noisy marginal x = alpha y + sigma n (sigma form: alpha = 1; e.g. x_T at sigma_max),
        seeded like :meth:`sample` (noise from an independent stream)."""
        y = self.sample(n, seed).to(torch.float64)
        noise = self.standard_noise(n, seed)
        return (alpha * y + sigma * noise).to(self.dtype)

    # ------------------------------------------------------------------------------------------ derived mixtures
    def perturbed(
        self, mean_shift: float = 0.0, cov_scale: float = 1.0, seed: int = 0,
    ) -> GaussianMixture:
        """A copy with mu_k + mean_shift * sqrt(tr(Sigma_k)/d) g_k (g_k ~ N(0, I), fixed by ``seed``) and every
        covariance eigenvalue times ``cov_scale`` (docs/TESTBEDS.md section 1.4, item 1)."""
        M = self._master
        g = torch.randn(self.K, self.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        scale = torch.sqrt((M["lam"].sum(1) + (self.d - self.r) * M["tau2"]) / self.d)
        return GaussianMixture(M["weights"], M["means"] + mean_shift * scale[:, None] * g, M["V"],
                               M["lam"] * cov_scale, M["tau2"] * cov_scale, dtype=self.dtype, check=False)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d}, rank={self.r}, dtype={self.dtype})"


# ---------------------------------------------------------------------------------------------- constructors
def synthetic_gmm(
    d: int = 64, K: int = 8, rank: int = 4, seed: int = 0, spread: float = 0.6, tau2: float = 0.01,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """A fully synthetic mixture (no data needed): K well-separated means of norm ~ spread*sqrt(d) clipped to [-1, 1]
    scale, random rank-``rank`` subspaces with eigenvalues log-uniform in [0.02, 0.2], residual ``tau2``, uneven
    weights.  Deterministic in ``seed``."""
    if d < 1 or K < 1 or not (1 <= rank <= d):
        raise ValueError(f"need d >= 1, K >= 1 and 1 <= rank <= d, got d={d}, K={K}, rank={rank}")
    g = torch.Generator().manual_seed(seed)
    means = spread * (2 * torch.rand(K, d, generator=g, dtype=torch.float64) - 1)
    V = torch.linalg.qr(torch.randn(K, d, rank, generator=g, dtype=torch.float64))[0]
    lam = tau2 + torch.exp(math.log(0.02) + torch.rand(K, rank, generator=g, dtype=torch.float64) * math.log(10))
    w = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
    return GaussianMixture(w, means, V, lam, tau2, dtype=dtype)


def single_gaussian(
    mean: torch.Tensor, V: torch.Tensor, lam: torch.Tensor, tau2: float, dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """K = 1 mixture; its PF-ODE has the closed form of :func:`gaussian_ode_solution`."""
    return GaussianMixture([1.0], mean.reshape(1, -1), V.reshape(1, mean.numel(), -1), lam.reshape(1, -1), tau2,
                           dtype=dtype)


def gaussian_ode_solution(mix: GaussianMixture, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact PF-ODE transport of ``x`` from ``sigma_from`` to ``sigma_to``, one Gaussian (docs/TESTBEDS.md section 1.1):
    in the eigenbasis (x(sigma) - mu)_i = (x(sigma0) - mu)_i sqrt((lam_i + sigma^2) / (lam_i + sigma0^2))."""
    if mix.K != 1:
        raise ValueError(f"the closed-form PF-ODE solution needs a single Gaussian (K = 1), got K = {mix.K}")
    M = mix.params()
    mu, V, lam, tau2 = M["means"][0], M["V"][0], M["lam"][0], M["tau2"][0]
    diff = x.to(torch.float64) - mu
    z = diff @ V
    res = diff - z @ V.T
    f = torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2))
    f_iso = torch.sqrt((tau2 + sigma_to**2) / (tau2 + sigma_from**2))
    return (mu + (z * f) @ V.T + f_iso * res).to(x.dtype)


# ---------------------------------------------------------------------------------------------- Denoiser wrappers
class GMMDenoiser(Denoiser):
    """The exact posterior-mean denoiser D(x; sigma) of a :class:`GaussianMixture` (docs/TESTBEDS.md section 1.1).

    Samples have shape ``sample_shape`` (product = d); ``decode`` maps [-1, 1] to [0, 1].  Keyword ``temperature``
    (!= 1) tempers the responsibilities: used by the controlled-error variant (:func:`controlled_error`).  Extra
    argument ``class_labels`` ([B] component indices, e.g. Fashion-MNIST classes) makes it class-conditional.
    """

    prediction = "edm"
    flow = False

    def __init__(
        self, mixture: GaussianMixture, sample_shape: Sequence[int] | None = None, family: str = "gmm",
        sigma_min: float = 0.002, sigma_max: float = 80.0, temperature: float = 1.0,
        exact: GaussianMixture | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(sample_shape) if sample_shape is not None else (mixture.d,)
        if math.prod(shape) != mixture.d:
            raise ValueError(f"sample_shape {shape} has {math.prod(shape)} entries but the mixture has d = {mixture.d}")
        self.mixture, self.sample_shape, self.family = mixture, shape, family
        self.sigma_min, self.sigma_max, self.temperature = float(sigma_min), float(sigma_max), float(temperature)
        # the exact target: the mixture itself for exact testbeds, the unperturbed one for controlled-error ones
        self.target = mixture if exact is None else exact

    def _alpha_s(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(sigma), sigma

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        alpha, s = self._alpha_s(sigma)
        flat = x.reshape(x.shape[0], -1)
        labels = extra.get("class_labels")
        return self.mixture.posterior_mean(flat, alpha, s, self.temperature, labels).reshape(x.shape)

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        """n exact samples of the *target* data distribution, shaped [n, *sample_shape]."""
        return self.target.sample(n, seed).float().reshape(n, *self.sample_shape)

    def sample_prior(self, n: int, seed: int = 0) -> torch.Tensor:
        """n exact samples of the noisy target marginal at sigma_max (the exact x_T), [n, *sample_shape]."""
        return self.target.sample_noisy(n, self.sigma_max, seed).float().reshape(n, *self.sample_shape)


class GMMFlowDenoiser(GMMDenoiser):
    """Flow-parameterised exact denoiser: x = (1 - s) y + s n, s in (0, 1], E[y | x] (module docstring, alpha = 1 - s),
    which equals D(x / alpha; s / alpha) of the sigma form and stays finite at s = 1 (where it is m*)."""

    prediction = "flow"
    flow = True

    def __init__(self, mixture: GaussianMixture, sample_shape: Sequence[int] | None = None, family: str = "gmm-flow",
                 sigma_min: float = 0.002, sigma_max: float = 1.0, temperature: float = 1.0,
                 exact: GaussianMixture | None = None) -> None:
        if not (0 < sigma_min < sigma_max <= 1):
            raise ValueError(f"a flow model needs 0 < sigma_min < sigma_max <= 1, got {sigma_min}, {sigma_max}")
        super().__init__(mixture, sample_shape, family, sigma_min, sigma_max, temperature, exact)

    def _alpha_s(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 - sigma, sigma

    def sample_prior(self, n: int, seed: int = 0) -> torch.Tensor:
        s = self.sigma_max
        return self.target.sample_noisy(n, s, seed, alpha=1 - s).float().reshape(n, *self.sample_shape)


# ---------------------------------------------------------------------------------------------- controlled error
ERROR_DEFAULTS = {"mean_shift": 0.15, "cov_scale": 1.25, "temperature": 1.5, "seed": 1}


def controlled_error(
    exact: GaussianMixture, mean_shift: float = ERROR_DEFAULTS["mean_shift"],
    cov_scale: float = ERROR_DEFAULTS["cov_scale"], temperature: float = ERROR_DEFAULTS["temperature"],
    seed: int = ERROR_DEFAULTS["seed"], **kw: Any,
) -> GMMDenoiser:
    """Controlled-error denoiser (docs/TESTBEDS.md section 1.4): the posterior mean of a *perturbed* mixture (means
    shifted by ``mean_shift`` component standard deviations along fixed random directions, covariances times
    ``cov_scale``) with responsibilities tempered by ``temperature`` (so the implied score is not even a gradient).
    Deterministic, no training; the exact target stays ``exact`` (``.target``).  Its error vs the exact denoiser
    across sigma is measured by :func:`denoiser_error` (see testbeds/README.md)."""
    wrong = exact.perturbed(mean_shift, cov_scale, seed)
    return GMMDenoiser(wrong, temperature=temperature, exact=exact, **kw)


@torch.no_grad()
def denoiser_error(model: GMMDenoiser, sigmas: Sequence[float], n: int = 512, seed: int = 0) -> list[dict[str, float]]:
    """Per sigma: RMSE of ``model`` vs the exact denoiser of its target on exact noisy samples x ~ p(x; sigma), the
    exact denoiser's own RMSE to the clean y (the irreducible posterior spread) and the relative score error
    |s_model - s_exact| / |s_exact| (sigma form)."""
    target, rows = model.target, []
    for sig in sigmas:
        y = target.sample(n, seed).to(torch.float64)
        x = y + sig * target.standard_noise(n, seed)
        d_exact = target.posterior_mean(x, 1.0, sig)
        d_model = model(x.reshape(n, *model.sample_shape).to(model.mixture.dtype),
                        torch.full((n,), sig, dtype=model.mixture.dtype)).reshape(n, -1).to(torch.float64)
        err = (d_model - d_exact).pow(2).mean().sqrt().item()
        spread = (d_exact - y).pow(2).mean().sqrt().item()
        s_exact = (d_exact - x).norm(dim=1)
        rel = ((d_model - d_exact).norm(dim=1) / s_exact.clamp(min=1e-30)).mean().item()
        rows.append({"sigma": float(sig), "rmse": err, "posterior_rmse": spread, "rel_score_error": rel})
    return rows
