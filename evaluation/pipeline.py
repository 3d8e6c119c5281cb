"""Headless scoring pipelines: statistics of image sources, FID of image folders, and generate-and-score in one
stream (ALGORITHMS.md section 6, "Evaluation protocol"; EDM ``fid.py`` ``ref`` / ``calc``).

Multi-process: launched with ``torchrun``, each rank takes every ``world``-th image / seed and the statistics are
merged with :meth:`RunningStats.all_reduce` (gloo on CPU, NCCL on GPUs).  ``sample_and_score`` draws the initial
noise of every seed on its own (``x_T = sigma_max * randn(Generator(seed))``, ``samplers.presets.initial_noise``) and
passes per-sample seeds to the sampler, so the images do not depend on the batch size or the number of processes.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import FeatureNet, load_feature_net, to_uint8
from .images import iter_batches, iter_images, save_png
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
from .stats import RunningStats, _atomic_savez

log = logging.getLogger("adasde")

FMNIST_SPLITS = ("train", "test")
BUILTIN_DATA = {f"builtin:fmnist-{s}": s for s in FMNIST_SPLITS}


# ------------------------------------------------------------------------------------------------------ helpers
def parse_seeds(spec: str | Sequence[int]) -> list[int]:
    """``"0-49999"``, ``"0,3,10-12"`` or a list -> list of ints (EDM's ``--seeds`` syntax, ranges inclusive)."""
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"seed range {part!r} is empty (end < start)")
            out.extend(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ValueError(f"cannot parse seeds {spec!r} at {part!r}; use e.g. 0-49999 or 0,5,10-19")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds {spec!r} contain duplicates")
    return out


def dist_info() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, NCCL with CUDA); (rank, world)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist_info()


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
                raise ValueError(f"{src}: no image array (keys 'images', 'x' or 'arr_0'); has {sorted(z.files)}. "
                                 "Statistics files (mu/sigma) are converted by `adasde fid ref`, not read as images")
            arr = np.asarray(z[key])
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
            raise ValueError(f"{src}:{key}: expected uint8 images [N, H, W(, C)] or [N, C, H, W], got {arr.dtype} "
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


def stats_of_source(
    source: str | os.PathLike, net: FeatureNet, batch: int = 64, on_error: str = "fail",
    keep_features: int = 0, max_images: int | None = None, progress: bool = True,
) -> tuple[RunningStats, np.ndarray | None, list[str]]:
    """Streaming feature statistics of an image source (all ranks merged).

    Returns ``(stats, features, skipped)``: ``features`` holds the first ``keep_features`` feature rows of this rank
    (for KID / precision-recall) or None, ``skipped`` the files skipped with ``on_error="skip"``.
    """
    rank, world = dist_info()
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
        raise ValueError(f"{source}: no readable images found")
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
    rank, _ = dist_info()
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
    ref_is_stats = str(ref).endswith(".npz") and _is_stats_file(ref)
    ref_stats = load_stats(ref) if ref_is_stats else None
    if net is None:
        net = (ref_stats.feature_net if ref_stats is not None else None) or "inception"
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


# ------------------------------------------------------------------------------------------ generate and score
def resolve_sampler(name: str) -> Any:
    """Sampler function ``name`` from ``samplers.SAMPLERS`` (or ``samplers.sample_<name>``)."""
    from .. import samplers

    table = getattr(samplers, "SAMPLERS", None) or {}
    fn = table.get(name) if isinstance(table, dict) else None
    fn = fn or getattr(samplers, f"sample_{name}", None)
    if fn is None:
        known = sorted(table) if isinstance(table, dict) and table else ["adasde"]
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(known)}")
    return fn


def sampler_setup(
    model: Any, sampler: str, coeffs: str | os.PathLike | None = None, nfe: int | None = None,
    steps: int | None = None, schedule: str | None = None, rho: float | None = None,
) -> tuple[Any, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """(sampler fn, sigma grid, sampler options, protocol fields) for ``fid sample``.

    ``coeffs``: a coefficient file (its grid and AFS are used; the NFE is the file's).  Else ``nfe`` uses the paper
    presets (``samplers.presets.preset``), or ``steps`` grid points of ``schedule`` (default: the paper's schedule
    for the sampler).
    """
    from ..samplers.presets import PAPER_SCHEDULES, preset
    from ..samplers.schedules import get_sigmas

    fn = resolve_sampler(sampler)
    proto: dict[str, Any] = {"sampler": sampler}
    options: dict[str, Any] = {}
    if coeffs is not None:
        from ..coefficients import load as load_coefficients

        c = load_coefficients(coeffs)
        sigmas = c.sigmas.to(torch.float32)
        options["coeffs"] = c
        if getattr(c, "afs", None) is not None and sampler in ("adasde", "amed"):
            options["afs"] = bool(c.afs)
        if sampler == "amed" and getattr(c, "predictor", None):
            options["features"] = model.bottleneck
        if nfe is not None and nfe != c.nfe:
            raise ValueError(f"{coeffs}: coefficients were trained for NFE {c.nfe}, but --nfe {nfe} was asked")
        proto.update(coeffs=str(coeffs), coeffs_sha256=sha256_file(coeffs), nfe=int(c.nfe), schedule=c.schedule)
    elif nfe is not None:
        sched = (schedule, rho if rho is not None else 1.0) if schedule else None
        sigmas, options = preset(sampler, int(nfe), model.sigma_min, model.sigma_max,
                                 model_sigmas=getattr(model, "model_sigmas", None), schedule=sched)
        proto.update(nfe=int(nfe), schedule=list(sched or PAPER_SCHEDULES.get(sampler, ("polynomial", 7.0))))
    elif steps is not None:
        kind, r = (schedule, rho) if schedule else PAPER_SCHEDULES.get(sampler, ("polynomial", 7.0))
        sigmas = get_sigmas(kind, int(steps), model.sigma_min, model.sigma_max, rho=r,
                            model_sigmas=getattr(model, "model_sigmas", None))
        proto.update(steps=int(steps), schedule=[kind, r])
    else:
        raise ValueError("fid sample needs --coeffs FILE, --nfe K or --steps N")
    try:
        from ..samplers import nfe as count_nfe

        proto["nfe"] = int(count_nfe(sampler, sigmas, **options))  # exact model calls per sample
    except (ImportError, ValueError, TypeError) as exc:  # custom sampler outside the registry
        proto.setdefault("nfe", None)
        proto["nfe_note"] = f"not counted ({exc})"
    if nfe is not None and proto["nfe"] not in (None, int(nfe)):
        raise ValueError(f"sampler {sampler!r} on this grid makes {proto['nfe']} model calls, not --nfe {nfe}")
    proto["sigmas"] = [float(s) for s in sigmas]
    proto["options"] = {k: v for k, v in options.items() if isinstance(v, (bool, int, float, str))}
    return fn, sigmas, options, proto


def _state_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    p = Path(path)
    return p if world == 1 else p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix or '.npz'}")


def sample_and_score(
    model: str, sampler: str, seeds: str | Sequence[int], ref: str | os.PathLike, coeffs: str | None = None,
    nfe: int | None = None, steps: int | None = None, schedule: str | None = None, rho: float | None = None,
    batch: int = 64, net: str | None = None, device: str | torch.device | None = None, weights: str | None = None,
    allow_download: bool = False, out_images: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
    checkpoint_every: float = 300.0, progress: bool = True, model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``adasde fid sample``: generate the images of ``seeds`` with ``sampler`` and score them in one stream.

    Each rank (torchrun) takes every ``world``-th seed; ``resume`` names a state file (one per rank when several)
    saved atomically every ``checkpoint_every`` seconds and at the end; a rerun with the same arguments continues
    where it stopped.  Returns the result dict (value + full protocol); only rank 0's matters.
    """
    from ..loaders import load_model

    rank, world = dist_info()
    seed_list = parse_seeds(seeds)
    ref_stats = load_stats(ref)
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    net = net or ref_stats.feature_net or "inception"
    check_feature_net(ref_stats, _net_name(net))
    fnet = load_feature_net(net, device=dev, weights=weights, allow_download=allow_download)
    check_feature_net(ref_stats, fnet.name, dim=fnet.dim, weights_sha256=fnet.info.get("weights_sha256"))
    den = load_model(model, device=dev, **(model_kwargs or {}))
    fn, sigmas, options, proto = sampler_setup(den, sampler, coeffs=coeffs, nfe=nfe, steps=steps,
                                               schedule=schedule, rho=rho)
    sigmas = sigmas.to(dev)
    protocol = {"model": model, **proto, "seeds": seeds if isinstance(seeds, str) else f"{len(seed_list)} seeds",
                "num_seeds": len(seed_list), "feature_net": fnet.name, "feature_info": fnet.info,
                "initial_noise": "x_T = sigma_max * randn(torch.Generator().manual_seed(seed)), per seed"}
    key = json.dumps({k: protocol[k] for k in ("model", "sampler", "sigmas", "seeds", "feature_net")} |
                     {"ref": sha256_file(ref), "options": proto["options"]}, sort_keys=True, default=str)
    shard = seed_list[rank::world]
    rs = RunningStats(fnet.dim, meta=_net_meta(fnet))
    done = 0
    state = _state_path(resume, rank, world) if resume else None
    if state is not None and state.is_file():
        with np.load(state, allow_pickle=False) as z:
            saved = json.loads(str(z["progress"][()]))
            if saved.get("key") != key:
                raise ValueError(f"{state}: resume state belongs to another run (different model/sampler/grid/"
                                 "seeds/feature network/reference); delete it or choose another --resume file")
            rs = RunningStats.from_arrays(z, source=str(state))
            done = int(saved["done"])
        log.info("resuming %s at %d/%d seeds", state, done, len(shard))

    def save_state() -> None:
        if state is not None:
            _atomic_savez(state, **rs.state_arrays(), progress=np.array(json.dumps({"key": key, "done": done})))

    t0, last = time.time(), time.time()
    with tqdm(total=len(shard), initial=done, desc=f"fid sample {sampler}", unit="img",
              disable=not progress or rank != 0) as bar:
        from ..samplers.presets import initial_noise

        for i in range(done, len(shard), batch):
            s = shard[i : i + batch]
            x = initial_noise(s, den.sample_shape, den.sigma_max, device=dev)
            with torch.no_grad():
                y = fn(den, x, sigmas, extra_args={"seed": s}, disable=True, **options)
                imgs = to_uint8(den.decode(y).float().clamp(0, 1))
            rs.update(fnet(imgs))
            if out_images is not None:
                for seed, img in zip(s, imgs.cpu()):
                    save_png(img, Path(out_images) / f"{seed:06d}.png")
            done = i + len(s)
            bar.update(len(s))
            if state is not None and time.time() - last >= checkpoint_every:
                save_state()
                last = time.time()
    save_state()
    rs.all_reduce()
    fd = fid_from_stats(rs, ref_stats)
    return {"metric": fnet.metric, "value": fd.value, "frechet": fd.as_dict(), "num_images": rs.n,
            "protocol": {**protocol, "reference": _ref_info(ref, ref_stats), "batch": batch, "world_size": world,
                         "device": str(dev), "out_images": str(out_images) if out_images else None},
            "date": _now(), "seconds": round(time.time() - t0, 3), "versions": versions()}


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
        raise ValueError(f"Fashion-MNIST split must be one of {FMNIST_SPLITS}, got {split!r}")
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
