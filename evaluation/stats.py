"""Streaming feature statistics: running mean and covariance in float64 (docs/ALGORITHMS.md section 6).

The FID protocol (EDM ``fid.py``) accumulates the mean and the unbiased (N - 1) covariance of the 2048-d Inception
features of all images in float64.  :class:`RunningStats` does the same without ever holding more than one batch:
it keeps ``(n, mean, M2)`` with ``M2 = sum_i (x_i - mean)(x_i - mean)^T`` and merges partial states with Chan et
al.'s parallel update

    delta = mean_b - mean_a,   n = n_a + n_b,   mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta delta^T n_a n_b / n,

so shards computed on different processes (``all_reduce``) or in different runs (``save`` / ``load``) combine into
the statistics of a single pass (equal up to float64 rounding, whatever the batch size).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_savez

STATE_FORMAT = "adasde-running-stats/1"


class RunningStats:
    """Mergeable running mean / covariance of ``dim``-dimensional features, accumulated in float64.

    ``update(features)`` takes an ``[N, dim]`` array or tensor; ``mu`` is the mean, ``sigma`` the unbiased covariance
    (N - 1, as ``np.cov``), ``n`` the number of rows seen.  ``merge``, ``all_reduce`` (torch.distributed) and
    ``save`` / ``load`` combine partial states.  ``meta`` is free JSON-able metadata kept with the state.
    """

    def __init__(self, dim: int, meta: dict[str, Any] | None = None) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"RunningStats: dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.n = 0
        self._mean = np.zeros(self.dim, dtype=np.float64)
        self._m2 = np.zeros((self.dim, self.dim), dtype=np.float64)
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------------------------------------- accumulate
    def update(self, features: np.ndarray | torch.Tensor) -> RunningStats:
        """Add a batch of feature rows ``[N, dim]`` (any float dtype; converted to float64)."""
        if torch.is_tensor(features):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"RunningStats.update: expected features of shape [N, {self.dim}], got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        if not np.isfinite(x).all():
            raise ValueError("RunningStats.update: features contain NaN or inf (check the images / feature network)")
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        self._combine(x.shape[0], mean_b, xc.T @ xc)
        return self

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.n
        n = n_a + n_b
        if n_b == 0:
            return
        if n_a == 0:
            self.n, self._mean, self._m2 = n_b, mean_b.astype(np.float64).copy(), m2_b.astype(np.float64).copy()
            return
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into ``self`` (Chan's parallel update); returns ``self``."""
        if not isinstance(other, RunningStats):
            raise TypeError(f"RunningStats.merge: expected RunningStats, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"RunningStats.merge: dimension mismatch ({self.dim} vs {other.dim})")
        self._combine(other.n, other._mean, other._m2)
        return self

    # -------------------------------------------------------------------------------------------------- results
    @property
    def mu(self) -> np.ndarray:
        """Mean of all rows seen (float64, shape [dim])."""
        if self.n == 0:
            raise ValueError("RunningStats.mu: no features have been added")
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divides by N - 1, like ``np.cov``), float64 [dim, dim]."""
        if self.n < 2:
            raise ValueError(f"RunningStats.sigma: need at least 2 feature rows, have {self.n}")
        s = self._m2 / (self.n - 1)
        return (s + s.T) / 2

    def __repr__(self) -> str:
        return f"RunningStats(dim={self.dim}, n={self.n})"

    # ------------------------------------------------------------------------------------------------ distributed
    def all_reduce(self, group: Any = None) -> RunningStats:
        """Merge the states of all ranks of a ``torch.distributed`` group, in rank order, on every rank.

        Each rank's ``(n, mean, M2)`` is all-gathered (float64; on the current CUDA device for NCCL, on the CPU for
        gloo) and folded in rank order, so every rank ends with the same bits.  A no-op when torch.distributed is
        not initialised.  Returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        if world == 1:
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        d = self.dim
        flat = np.concatenate([[float(self.n)], self._mean, self._m2.reshape(-1)])
        mine = torch.from_numpy(flat).to(device)
        bufs = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(bufs, mine, group=group)
        merged = RunningStats(d, meta=self.meta)
        for b in bufs:
            b = b.cpu().numpy()
            n_b = round(float(b[0]))
            merged._combine(n_b, b[1 : 1 + d], b[1 + d :].reshape(d, d))
        self.n, self._mean, self._m2 = merged.n, merged._mean, merged._m2
        return self

    # -------------------------------------------------------------------------------------------------- save/load
    def state_arrays(self, prefix: str = "rs_") -> dict[str, np.ndarray]:
        """The partial state as numpy arrays (for embedding in another .npz)."""
        meta = json.dumps({"format": STATE_FORMAT, "dim": self.dim, **{"meta": self.meta}})
        return {f"{prefix}n": np.array(self.n, dtype=np.int64), f"{prefix}mean": self._mean,
                f"{prefix}m2": self._m2, f"{prefix}meta": np.array(meta)}

    def save(self, path: str | os.PathLike, **extra: np.ndarray) -> Path:
        """Write the partial state (resumable, mergeable) atomically to an ``.npz``; ``extra`` arrays ride along."""
        return atomic_savez(path, **self.state_arrays(), **extra)

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "rs_", source: str = "<arrays>") -> RunningStats:
        """Rebuild from :meth:`state_arrays` output (or an opened npz)."""
        try:
            if any(np.asarray(arrays[f"{prefix}{k}"]).dtype.kind not in "fiu" for k in ("n", "mean", "m2")):
                raise ValueError("n/mean/m2 must be real numbers")
            info = json.loads(str(arrays[f"{prefix}meta"][()]))
            n = int(arrays[f"{prefix}n"][()])
            mean = np.asarray(arrays[f"{prefix}mean"], dtype=np.float64)
            m2 = np.asarray(arrays[f"{prefix}m2"], dtype=np.float64)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}: not a RunningStats state file (missing/invalid key: {exc}); it must be "
                             "written by RunningStats.save") from exc
        if info.get("format") != STATE_FORMAT:
            raise ValueError(f"{source}: unsupported state format {info.get('format')!r} (expected {STATE_FORMAT})")
        d = int(info["dim"])
        if mean.shape != (d,) or m2.shape != (d, d) or n < 0:
            raise ValueError(f"{source}: inconsistent RunningStats state (dim {d}, mean {mean.shape}, m2 {m2.shape})")
        rs = cls(d, meta=info.get("meta") or {})
        rs.n, rs._mean, rs._m2 = n, mean.copy(), m2.copy()
        return rs

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunningStats:
        """Read a state written by :meth:`save` (``allow_pickle=False``: never unpickles)."""
        from .reference import StatsFileError, read_npz

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: RunningStats state file not found")
        keys = ("rs_n", "rs_mean", "rs_m2", "rs_meta")
        z = read_npz(path, keys=keys, required=keys)
        try:
            return cls.from_arrays(z, source=str(path))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError) as exc:
            if isinstance(exc, StatsFileError):
                raise
            raise StatsFileError(f"{path}: not a valid RunningStats state ({type(exc).__name__}: "
                                 f"{(str(exc).splitlines() or [''])[0][:160]}); delete it to start over") from None
