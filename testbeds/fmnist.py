"""A Gaussian mixture fitted to Fashion-MNIST (docs/TESTBEDS.md sections 2, 1.3), low-rank + isotropic (PPCA).

Per class k (K = 10, class-conditional) on the 60k training images scaled to [-1, 1] (d = 784): mu_k = class mean,
eigen-decomposition of the class covariance, V_k = top ``rank`` eigenvectors, lam_k their eigenvalues, tau2_k = mean of
the remaining d - rank eigenvalues (the PPCA maximum-likelihood residual, which keeps tr Sigma_k) plus ``shrink``.
K = 1 fits one Gaussian to all images.  The fit is deterministic (float64 eigh) and cached as a float32 ``.npz`` in
``$ADASDE_CACHE`` (default ``~/.cache/adasde``).
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from .gmm import GaussianMixture

FMNIST_DIR = Path(os.environ.get("ADASDE_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$ADASDE_CACHE`` or ``~/.cache/adasde``."""
    return Path(os.environ.get("ADASDE_CACHE") or Path.home() / ".cache" / "adasde")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic 0x0000 + dtype byte (0x08 = uint8) + ndim, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (header {data[:4].hex()}); expected Fashion-MNIST IDX data")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} values) but holds {arr.size}; truncated?")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the Debian ``dataset-fashion-mnist`` IDX files."""
    root = Path(root) if root is not None else FMNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists() or not lab.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {img} / {lab} missing. Install it with `apt-get install dataset-fashion-mnist` "
            f"(or set ADASDE_FMNIST_DIR to a folder holding the IDX .gz files)."
        )
    x, y = read_idx(img), read_idx(lab)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{img} has {x.shape[0]} images but {lab} has {y.shape[0]} labels")
    return x, y


def fit_ppca_mixture(
    x: np.ndarray, labels: np.ndarray | None, rank: int, shrink: float = 1e-4,
) -> dict[str, np.ndarray]:
    """Per-label mean and rank-``rank`` PPCA covariance (module docstring) of rows ``x`` [n, d] in float64."""
    n, d = x.shape
    if not (1 <= rank < d):
        raise ValueError(f"rank must be in [1, {d - 1}], got {rank}")
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == k) for k in np.unique(labels)]
    out: dict[str, list] = {"weights": [], "means": [], "V": [], "lam": [], "tau2": []}
    for idx in groups:
        xs = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float64))
        mu = xs.mean(0)
        c = xs - mu
        cov = c.T @ c / len(idx)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 784 x 784 eigh is ~10x slower multi-threaded on a busy machine
        try:
            ev, vec = torch.linalg.eigh(cov)  # ascending
        finally:
            torch.set_num_threads(threads)
        ev, vec = ev.flip(0).numpy(), vec.flip(1).numpy()
        tau2 = max(float(ev[rank:].mean()), 0.0) + shrink
        vec = vec[:, :rank] * np.sign(vec[np.abs(vec[:, :rank]).argmax(0), np.arange(rank)])  # deterministic signs
        out["weights"].append(len(idx) / n)
        out["means"].append(mu.numpy())
        out["V"].append(vec)
        out["lam"].append(np.maximum(ev[:rank] + shrink, tau2))
        out["tau2"].append(tau2)
    return {k: np.asarray(v) for k, v in out.items()}


def fmnist_gmm(rank: int = 32, K: int = 10, shrink: float = 1e-4, dtype: torch.dtype = torch.float32,
               cache: bool = True, split: str = "train") -> GaussianMixture:
    """The Fashion-MNIST mixture (module docstring): K = 10 (class-conditional) or 1, rank-``rank`` + isotropic,
    d = 784, data in [-1, 1], fitted to ``split`` ("train": 60k images, "test": 10k).  Fitted once (5-30 s on 2 CPU
    cores) and cached as float32 ``fmnist_gmm_<split>_K{K}_r{rank}_s{shrink}_v1.npz``."""
    if K not in (1, 10):
        raise ValueError(f"fmnist_gmm supports K = 10 (one component per class) or K = 1, got K = {K}")
    path = cache_dir() / f"fmnist_gmm_{split}_K{K}_r{rank}_s{shrink:g}_v{CACHE_VERSION}.npz"
    params = None
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                params = {k: f[k] for k in ("weights", "means", "V", "lam", "tau2")}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cached mixture {path} is unreadable ({exc}); delete it to refit") from exc
    if params is None:
        x, y = load_fashion_mnist(split)
        x = x.reshape(len(x), -1).astype(np.float64) / 127.5 - 1.0
        params = fit_ppca_mixture(x, y if K == 10 else None, rank, shrink)
        params = {k: v.astype(np.float32) for k, v in params.items()}
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            os.close(fd)
            np.savez(tmp, **params)
            os.replace(tmp, path)
    # re-orthonormalise the float32 eigenvectors (QR keeps the span; eigenvalues unchanged up to float32 rounding)
    V = torch.linalg.qr(torch.from_numpy(params["V"]).double())[0]
    V = V * torch.sign((V * torch.from_numpy(params["V"]).double()).sum(1, keepdim=True))
    return GaussianMixture(params["weights"], torch.from_numpy(params["means"]), V, torch.from_numpy(params["lam"]),
                           torch.from_numpy(params["tau2"]), dtype=dtype)
