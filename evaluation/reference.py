"""Reference statistics files (docs/ALGORITHMS.md section 6; docs/EVALUATION.md section 1).

Layouts written by :func:`save_stats` (all keep the keys ``mu`` and ``sigma`` so EDM's ``fid.py``, pytorch-fid and
clean-fid read them unchanged):

* ``edm``: ``np.savez``, ``mu`` and ``sigma`` float64 (EDM ``fid.py ref``);
* ``pytorch-fid``: ``np.savez_compressed``, float64 (``python -m pytorch_fid --save-stats``);
* ``torch-fidelity``: ``np.savez_compressed`` with ``mu`` float32 and ``sigma`` float64 (torch-fidelity's dtypes;
  :func:`export_torch_fidelity_cache` writes its ``.pt`` cache file).

Our metadata (feature network, number of images, source, resolution, dtype, date, ...) is a JSON string in the extra
key ``adasde_meta``.  Files are read with ``allow_pickle=False``; files without metadata (EDM's published
``cifar10-32x32.npz``) are accepted and assumed to hold Inception features if their dimension is 2048.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdasdeError
from .stats import RunningStats, _atomic_savez

LAYOUTS = ("edm", "pytorch-fid", "torch-fidelity")
META_KEY = "adasde_meta"


class StatsFileError(AdasdeError, ValueError):
    """A reference statistics file is missing, malformed or does not match the feature network."""


@dataclass
class RefStats:
    """Feature statistics (``mu`` [dim], ``sigma`` [dim, dim]) with metadata; ``path`` is where it was read from."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def feature_net(self) -> str | None:
        """The feature network recorded in the file (None for files written by other tools)."""
        return self.meta.get("feature_net")

    @property
    def n(self) -> int | None:
        """Number of images the statistics were computed from, if recorded."""
        return self.meta.get("num_images", self.meta.get("n"))

    @classmethod
    def from_running(cls, rs: RunningStats, **meta: Any) -> RefStats:
        return cls(mu=rs.mu, sigma=rs.sigma, meta={**rs.meta, "num_images": rs.n, **meta})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (recorded in FID results to identify the reference)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def save_stats(
    path: str | os.PathLike, stats: RefStats | RunningStats, layout: str = "edm", meta: dict[str, Any] | None = None
) -> Path:
    """Write ``mu``/``sigma`` in one of :data:`LAYOUTS` plus ``adasde_meta`` (JSON), atomically."""
    if layout not in LAYOUTS:
        raise ValueError(f"save_stats: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if isinstance(stats, RunningStats):
        stats = RefStats.from_running(stats)
    mu = np.asarray(stats.mu, dtype=np.float32 if layout == "torch-fidelity" else np.float64)
    sigma = np.asarray(stats.sigma, dtype=np.float64)
    info = {**stats.meta, **(meta or {})}
    info.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    info.update(layout=layout, dim=int(mu.shape[0]), dtype={"mu": str(mu.dtype), "sigma": str(sigma.dtype)})
    return _atomic_savez(path, compressed=layout != "edm", mu=mu, sigma=sigma, **{META_KEY: np.array(json.dumps(info))})


def load_stats(path: str | os.PathLike, feature_net: str | None = None) -> RefStats:
    """Read ``mu``/``sigma`` (+ ``adasde_meta``) from an ``.npz`` of any layout; never unpickles.

    ``feature_net``: if given and the file records a different network, raise :class:`StatsFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise StatsFileError(f"{path}: reference statistics file not found; create it with "
                             "`adasde fid ref --data DIR --dest {path}`")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StatsFileError(f"{path}: cannot read as a statistics .npz ({exc}); it must be an EDM / pytorch-fid "
                             "style archive with 'mu' and 'sigma' (pickled files are refused)") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise StatsFileError(f"{path}: expected an .npz archive with keys 'mu' and 'sigma', got a single array")
    with z:
        missing = {"mu", "sigma"} - set(z.files)
        if missing:
            raise StatsFileError(f"{path}: missing key(s) {sorted(missing)}; a reference .npz needs 'mu' and "
                                 f"'sigma' (has {sorted(z.files)})")
        try:
            mu, sigma = np.asarray(z["mu"]), np.asarray(z["sigma"])
            meta = json.loads(str(z[META_KEY][()])) if META_KEY in z.files else {}
        except ValueError as exc:  # object arrays (pickles) or bad JSON
            raise StatsFileError(f"{path}: unreadable 'mu'/'sigma'/{META_KEY} ({exc}); pickled arrays are "
                                 "refused") from exc
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise StatsFileError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected [d] and [d, d]")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsFileError(f"{path}: mu/sigma contain NaN or inf")
    meta = dict(meta)
    if "feature_net" not in meta:
        meta["feature_net_assumed"] = True
        if d == 2048:
            meta["feature_net"] = "inception-v3-compat"
    ref = RefStats(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64), meta=meta, path=str(path))
    if feature_net is not None:
        check_feature_net(ref, feature_net, dim=None)
    return ref


def check_feature_net(ref: RefStats, feature_net: str, dim: int | None = None) -> None:
    """Raise :class:`StatsFileError` if ``ref`` was computed with another feature network (or dimension)."""
    where = ref.path or "reference statistics"
    have = ref.feature_net
    if have is not None and have != feature_net:
        raise StatsFileError(
            f"{where}: computed with feature network {have!r} but scoring uses {feature_net!r}; distances between "
            f"different feature spaces are meaningless. Use --net matching the file, or rebuild it with "
            f"`adasde fid ref --net ...`")
    if dim is not None and ref.dim != dim:
        raise StatsFileError(f"{where}: statistics have dimension {ref.dim} but feature network {feature_net!r} "
                             f"produces {dim}-d features; rebuild the reference with the same network")


def export_torch_fidelity_cache(ref: RefStats, path: str | os.PathLike) -> Path:
    """Write torch-fidelity's FID cache file (``{name}-inception-v3-compat-stat-fid-2048.pt``: a ``torch.save``'d dict
    of numpy ``mu`` float32 and ``sigma`` float64), atomically.  Reading it back requires unpickling, which this
    package never does; it is for handing statistics to torch-fidelity."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"mu": np.asarray(ref.mu, dtype=np.float32), "sigma": np.asarray(ref.sigma, dtype=np.float64)}, tmp)
    os.replace(tmp, path)
    return path
