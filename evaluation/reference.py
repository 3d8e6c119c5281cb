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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdasdeError, UsageError
from ..fileio import atomic_savez

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
    def from_running(cls, rs: Any, **meta: Any) -> RefStats:
        return cls(mu=rs.mu, sigma=rs.sigma, meta={**rs.meta, "num_images": rs.n, **meta})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (recorded in FID results to identify the reference)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def save_stats(
    path: str | os.PathLike, stats: Any, layout: str = "edm", meta: dict[str, Any] | None = None
) -> Path:
    """Write ``mu``/``sigma`` of ``stats`` (a :class:`RefStats` or a ``stats.RunningStats`` accumulator) in one of
    :data:`LAYOUTS` plus ``adasde_meta`` (JSON), atomically."""
    if layout not in LAYOUTS:
        raise UsageError(f"save_stats: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_stats_dest(path)
    if not isinstance(stats, RefStats):  # a RunningStats accumulator
        stats = RefStats.from_running(stats)
    mu = np.asarray(stats.mu, dtype=np.float32 if layout == "torch-fidelity" else np.float64)
    sigma = np.asarray(stats.sigma, dtype=np.float64)
    info = {**stats.meta, **(meta or {})}
    info.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    info.update(layout=layout, dim=int(mu.shape[0]), dtype={"mu": str(mu.dtype), "sigma": str(sigma.dtype)})
    return atomic_savez(path, compressed=layout != "edm", mu=mu, sigma=sigma, **{META_KEY: np.array(json.dumps(info))})


_MAX_ARRAY_BYTES = 1 << 29  # 512 MiB: a 2048-d float64 covariance is 32 MiB; anything far larger is not ours
PSD_TOL = 1e-6  # relative tolerance of the symmetry / positive-semi-definiteness check


def read_npz(path: Path, keys: tuple[str, ...] = ("mu", "sigma", META_KEY),
             required: tuple[str, ...] = ("mu", "sigma")) -> dict[str, np.ndarray]:
    """``keys`` of an ``.npz`` (default ``mu``, ``sigma``, ``adasde_meta``), each size-checked before it is
    allocated; never unpickles.

    Any malformed input (not a zip, a broken member, a lying ``.npy`` header, object arrays) raises
    :class:`StatsFileError` with one line.
    """
    import zipfile

    fix = ("it must be an EDM / pytorch-fid style .npz with 'mu' and 'sigma' (rebuild it with `adasde fid ref`); "
           "pickled arrays are refused")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            missing = set(required) - set(members)
            if missing:
                raise StatsFileError(f"{path}: missing key(s) {sorted(missing)}; the .npz needs "
                                     f"{', '.join(map(repr, required))} (has {sorted(members)[:10]})")
            for key in keys:
                if key not in members:
                    continue
                with zf.open(members[key]) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    if dtype.hasobject:
                        raise StatsFileError(f"{path}: {key!r} is an object (pickled) array; {fix}")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if not 0 <= nbytes <= _MAX_ARRAY_BYTES:
                        raise StatsFileError(f"{path}: {key!r} declares {nbytes} bytes ({shape}), more than a "
                                             f"statistics file holds; {fix}")
                    raw = f.read(nbytes)
                    if len(raw) != nbytes:
                        raise StatsFileError(f"{path}: {key!r} is truncated ({len(raw)} of {nbytes} bytes); {fix}")
                    out[key] = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except StatsFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile / zlib / numpy header parsing raise many types on bad input
        why = (str(exc).splitlines() or [""])[0][:160]
        raise StatsFileError(f"{path}: cannot read as a statistics .npz ({type(exc).__name__}: {why}); {fix}") \
            from None
    return out


def _check_covariance(path: Path, sigma: np.ndarray) -> None:
    """Refuse a covariance that is not symmetric positive semi-definite within :data:`PSD_TOL` (relative)."""
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    if scale == 0.0:
        return
    if float(np.abs(sigma - sigma.T).max()) > PSD_TOL * scale:
        raise StatsFileError(f"{path}: the covariance 'sigma' is not symmetric (max |S - S^T| "
                             f"{float(np.abs(sigma - sigma.T).max()):.3g}); the file is corrupt, rebuild it with "
                             f"`adasde fid ref`")
    sym = (sigma + sigma.T) / 2
    try:
        np.linalg.cholesky(sym + PSD_TOL * scale * np.eye(sym.shape[0]))
    except np.linalg.LinAlgError:
        lo = float(np.linalg.eigvalsh(sym)[0])
        raise StatsFileError(f"{path}: the covariance 'sigma' is not positive semi-definite (smallest eigenvalue "
                             f"{lo:.3g}); the file is corrupt, rebuild it with `adasde fid ref`") from None


def load_stats(path: str | os.PathLike, feature_net: str | None = None) -> RefStats:
    """Read ``mu``/``sigma`` (+ ``adasde_meta``) from an ``.npz`` of any layout; never unpickles.

    Sizes are checked before allocation; ``sigma`` must be a symmetric positive semi-definite ``[d, d]`` matrix.
    ``feature_net``: if given and the file records a different network, raise :class:`StatsFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise StatsFileError(f"{path}: reference statistics file not found; create it with "
                             f"`adasde fid ref --data DIR --dest {path}`")
    z = read_npz(path)
    mu, sigma = z["mu"], z["sigma"]
    meta: Any = {}
    if META_KEY in z:
        try:
            meta = json.loads(str(z[META_KEY][()]))
        except (ValueError, IndexError, RecursionError):
            meta = None
        if not isinstance(meta, dict):
            raise StatsFileError(f"{path}: {META_KEY!r} is not a JSON object; rebuild the file with `adasde fid ref`")
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d) or d < 1:
        raise StatsFileError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected [d] and [d, d]")
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise StatsFileError(f"{path}: mu/sigma must be real numbers, got dtypes {mu.dtype} and {sigma.dtype}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsFileError(f"{path}: mu/sigma contain NaN or inf")
    _check_covariance(path, sigma)
    meta = dict(meta)
    if "feature_net" not in meta:
        meta["feature_net_assumed"] = True
        if d == 2048:
            meta["feature_net"] = "inception-v3-compat"
    ref = RefStats(mu=mu, sigma=sigma, meta=meta, path=str(path))
    if feature_net is not None:
        check_feature_net(ref, feature_net, dim=None)
    return ref


def recorded_weights_sha256(ref: RefStats) -> str | None:
    """The sha256 of the feature network's weights recorded in a statistics file, if any."""
    info = ref.meta.get("feature_info")
    sha = ref.meta.get("classifier_sha256") or (info.get("weights_sha256") if isinstance(info, dict) else None)
    return sha if isinstance(sha, str) else None


def check_feature_net(ref: RefStats, feature_net: str, dim: int | None = None,
                      weights_sha256: str | None = None) -> None:
    """Raise :class:`StatsFileError` if ``ref`` was computed with another feature network, dimension or weights.

    ``weights_sha256``: the sha256 of the weights of the network in use (``FeatureNet.info["weights_sha256"]``);
    compared with the one the file records (``classifier_sha256`` / ``feature_info.weights_sha256``) when both exist,
    because the same network name with retrained weights is another feature space (docs/ALGORITHMS.md section 6).
    """
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
    recorded = recorded_weights_sha256(ref)
    if weights_sha256 and recorded and recorded != weights_sha256:
        raise StatsFileError(
            f"{where}: computed with {feature_net!r} weights sha256 {recorded[:12]}... but the network in use has "
            f"weights {weights_sha256[:12]}... (retrained?); distances are meaningless. Restore the original weights "
            f"(reinstall adasde) or rebuild the statistics with `adasde fid ref`")


def check_stats_dest(path: str | os.PathLike) -> Path:
    """Validate an output statistics path before any work: it must end in ``.npz`` and be writable."""
    from ..fileio import check_writable

    p = Path(path)
    if p.suffix.lower() != ".npz":
        raise UsageError(f"statistics destination {p} must end in .npz (fid calc tells statistics from image "
                         f"archives by it); pass {p.with_name(p.name + '.npz')}")
    return check_writable(p, "statistics file")


def export_torch_fidelity_cache(ref: RefStats, path: str | os.PathLike) -> Path:
    """Write torch-fidelity's FID cache file (``{name}-inception-v3-compat-stat-fid-2048.pt``: a ``torch.save``'d dict
    of numpy ``mu`` float32 and ``sigma`` float64), atomically.  Reading it back requires unpickling, which this
    package never does; it is for handing statistics to torch-fidelity."""
    import torch

    from ..fileio import atomic_save

    obj = {"mu": np.asarray(ref.mu, dtype=np.float32), "sigma": np.asarray(ref.sigma, dtype=np.float64)}
    return atomic_save(path, lambda f: torch.save(obj, f))
