"""Frechet distance, KID and k-NN precision/recall in feature space (docs/ALGORITHMS.md section 6).

FID (Heusel et al. 2017; EDM ``fid.py``):  ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}).

``tr((S_1 S_2)^{1/2})`` is the sum of the square roots of the eigenvalues of S_1 S_2, which are those of the symmetric
PSD matrix ``S_1^{1/2} S_2 S_1^{1/2}``, and equally of ``F^T S_2 F`` for any factor ``S_1 = F F^T`` (they are similar
matrices).  The default method takes F from a pivoted (rank-revealing) Cholesky factorisation, so singular
covariances (fewer images than dimensions) need no regularisation, and only eigenvalues of a symmetric matrix are
needed: no complex arithmetic, no ``sqrtm`` iterations.  ``method="eigh"`` uses the exact symmetric square root of
S_1 from an eigendecomposition; ``method="sqrtm"`` reproduces pytorch-fid / EDM (``scipy.linalg.sqrtm`` of S_1 S_2)
and reports the imaginary part it discards.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

METHODS = ("cholesky", "eigh", "sqrtm")


@dataclass
class FrechetResult:
    """A Frechet distance with its parts and numerical diagnostics.  ``float(result)`` gives the value."""

    value: float
    mean_term: float  # ||mu_1 - mu_2||^2
    trace_term: float  # tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2)
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "mean_term": self.mean_term, "trace_term": self.trace_term,
                "method": self.method, "diagnostics": dict(self.diagnostics)}


def _as_f64(a: Any, name: str) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    return a


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _psd_factor(S: np.ndarray) -> tuple[np.ndarray, int]:
    """F with S = F F^T (F: d x r, r = numerical rank) by LAPACK's pivoted Cholesky ``dpstrf``."""
    d = S.shape[0]
    tol = d * np.finfo(np.float64).eps * max(float(np.max(np.diag(S))), 0.0)
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(S, lower=0, tol=tol)
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK dpstrf info={info})")
    U = np.triu(c)[:rank]  # P^T S P = U^T U
    F = np.zeros((d, rank))
    F[piv - 1] = U.T  # S = P U^T U P^T, P[piv[i]-1, i] = 1
    return F, int(rank)


def _factor_either(s1: np.ndarray, s2: np.ndarray, diag: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(F, S_other) with F F^T one of the covariances: plain Cholesky of whichever is positive definite (the
    reference, second, is tried first: usually from the most images), else pivoted Cholesky of S_1 (both singular).
    tr sqrt(S_1 S_2) = tr sqrt(S_2 S_1), so either order gives the same distance."""
    d = s1.shape[0]
    for name, S, other in (("sigma2", s2, s1), ("sigma1", s1, s2)):
        L, info = torch.linalg.cholesky_ex(torch.from_numpy(S))
        if int(info) == 0:
            diag.update(factor=f"cholesky({name})", rank1=d if name == "sigma1" else None)
            return L.numpy(), other
    F, rank = _psd_factor(s1)
    diag.update(factor="pivoted-cholesky(sigma1)", rank1=rank)
    return F, s2


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, method: str = "cholesky", eps: float = 0.0
) -> FrechetResult:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (docs/ALGORITHMS.md section 6, FID formula).

    Inputs are converted to float64.  ``eps`` > 0 adds ``eps * I`` to both covariances (pytorch-fid's fallback; off by
    default since the factorisation handles singular matrices).  Diagnostics: ranks, the most negative eigenvalue that
    was clipped to 0 (rounding noise, reported as ``clipped_negative``), covariance asymmetry and, for ``sqrtm``, the
    largest imaginary part that was discarded.
    """
    if method not in METHODS:
        raise ValueError(f"frechet_distance: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    mu1, mu2 = _as_f64(mu1, "mu1").reshape(-1), _as_f64(mu2, "mu2").reshape(-1)
    s1, s2 = _as_f64(sigma1, "sigma1"), _as_f64(sigma2, "sigma2")
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shape mismatch mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, "
                         f"sigma2 {s2.shape} (statistics from different feature networks?)")
    diag: dict[str, Any] = {"dim": d}
    diag["asymmetry"] = float(max(np.abs(s1 - s1.T).max(), np.abs(s2 - s2.T).max()))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    if eps:
        s1 = s1 + eps * np.eye(d)
        s2 = s2 + eps * np.eye(d)
        diag["eps"] = eps
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    if method == "sqrtm":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            covmean = scipy.linalg.sqrtm(s1 @ s2)
        if caught:
            diag["sqrtm_warnings"] = sorted({str(w.message) for w in caught})
        if not np.isfinite(covmean).all():
            raise ValueError("frechet_distance(method='sqrtm'): sqrtm produced non-finite values; use "
                             "method='cholesky' or eps > 0")
        imag = float(np.max(np.abs(np.imag(covmean)))) if np.iscomplexobj(covmean) else 0.0
        diag["max_imag"] = imag
        tr_sqrt = float(np.trace(np.real(covmean)))
    else:
        if method == "eigh":
            with _torch_threads(1):
                w, V = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(s1)))
            diag["min_eig_sigma1"] = float(w.min())
            w = np.clip(w, 0.0, None)
            A, other = (V * np.sqrt(w)) @ V.T, s2  # symmetric sqrt(S_1)
            diag["rank1"] = int(np.sum(w > d * np.finfo(np.float64).eps * max(w.max(), 0.0)))
        else:
            A, other = _factor_either(s1, s2, diag)
        if diag.get("factor", "").startswith("cholesky"):  # A lower triangular: two triangular products (BLAS trmm)
            trmm = scipy.linalg.blas.dtrmm
            B = trmm(1.0, A, other.T, side=1, lower=1)  # S A (S symmetric: S.T is a free Fortran view)
            M = torch.from_numpy(trmm(1.0, A, B, side=0, lower=1, trans_a=1, overwrite_b=1))  # A^T S A
        else:
            At = torch.from_numpy(np.ascontiguousarray(A))
            M = At.T @ torch.from_numpy(other) @ At
        with _torch_threads(1):  # tridiagonalisation is level-2 bound; threads only spin on a busy machine
            ev = torch.linalg.eigvalsh((M + M.T) / 2).numpy() if M.numel() else np.zeros(0)
        neg = ev[ev < 0]
        scale = float(np.abs(ev).max()) if ev.size else 0.0
        diag["clipped_negative"] = float(neg.min()) if neg.size else 0.0
        diag["clipped_negative_rel"] = (abs(diag["clipped_negative"]) / scale) if scale > 0 else 0.0
        diag["max_imag"] = 0.0
        tr_sqrt = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    trace_term = float(np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    value = mean_term + trace_term
    diag["tr_sqrt"] = tr_sqrt
    return FrechetResult(value=value, mean_term=mean_term, trace_term=trace_term, method=method, diagnostics=diag)


def _features64(x: Any, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape [N, dim], got {x.shape}")
    return x


def kid(
    feats1: Any, feats2: Any, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
    gamma: float | None = None, coef0: float = 1.0, seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel
    ``k(x, y) = (gamma x.y + coef0)^degree`` (gamma = 1/dim), averaged over random subsets (torch-fidelity defaults:
    100 subsets of 1000).  Returns ``{"kid_mean", "kid_std", "subsets", "subset_size"}``; deterministic in ``seed``.
    """
    x, y = _features64(feats1, "kid feats1"), _features64(feats2, "kid feats2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid: need at least 2 features on each side, got {x.shape[0]} and {y.shape[0]}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        kxx = (g * a @ a.T + coef0) ** degree
        kyy = (g * b @ b.T + coef0) ** degree
        kxy = (g * a @ b.T + coef0) ** degree
        vals[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2 * kxy.mean())
    return {"kid_mean": float(vals.mean()), "kid_std": float(vals.std()), "subsets": subsets, "subset_size": m}


def _kth_radius(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour within ``x`` (itself excluded)."""
    sq = np.sum(x**2, axis=1)
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], chunk):
        d2 = sq[s : s + chunk, None] + sq[None, :] - 2 * x[s : s + chunk] @ x.T
        out[s : s + chunk] = np.sqrt(np.maximum(np.partition(d2, k, axis=1)[:, k], 0.0))
    return out


def _coverage(query: np.ndarray, ref: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> float:
    """Fraction of ``query`` rows inside at least one ball (ref_j, radii_j)."""
    sq_r = np.sum(ref**2, axis=1)
    inside = 0
    for s in range(0, query.shape[0], chunk):
        q = query[s : s + chunk]
        d2 = np.sum(q**2, axis=1)[:, None] + sq_r[None, :] - 2 * q @ ref.T
        inside += int(np.any(np.sqrt(np.maximum(d2, 0.0)) <= radii[None, :], axis=1).sum())
    return inside / query.shape[0]


def precision_recall(real: Any, fake: Any, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the k-NN balls of each set approximate its
    manifold; precision = share of fake samples inside the real manifold, recall = share of real samples inside
    the fake manifold (k = 3 as in the paper).  O(N^2) memory-chunked; meant for up to ~10k features per side."""
    r, f = _features64(real, "precision_recall real"), _features64(fake, "precision_recall fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"precision_recall: feature dimensions differ ({r.shape[1]} vs {f.shape[1]})")
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"precision_recall: need more than k={k} features per side, got {r.shape[0]}, {f.shape[0]}")
    rr, rf = _kth_radius(r, k), _kth_radius(f, k)
    return {"precision": _coverage(f, r, rr), "recall": _coverage(r, f, rf), "k": k}


def fid_from_stats(a: Any, b: Any, **kw: Any) -> FrechetResult:
    """Frechet distance between two objects with ``mu`` and ``sigma`` (RunningStats, RefStats, dicts)."""
    get = lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k)  # noqa: E731
    return frechet_distance(get(a, "mu"), get(a, "sigma"), get(b, "mu"), get(b, "sigma"), **kw)
