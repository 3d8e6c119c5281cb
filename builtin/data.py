"""Fashion-MNIST IDX reader (the Debian ``dataset-fashion-mnist`` files, docs/TESTBEDS.md section 2).

The IDX format (LeCun et al.): big-endian magic ``0x0000 08 NN`` (``08`` = unsigned byte, ``NN`` = number of
dimensions), then ``NN`` big-endian uint32 sizes, then the raw uint8 data.  Files are gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import AdasdeError, UsageError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "ADASDE_FMNIST_DIR"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
_SIZES = {"train": 60000, "test": 10000}


class DatasetMissingError(AdasdeError, FileNotFoundError):
    """The Fashion-MNIST files are not installed; the message says how to install them."""


def fmnist_dir() -> Path:
    """The Fashion-MNIST folder: ``$ADASDE_FMNIST_DIR`` if set, else the Debian location."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _path(split: str, kind: str, root: str | os.PathLike | None) -> Path:
    if split not in _SIZES:
        raise UsageError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else fmnist_dir()
    path = folder / _FILES[(split, kind)]
    if not path.is_file():
        raise DatasetMissingError(
            f"Fashion-MNIST file {path} not found. Install the dataset with "
            f"'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or download the four IDX .gz files "
            f"({', '.join(_FILES.values())}) into a folder and set {ENV_VAR}=/that/folder."
        )
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one gzip-compressed (or plain) IDX file of unsigned bytes into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UsageError(f"{path}: cannot read IDX data ({exc}); the file is damaged, reinstall the dataset") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()!r}, expected 000008NN)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    n = int(np.prod(shape))
    if len(raw) - header != n:
        raise UsageError(f"{path}: IDX data has {len(raw) - header} bytes, header shape {shape} needs {n}; "
                         f"the file is truncated or damaged, reinstall the dataset")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fmnist_uint8(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` uint8 of the ``train`` (60k) or ``test`` (10k) split."""
    images = read_idx(_path(split, "images", root))
    labels = read_idx(_path(split, "labels", root))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise UsageError(f"Fashion-MNIST {split}: unexpected shapes images {images.shape}, labels {labels.shape}")
    return images, labels


def load_fmnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 1, 28, 28]`` float32 scaled to [-1, 1] (x / 127.5 - 1) and labels ``[N]`` int64."""
    images, labels = load_fmnist_uint8(split, root)
    x = torch.from_numpy(images).to(torch.float32).div_(127.5).sub_(1.0).unsqueeze(1)
    return x, torch.from_numpy(labels).to(torch.int64)
