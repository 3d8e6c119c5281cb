"""The FD-FMNIST feature network: a small Fashion-MNIST CNN classifier (docs/TESTBEDS.md section 3.2) and its reference
statistics.

``FMNISTClassifier`` takes images as float tensors in [0, 1] of shape ``[N, 1, 28, 28]``:

* ``forward(images) -> logits [N, 10]`` (class order :data:`builtin.data.CLASSES`);
* ``features(images) -> [N, 128]``: the penultimate layer *before* its ReLU (fc1 pre-activation; pre-activations
  are closer to Gaussian than the sparse post-ReLU values, which suits the Frechet distance).

FD-FMNIST is the Frechet distance (Heusel et al. 2017, eq. in section 3: |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2))
between Gaussians fitted to these features.  It is NOT comparable to Inception FIDs in the literature.  Reference
statistics of the train (60k) and test (10k) splits are shipped as ``builtin/stats/fmnist_{train,test}.npz`` in the
EDM layout (``mu``, ``sigma`` float64) plus ``adasde_meta`` (0-d string array with JSON).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..loaders.checkpoint import load_checked
from .loader import WEIGHTS_DIR, read_weights

HERE = Path(__file__).resolve().parent
DEFAULT_CLASSIFIER = WEIGHTS_DIR / "fmnist_classifier.safetensors"
STATS_DIR = HERE / "stats"
CLASSIFIER_FORMAT = "adasde-builtin-classifier"
FEATURE_NET = "fmnist-classifier"
FEATURE_DIM = 128
_MEAN, _STD = 0.2860, 0.3530  # Fashion-MNIST train pixel mean/std in [0, 1]
_FIX = ("reinstall adasde (pip install --force-reinstall adasde) or retrain it with "
        "'adasde train-builtin --model classifier'")


class FMNISTClassifier(nn.Module):
    """conv3x3(32)-BN-ReLU-pool, conv3x3(64)-BN-ReLU-pool, conv3x3(128)-BN-ReLU-pool(7->3), fc 1152->128, fc 128->10.

    About 0.24 M parameters, 7.6 M multiply-adds per image.  Inputs: [N, 1, 28, 28] in [0, 1].
    """

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 3 * 3, FEATURE_DIM)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"FMNIST classifier expects images [N, 1, 28, 28] in [0, 1], got {tuple(images.shape)}")
        w = self.conv1.weight
        return (images.to(device=w.device, dtype=w.dtype) - _MEAN) / _STD

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, 128]`` (fc1 pre-activation) of images in [0, 1]."""
        h = self._check(images)
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(h))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)
        return self.fc1(h.flatten(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]`` of images in [0, 1]."""
        return self.fc2(self.dropout(F.relu(self.features(images))))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_classifier(device: torch.device | str | None = None,
                    path: str | os.PathLike | None = None) -> FMNISTClassifier:
    """The shipped FD-FMNIST classifier in eval mode without gradients (safetensors only; no code executed)."""
    path = Path(path) if path is not None else DEFAULT_CLASSIFIER
    tensors, meta = read_weights(path, CLASSIFIER_FORMAT, _FIX)
    model = FMNISTClassifier()
    load_checked(model, tensors, f"weights file {path}", "classifier architecture", _FIX, True)
    model.meta = meta  # type: ignore[attr-defined]
    model.eval().requires_grad_(False)
    return model.to(device or "cpu")


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images01: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on images in [0, 1]."""
    model.eval()
    correct = 0
    for i in range(0, images01.shape[0], batch):
        correct += int((model(images01[i:i + batch]).argmax(1).cpu() == labels[i:i + batch]).sum())
    return correct / images01.shape[0]


def cosine_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, step: int, total: int, run: float,
                bar: Any) -> float:
    """One optimiser step at the cosine-annealed learning rate ``lr (1 + cos(pi step / total)) / 2``; returns the
    running loss (shown on ``bar`` every 20 steps)."""
    for group in opt.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    run = 0.98 * run + 0.02 * float(loss.detach()) if step else float(loss.detach())
    if step % 20 == 0:
        bar.set_postfix(loss=f"{run:.3f}")
    return run


def train_classifier(out: str | os.PathLike | None = None, seed: int = 0, epochs: float = 4.0, batch: int = 128,
                     lr: float = 2e-3, threads: int | None = None, progress: bool = True,
                     limit: int | None = None) -> dict[str, Any]:
    """Train the classifier deterministically (Adam, cosine learning-rate decay, fixed seed) on the 60k train split,
    report test accuracy and write ``out`` (fp32 safetensors, atomic).  ``limit``: train on the first N images."""
    from .data import load_fmnist_uint8
    from .train import _atomic_save, machine_info

    if threads:
        torch.set_num_threads(threads)
    xtr, ytr = load_fmnist_uint8("train")
    xte, yte = load_fmnist_uint8("test")
    to01 = lambda a: torch.from_numpy(a).float().div_(255).unsqueeze(1)
    xtr_t, ytr_t = to01(xtr), torch.from_numpy(ytr).long()
    if limit:
        xtr_t, ytr_t = xtr_t[:limit], ytr_t[:limit]
    xte_t, yte_t = to01(xte), torch.from_numpy(yte).long()
    torch.manual_seed(seed)
    model = FMNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = xtr_t.shape[0]
    per_epoch = n // batch
    total = max(1, int(round(epochs * per_epoch)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    perm = torch.randperm(n, generator=g)
    bar = tqdm(range(total), desc="classifier", disable=not progress, dynamic_ncols=True)
    run = 0.0
    for step in bar:
        k = step % per_epoch
        if k == 0 and step > 0:
            perm = torch.randperm(n, generator=g)
        idx = perm[k * batch:(k + 1) * batch]
        run = cosine_step(opt, F.cross_entropy(model(xtr_t[idx]), ytr_t[idx]), lr, step, total, run, bar)
    bar.close()
    model.eval()
    acc = accuracy(model, xte_t, yte_t)
    summary = {
        "test_accuracy": acc, "steps": total, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
        "train_seconds": time.time() - t0, "machine": machine_info(), "train_images": n,
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": "float images [N,1,28,28] in [0,1]", "features": "fc1 pre-activation, 128-d",
    }
    if out is not None:
        meta = {"format": CLASSIFIER_FORMAT, "version": 1, "feature_net": FEATURE_NET, "feature_dim": FEATURE_DIM,
                "training": summary}
        _atomic_save(dict(model.state_dict()), meta, out)
    return summary


@torch.no_grad()
def compute_features(model: FMNISTClassifier, images01: torch.Tensor, batch: int = 1000,
                     progress: bool = False) -> torch.Tensor:
    """Features ``[N, 128]`` (float64) of images in [0, 1], in batches."""
    out = []
    for i in tqdm(range(0, images01.shape[0], batch), disable=not progress, desc="features"):
        out.append(model.features(images01[i:i + batch]).double().cpu())
    return torch.cat(out)


def feature_stats(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64), as in EDM's fid.py layout."""
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def write_stats_npz(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, meta: dict[str, Any]) -> None:
    """Atomic ``.npz`` with ``mu``, ``sigma`` (float64) and ``adasde_meta`` (0-d unicode array holding JSON)."""
    from ..fileio import atomic_save

    atomic_save(path, lambda f: np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                                         adasde_meta=np.array(json.dumps(meta, sort_keys=True))))


def write_reference_stats(classifier_path: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                          progress: bool = True) -> list[Path]:
    """Compute and write ``fmnist_train.npz`` and ``fmnist_test.npz`` for the classifier at ``classifier_path``."""
    from .data import load_fmnist_uint8

    cpath = Path(classifier_path) if classifier_path is not None else DEFAULT_CLASSIFIER
    model = load_classifier(path=cpath)
    sha = file_sha256(cpath)
    out_dir = Path(out_dir) if out_dir is not None else STATS_DIR
    written = []
    for split in ("train", "test"):
        x, _ = load_fmnist_uint8(split)
        feats = compute_features(model, torch.from_numpy(x).float().div_(255).unsqueeze(1), progress=progress)
        mu, sigma = feature_stats(feats)
        meta = {"feature_net": FEATURE_NET, "feature_dim": FEATURE_DIM, "n": int(x.shape[0]),
                "source": f"Fashion-MNIST {split} split (Debian dataset-fashion-mnist), uint8/255",
                "classifier_sha256": sha, "features": "fc1 pre-activation"}
        path = out_dir / f"fmnist_{split}.npz"
        write_stats_npz(path, mu, sigma, meta)
        written.append(path)
    return written
