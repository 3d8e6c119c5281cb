"""Headless scoring pipelines: statistics of image sources and FID of image folders
(docs/ALGORITHMS.md section 6, "Evaluation protocol"; EDM ``fid.py`` ``ref`` / ``calc``).  Generate-and-score
(``fid sample``) lives in ``generate/score.py``.

Multi-process: launched with ``torchrun``, each rank takes every ``world``-th image and the statistics are merged
with :meth:`RunningStats.all_reduce` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..runtime import rank_world
from .features import FeatureNet, FeatureNetError, load_feature_net
from .images import ImageReadError, iter_batches, iter_images
from .metrics import fid_from_stats, kid, precision_recall
from .reference import (
    RefStats,
    StatsFileError,
    check_feature_net,
    check_stats_dest,
    load_stats,
    save_stats,
    sha256_file,
)
from .stats import RunningStats

log = logging.getLogger("adasde")

FMNIST_SPLITS = ("train", "test")
BUILTIN_DATA = {f"builtin:fmnist-{s}": s for s in FMNIST_SPLITS}


# ------------------------------------------------------------------------------------------------------ helpers
def versions() -> dict[str, str]:
    import scipy

    from .._version import __version__

    v = {"adasde": __version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
         "python": platform.python_version()}
    try:  # metadata only: importing torch_fidelity pulls in torchvision (seconds)
        v["torch_fidelity"] = importlib.metadata.version("torch-fidelity")
    except importlib.metadata.PackageNotFoundError:
        pass
    return v


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _net_meta(net: FeatureNet) -> dict[str, Any]:
    return {"feature_net": net.name, "metric": net.metric, "feature_dim": net.dim, "feature_info": dict(net.info)}


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write (:func:`fileio.atomic_write_text`)."""
    from ..fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------- image sources
def iter_source(
    source: str | os.PathLike, on_error: str = "fail", rank: int = 0, world: int = 1,
    skipped: list[str] | None = None, max_images: int | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Images of a folder, a zip, an ``.npz`` with a uint8 image array (NHWC or NCHW, key ``images``/``x``/``arr_0``)
    or ``builtin:fmnist-train`` / ``builtin:fmnist-test``, as ``(name, uint8 [C, H, W])``."""
    src = str(source)
    if src in BUILTIN_DATA:
        from ..builtin.data import load_fmnist_uint8

        arr = load_fmnist_uint8(BUILTIN_DATA[src])[0][:, None]
    elif src.endswith(".npz") and Path(src).is_file():
        with np.load(src, allow_pickle=False) as z:
            key = next((k for k in ("images", "x", "arr_0") if k in z.files), None)
            if key is None:
                raise ImageReadError(f"{src}: no image array (keys 'images', 'x' or 'arr_0'); has {sorted(z.files)}. "
                                 "Statistics files (mu/sigma) are converted by `adasde fid ref`, not read as images")
            arr = np.asarray(z[key])
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
            raise ImageReadError(f"{src}:{key}: expected uint8 images [N, H, W(, C)] or [N, C, H, W], got {arr.dtype} "
                             f"{arr.shape}")
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
            arr = arr.transpose(0, 3, 1, 2)
    else:
        yield from iter_images(src, on_error=on_error, rank=rank, world=world, skipped=skipped, max_images=max_images)
        return
    if max_images is not None:
        arr = arr[:max_images]
    for i in range(rank, arr.shape[0], world):
        yield f"{i:06d}", torch.from_numpy(np.ascontiguousarray(arr[i]))


def check_source(source: str | os.PathLike, what: str = "--data") -> None:
    """Refuse a missing image source before any network is loaded."""
    src = str(source)
    if src not in BUILTIN_DATA and not Path(src).exists():
        raise ImageReadError(f"{what} {src}: no such folder, zip or .npz of images (or builtin:fmnist-train|test)")


def check_net_name(net: str) -> None:
    """Refuse an unknown feature network name before any work."""
    from .features import ALIASES, FEATURE_NETS

    if ALIASES.get(net, net) not in FEATURE_NETS:
        raise FeatureNetError(f"--net {net!r} is not a known feature network; choose one of "
                              f"{', '.join(sorted(FEATURE_NETS))}")


def stats_of_source(
    source: str | os.PathLike, net: FeatureNet, batch: int = 64, on_error: str = "fail",
    keep_features: int = 0, max_images: int | None = None, progress: bool = True,
) -> tuple[RunningStats, np.ndarray | None, list[str]]:
    """Streaming feature statistics of an image source (all ranks merged).

    Returns ``(stats, features, skipped)``: ``features`` holds the first ``keep_features`` feature rows of this rank
    (for KID / precision-recall) or None, ``skipped`` the files skipped with ``on_error="skip"``.
    """
    rank, world = rank_world()
    rs = RunningStats(net.dim, meta={**_net_meta(net), "source": str(source)})
    kept: list[np.ndarray] = []
    n_kept = 0
    skipped: list[str] = []
    items = iter_source(source, on_error=on_error, rank=rank, world=world, skipped=skipped, max_images=max_images)
    with tqdm(desc=f"features {Path(str(source)).name}", unit="img", disable=not progress or rank != 0) as bar:
        for _, imgs in iter_batches(items, batch):
            feats = net.features_of_list(imgs)
            rs.update(feats)
            if n_kept < keep_features:
                kept.append(feats[: keep_features - n_kept].cpu().numpy())
                n_kept += kept[-1].shape[0]
            bar.update(len(imgs))
    rs.all_reduce()
    if rs.n == 0:
        raise ImageReadError(f"{source}: no readable images found")
    if skipped:
        log.warning("%d file(s) skipped in %s", len(skipped), source)
    rs.meta["num_images"] = rs.n
    return rs, (np.concatenate(kept) if kept else None), skipped


def compute_reference(
    data: str | os.PathLike, dest: str | os.PathLike, net: str = "inception", layout: str = "edm",
    batch: int = 64, device: str | torch.device | None = None, weights: str | None = None,
    allow_download: bool = False, on_error: str = "fail", max_images: int | None = None, progress: bool = True,
) -> RefStats:
    """``adasde fid ref``: statistics of a dataset (folder, zip, image .npz, builtin:fmnist-*) written to ``dest``.

    An existing statistics ``.npz`` (``mu``/``sigma``) as ``data`` is re-saved in ``layout`` with our metadata (its
    feature network is taken from the file or from ``net``).
    """
    check_stats_dest(dest)
    rank, _ = rank_world()
    check_source(data)
    if str(data).endswith(".npz") and Path(data).is_file():
        with np.load(data, allow_pickle=False) as z:
            is_stats = {"mu", "sigma"} <= set(z.files)
        if is_stats:
            ref = load_stats(data)
            feature_net = ref.meta.get("feature_net") if not ref.meta.get("feature_net_assumed") else None
            feature_net = feature_net or _net_name(net)
            meta = {**ref.meta, "feature_net": feature_net, "source": str(data), "converted_from": sha256_file(data)}
            meta.pop("feature_net_assumed", None)
            out = RefStats(ref.mu, ref.sigma, meta=meta)
            if rank == 0:
                save_stats(dest, out, layout=layout)
            return out
    check_net_name(net)
    fnet = load_feature_net(net, device=device, weights=weights, allow_download=allow_download)
    rs, _, skipped = stats_of_source(data, fnet, batch=batch, on_error=on_error, max_images=max_images,
                                     progress=progress)
    res = _resolution(data)
    ref = RefStats.from_running(rs, source=str(data), resolution=res, skipped=len(skipped), date=_now(),
                                versions=versions())
    if rank == 0:
        save_stats(dest, ref, layout=layout)
    return ref


def _net_name(net: str) -> str:
    return {"inception": "inception-v3-compat", "fmnist": "fmnist-classifier"}.get(net, net)


def _resolution(data: Any) -> list[int] | None:
    try:
        _, img = next(iter_source(data, on_error="skip", max_images=64))
        return [int(v) for v in img.shape]
    except (StopIteration, ValueError, OSError):
        return None


def score_images(
    images: str | os.PathLike, ref: str | os.PathLike, net: str | None = None, batch: int = 64,
    device: str | torch.device | None = None, weights: str | None = None, allow_download: bool = False,
    on_error: str = "fail", kid_pr: bool = False, max_images: int | None = None, max_features: int = 10000,
    progress: bool = True,
) -> dict[str, Any]:
    """``adasde fid calc``: FID (or FD-<net>) of an image source against reference statistics (an ``.npz``) or
    against another image source (then KID and precision/recall are available with ``kid_pr=True``)."""
    check_source(images, "--images")
    if not (str(ref).endswith(".npz") or Path(ref).exists()):
        check_source(ref, "--ref")
    ref_is_stats = str(ref).endswith(".npz") and (_is_stats_file(ref) or not Path(ref).is_file())
    ref_stats = load_stats(ref) if ref_is_stats else None
    if net is None:
        net = (ref_stats.feature_net if ref_stats is not None else None) or "inception"
    check_net_name(net)
    if ref_stats is not None:  # refuse a mismatch before loading a (possibly large) network
        check_feature_net(ref_stats, _net_name(net))
    fnet = load_feature_net(net, device=device, weights=weights, allow_download=allow_download)
    if ref_stats is not None:
        check_feature_net(ref_stats, fnet.name, dim=fnet.dim, weights_sha256=fnet.info.get("weights_sha256"))
    keep = max_features if kid_pr else 0
    rs, feats, skipped = stats_of_source(images, fnet, batch=batch, on_error=on_error, keep_features=keep,
                                         max_images=max_images, progress=progress)
    result: dict[str, Any] = {}
    if ref_stats is None:
        rs_ref, feats_ref, _ = stats_of_source(ref, fnet, batch=batch, on_error=on_error, keep_features=keep,
                                               progress=progress)
        ref_stats = RefStats.from_running(rs_ref, source=str(ref))
        if kid_pr and feats is not None and feats_ref is not None:
            result["kid"] = kid(feats, feats_ref, subset_size=min(1000, len(feats), len(feats_ref)))
            result["precision_recall"] = precision_recall(feats_ref, feats)
    elif kid_pr:
        result["kid_note"] = "KID / precision-recall need features on both sides; pass an image folder as --ref"
    fd = fid_from_stats(rs, ref_stats)
    result.update({
        "metric": fnet.metric, "value": fd.value, "frechet": fd.as_dict(), "num_images": rs.n,
        "skipped": skipped, "images": str(images), "reference": _ref_info(ref, ref_stats),
        **_net_meta(fnet), "date": _now(), "versions": versions(),
    })
    return result


def _is_stats_file(path: Any) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"mu", "sigma"} <= set(getattr(z, "files", ()))
    except (OSError, ValueError):
        return False


def _ref_info(path: Any, ref: RefStats) -> dict[str, Any]:
    info = {"path": str(path), "num_images": ref.n, "meta": {k: v for k, v in ref.meta.items() if k != "versions"}}
    if Path(str(path)).is_file():
        info["sha256"] = sha256_file(path)
    return info


# ------------------------------------------------------------------------------------------ FD-FMNIST references
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("ADASDE_CACHE", os.path.join(base, "adasde")))


def fd_fmnist_reference(split: str = "test", device: str | torch.device | None = None,
                        progress: bool = False) -> RefStats:
    """FD-FMNIST reference statistics of the Fashion-MNIST ``train`` or ``test`` split.

    Uses the shipped file ``builtin/stats/fmnist_<split>.npz`` when present, else computes it once from the dataset
    (``builtin.data``) and caches it under ``$ADASDE_CACHE`` (default ``~/.cache/adasde``), keyed by the classifier
    weights' sha256.
    """
    if split not in FMNIST_SPLITS:
        raise UsageError(f"Fashion-MNIST split must be one of {FMNIST_SPLITS}, got {split!r}")
    from ..builtin import classifier as clf

    shipped = Path(clf.STATS_DIR) / f"fmnist_{split}.npz"
    weights = Path(clf.DEFAULT_CLASSIFIER)
    sha = sha256_file(weights) if weights.is_file() else None
    if shipped.is_file():
        ref = load_stats(shipped, feature_net=clf.FEATURE_NET)
        recorded = ref.meta.get("classifier_sha256")
        if sha and recorded and recorded != sha:
            raise StatsFileError(
                f"{shipped}: computed with the classifier of sha256 {recorded[:12]}... but {weights} has "
                f"{sha[:12]}... (retrained?); FD-FMNIST values would not be comparable. Restore the shipped "
                f"classifier (reinstall adasde) or rebuild the statistics with `adasde train-builtin --model stats`")
        return ref
    tag = sha[:12] if sha else "missing"
    cached = _cache_dir() / "stats" / f"fmnist-classifier-{tag}-{split}.npz"
    if cached.is_file():
        return load_stats(cached, feature_net=clf.FEATURE_NET)
    return compute_reference(f"builtin:fmnist-{split}", cached, net="fmnist", layout="pytorch-fid", batch=500,
                             device=device, progress=progress)
