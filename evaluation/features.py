"""Feature networks for Frechet distances, by name (docs/ALGORITHMS.md section 6; docs/EVALUATION.md section 2).

* ``inception``: the standard FID Inception-v3 (torch-fidelity's ``inception-v3-compat``: TF 2015-12-05 weights,
  TF1-exact bilinear resize to 299, ``(x - 128) / 128``, 2048-d pool3 features).  The weights are a file on disk,
  found in this order: the explicit ``weights=`` path, ``$ADASDE_INCEPTION_WEIGHTS``, then the torch hub cache
  ``$TORCH_HOME/hub/checkpoints/`` under torch-fidelity's or pytorch-fid's file name.  Nothing is downloaded unless
  ``allow_download=True`` (CLI ``--allow-download``).  Loaded with ``torch.load(weights_only=True)``.
* ``fmnist``: the builtin Fashion-MNIST classifier (``builtin/classifier.py``); its distance is reported as
  "FD-FMNIST", never as FID (not comparable with published numbers).

Every network takes images NCHW as uint8 [0, 255] or float in [0, 1].  Float images are first quantised to uint8
like the PNG files of the FID protocol (EDM: ``floor(255 x + 0.5)``), so scoring tensors and scoring saved PNGs give
the same features.  Grayscale images are repeated to 3 channels for Inception; RGB images are converted to luma
(ITU-R 601, as PIL's ``convert("L")``) for the 1-channel classifier.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdasdeError

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URLS = {
    INCEPTION_FILES[0]: "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    INCEPTION_FILES[1]: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
}
INCEPTION_ENV = "ADASDE_INCEPTION_WEIGHTS"
INCEPTION_SIZE_APPROX = "about 95.6 MB"


class FeatureNetError(AdasdeError, RuntimeError):
    """A feature network cannot be built (missing package or weights file); the message says how to fix it."""


# ------------------------------------------------------------------------------------------------- preprocessing
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """NCHW images, uint8 or float in [0, 1] -> uint8, quantised as PNG files are (``floor(255 x + 0.5)``)."""
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"expected an image tensor N x C x H x W, got {getattr(images, 'shape', type(images))}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -0.01 or hi > 1.01:
        raise ValueError(f"float images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; map model samples "
                         "with Denoiser.decode (x in [-1, 1] -> (x + 1) / 2) first")
    return (images.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat grayscale to 3 channels, or convert RGB to luma (ITU-R 601-2) for 1-channel networks."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if c == 4:
        images, c = images[:, :3], 3
        if channels == 3:
            return images
    if c == 3 and channels == 1:
        if images.dtype == torch.uint8:  # PIL's integer formula: L = (R*299 + G*587 + B*114 + 500) / 1000
            w = torch.tensor([299, 587, 114], dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
            return ((images.to(torch.int32) * w).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").to(
                torch.uint8)
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to the {channels} channels the feature network needs")


class FeatureNet(nn.Module):
    """Base class: ``forward(images) -> float32 [N, dim]`` for NCHW uint8 or float [0, 1] images.

    ``name`` is what reference files record (``inception-v3-compat``, ``fmnist-classifier``), ``metric`` how the
    distance is reported (``FID``, ``FD-FMNIST``), ``info`` extra provenance (weights file, sha256 ...).
    """

    name: str = "unknown"
    metric: str = "FD"
    dim: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def features_of_list(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features of a list of [C, H, W] images that may differ in size (grouped by shape, order kept)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        for idx in groups.values():
            feats = self(torch.stack([images[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return torch.stack(out) if out else torch.zeros(0, self.dim)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- inception
def inception_search_paths() -> list[Path]:
    """Where the Inception weights are looked for after the explicit path and ``$ADASDE_INCEPTION_WEIGHTS``."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / name for name in INCEPTION_FILES]


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use (explicit path, env var, hub cache), or None.  An explicit or env path that does not
    exist raises :class:`FeatureNetError` (a typo must not silently fall back)."""
    for label, p in (("weights path", weights), (f"${INCEPTION_ENV}", os.environ.get(INCEPTION_ENV) or None)):
        if p is not None:
            path = Path(p).expanduser()
            if not path.is_file():
                url = INCEPTION_URLS[INCEPTION_FILES[0]]
                raise FeatureNetError(f"Inception weights file {path} (from {label}) does not exist; place "
                                      f"{INCEPTION_FILES[0]} ({INCEPTION_SIZE_APPROX}, from {url}) there or fix the "
                                      "path")
            return path
    for path in inception_search_paths():
        if path.is_file():
            return path
    return None


def missing_inception_message() -> str:
    hub = inception_search_paths()[0]
    return (
        "FID needs the Inception-v3 weights file, which is not on this machine (adasde never downloads it "
        "behind your back).\n"
        f"  Download {INCEPTION_FILES[0]} ({INCEPTION_SIZE_APPROX}) yourself from\n"
        f"    {INCEPTION_URLS[INCEPTION_FILES[0]]}\n"
        f"  and place it at\n    {hub}\n"
        f"  (pytorch-fid's {INCEPTION_FILES[1]} from {INCEPTION_URLS[INCEPTION_FILES[1]]} works too, same folder),\n"
        f"  or point ${INCEPTION_ENV} / --inception-weights at the file,\n"
        "  or let adasde fetch it once with --allow-download (allow_download=True)."
    )


def download_inception(dest: Path | None = None) -> Path:
    """Download torch-fidelity's weights file into the hub cache (only on explicit request)."""
    dest = dest or inception_search_paths()[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = INCEPTION_URLS[INCEPTION_FILES[0]]
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as exc:  # noqa: BLE001 - network errors of many kinds
        raise FeatureNetError(f"downloading {url} to {dest} failed ({exc}).\n{missing_inception_message()}") from exc
    return dest


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for corrupt files
        raise FeatureNetError(
            f"{path} ({path.stat().st_size:,} bytes) is not a readable Inception state dict ({type(exc).__name__}: "
            f"{exc}). The real file is {INCEPTION_SIZE_APPROX}; a truncated or pickled-code file is refused. "
            f"Replace it with {INCEPTION_URLS[INCEPTION_FILES[0]]}") from exc
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise FeatureNetError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return sd


_BUILD_LOCK = threading.Lock()


class InceptionFeatures(FeatureNet):
    """FID Inception-v3 (torch-fidelity ``inception-v3-compat``, 2048-d), from a weights file on disk."""

    name = "inception-v3-compat"
    metric = "FID"
    dim = 2048

    def __init__(self, weights: str | os.PathLike | None = None, allow_download: bool = False) -> None:
        super().__init__()
        try:
            import torch_fidelity.feature_extractor_inceptionv3 as tfi
        except ImportError as exc:
            raise FeatureNetError(
                f"the 'inception' feature network needs torch-fidelity (and torchvision): pip install 'adasde[fid]' "
                f"(or pip install torch-fidelity) [{exc}]") from exc
        path = find_inception_weights(weights)
        if path is None:
            if not allow_download:
                raise FeatureNetError(missing_inception_message())
            path = download_inception()
        sd = _load_state_dict(path)
        # torch-fidelity would torch.load(weights_only=False) a path or download from a URL; hand it the state dict
        # we loaded safely instead (its module-level loader is swapped for the duration of the constructor).
        with _BUILD_LOCK:
            orig = tfi.load_state_dict_from_url
            tfi.load_state_dict_from_url = lambda *a, **k: sd
            try:
                self.net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            except RuntimeError as exc:
                raise FeatureNetError(f"{path}: not an FID Inception-v3 state dict ({exc}); use "
                                      f"{INCEPTION_URLS[INCEPTION_FILES[0]]}") from exc
            finally:
                tfi.load_state_dict_from_url = orig
        self.info = {"weights": str(path), "weights_bytes": path.stat().st_size, "implementation": "torch-fidelity"}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(to_uint8(images), 3).to(self.device)
        return self.net(x)[0].float()


# ------------------------------------------------------------------------------------------------------- fmnist
class FMNISTFeatures(FeatureNet):
    """Features of the builtin Fashion-MNIST classifier (``builtin.classifier.load_classifier().features``)."""

    name = "fmnist-classifier"
    metric = "FD-FMNIST"

    def __init__(self, weights: str | os.PathLike | None = None, allow_download: bool = False) -> None:
        super().__init__()
        try:
            from ..builtin.classifier import load_classifier
        except ImportError as exc:
            raise FeatureNetError(f"the 'fmnist' feature network needs adasde's builtin classifier "
                                  f"(builtin/classifier.py), which is missing from this installation [{exc}]") from exc
        from ..builtin.classifier import DEFAULT_CLASSIFIER, file_sha256

        kw = {"path": weights} if weights is not None else {}
        self.net = load_classifier(**kw).eval().requires_grad_(False)
        path = Path(weights) if weights is not None else Path(DEFAULT_CLASSIFIER)
        with torch.no_grad():
            self.dim = int(self.net.features(torch.zeros(1, 1, 28, 28, device=self.device)).reshape(1, -1).shape[1])
        self.info = {"implementation": "adasde.builtin.classifier", "weights": str(path),
                     "weights_sha256": file_sha256(path)}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_channels(to_uint8(images), 1)
        if tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"the fmnist feature network takes 28 x 28 images, got {tuple(x.shape[-2:])}")
        x = x.to(self.device, torch.float32) / 255.0
        return self.net.features(x).reshape(x.shape[0], -1).float()


# ----------------------------------------------------------------------------------------------------- registry
FeatureFactory = Callable[..., FeatureNet]
FEATURE_NETS: dict[str, FeatureFactory] = {"inception": InceptionFeatures, "fmnist": FMNISTFeatures}
ALIASES = {"inception-v3-compat": "inception", "fmnist-classifier": "fmnist"}


def register_feature_net(name: str, factory: FeatureFactory) -> None:
    """Add a feature network: ``factory(weights=None, allow_download=False) -> FeatureNet``."""
    FEATURE_NETS[name] = factory


def load_feature_net(
    name: str = "inception", device: torch.device | str | None = None, weights: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> FeatureNet:
    """Build feature network ``name`` (``inception`` | ``fmnist`` | registered) in eval mode on ``device``."""
    key = ALIASES.get(name, name)
    if key not in FEATURE_NETS:
        raise FeatureNetError(f"unknown feature network {name!r}; choose one of {', '.join(sorted(FEATURE_NETS))}")
    net = FEATURE_NETS[key](weights=weights, allow_download=allow_download)
    return net.to(device or "cpu").eval()

