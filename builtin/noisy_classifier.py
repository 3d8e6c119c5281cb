"""A noise-conditional Fashion-MNIST classifier p(y | x; sigma) for classifier guidance on ``builtin:fmnist``
(Dhariwal & Nichol 2021, section 4; docs/ALGORITHMS.md section 1.1 and "Guidance and presets").

``NoisyFMNISTClassifier.forward(x, sigma) -> logits [N, 10]`` works in the sigma form of the diffusion model: ``x`` is
a noisy sample x = x0 + sigma * n in data units (images in [-1, 1]), ``sigma`` a [N] vector (or a scalar).  The
network sees the EDM-scaled input c_in(sigma) x with c_in = 1 / sqrt(sigma^2 + sigma_data^2) (unit variance at every
noise level) and a sinusoidal embedding of c_noise = ln(sigma) / 4 that shifts and scales every conv layer's
features.  SiLU activations and average pooling keep grad_x log p(y | x; sigma) smooth.

Training (:func:`train_noisy_classifier`, ``adasde train-builtin --model noisy-classifier``): cross-entropy on the
60k train images noised with ln(sigma) ~ N(P_mean, P_std^2) (clipped to [sigma_min, sigma_max]), Adam with cosine
decay; every random draw comes from generators seeded by (seed, step), so a run is a function of the seed and the
step count.  The weights ship as fp16 safetensors with the training record in the JSON metadata
(``builtin/weights/fmnist_noisy_classifier.safetensors``) and as the model spec
``builtin:fmnist-noisy-classifier`` of ``--classifier``.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..loaders.checkpoint import load_checked
from .classifier import cosine_step
from .loader import WEIGHTS_DIR, read_weights

NOISY_CLASSIFIER = WEIGHTS_DIR / "fmnist_noisy_classifier.safetensors"
NOISY_FORMAT = "adasde-builtin-noisy-classifier"
SPEC = "builtin:fmnist-noisy-classifier"
_FIX = ("reinstall adasde (pip install --force-reinstall adasde) or retrain it with "
        "'adasde train-builtin --model noisy-classifier'")


class NoisyFMNISTClassifier(nn.Module):
    """Three conv levels (28, 14, 7 px) with noise scale/shift, global average pool, linear head (~40 k params)."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), emb_dim: int = 64, fourier_dim: int = 32,
                 sigma_data: float = 0.5) -> None:
        super().__init__()
        self.channels, self.sigma_data = tuple(int(c) for c in channels), float(sigma_data)
        half = fourier_dim // 2
        self.register_buffer("freqs", 2 * math.pi * torch.logspace(-2, 4, half, base=2.0), persistent=False)
        self.emb = nn.Sequential(nn.Linear(fourier_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        cin = 1
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.affines = nn.ModuleList()
        for c in self.channels:
            self.convs.append(nn.Conv2d(cin, c, 3, padding=1))
            self.norms.append(nn.GroupNorm(8, c))
            self.affines.append(nn.Linear(emb_dim, 2 * c))
            cin = c
        self.conv_last = nn.Conv2d(cin, cin, 1)
        self.head = nn.Linear(cin, 10)

    def config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "emb_dim": self.emb[0].out_features,
                "fourier_dim": self.emb[0].in_features, "sigma_data": self.sigma_data}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Logits ``[N, 10]`` of noisy samples ``x`` ``[N, 1, 28, 28]`` (data units) at noise levels ``sigma``."""
        w = self.convs[0].weight
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        c_in = (s * s + self.sigma_data**2).rsqrt().view(-1, 1, 1, 1)
        arg = (s.clamp(min=1e-20).log() / 4)[:, None] * self.freqs[None, :]
        emb = self.emb(torch.cat([arg.cos(), arg.sin()], dim=1).to(w.dtype))
        h = (c_in * x.float()).to(w.dtype)
        for i, (conv, norm, aff) in enumerate(zip(self.convs, self.norms, self.affines)):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            scale, shift = aff(emb)[:, :, None, None].chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, norm(conv(h)), scale + 1))
        h = F.silu(self.conv_last(h))
        return self.head(h.mean(dim=(2, 3))).float()


def load_noisy_classifier(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                          path: str | os.PathLike | None = None) -> NoisyFMNISTClassifier:
    """The shipped noise-conditional classifier in eval mode without gradients (safetensors only)."""
    path = Path(path) if path is not None else NOISY_CLASSIFIER
    tensors, meta = read_weights(path, NOISY_FORMAT, _FIX)
    try:
        cfg = dict(meta["arch"])
        model = NoisyFMNISTClassifier(tuple(cfg["channels"]), int(cfg["emb_dim"]), int(cfg["fourier_dim"]),
                                      float(cfg["sigma_data"]))
    except (KeyError, TypeError, ValueError) as exc:
        from ..loaders.base import ModelSpecError

        raise ModelSpecError(f"weights file {path}: bad architecture metadata ({exc}); {_FIX}") from exc
    load_checked(model, tensors, f"weights file {path}", "noise-conditional classifier architecture", _FIX, True)
    model.meta = meta  # type: ignore[attr-defined]
    model.eval().requires_grad_(False)
    return model.to(device=device or "cpu", dtype=dtype or torch.float32)


def _noise_levels(n: int, gen: torch.Generator, p_mean: float, p_std: float,
                  lo: float = 0.002, hi: float = 80.0) -> torch.Tensor:
    return (torch.randn(n, generator=gen) * p_std + p_mean).exp().clamp(lo, hi)


@torch.no_grad()
def noisy_accuracy(model: NoisyFMNISTClassifier, x: torch.Tensor, y: torch.Tensor, sigma: float,
                   seed: int = 0, batch: int = 1000) -> float:
    """Top-1 accuracy on ``x + sigma * n`` (``x`` in [-1, 1], noise from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        xn = xb + sigma * torch.randn(xb.shape, generator=g)
        correct += int((model(xn, torch.full((xb.shape[0],), sigma)).argmax(1) == y[i:i + batch]).sum())
    return correct / x.shape[0]


EVAL_SIGMAS = (0.002, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0)


def train_noisy_classifier(out: str | os.PathLike | None = None, seed: int = 0, steps: int = 2400, batch: int = 128,
                           lr: float = 2e-3, p_mean: float = -0.4, p_std: float = 1.4, threads: int | None = None,
                           progress: bool = True, limit: int | None = None, eval_limit: int | None = None
                           ) -> dict[str, Any]:
    """Train deterministically (module docstring), report the test accuracy per noise level and write ``out``
    (fp16 safetensors + JSON training record, atomic).  ``limit`` / ``eval_limit``: first N train / test images."""
    from .data import load_fmnist
    from .train import _atomic_save, machine_info

    if threads:
        torch.set_num_threads(threads)
    xtr, ytr = load_fmnist("train")
    xte, yte = load_fmnist("test")
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    if eval_limit:
        xte, yte = xte[:eval_limit], yte[:eval_limit]
    torch.manual_seed(seed)
    model = NoisyFMNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = xtr.shape[0]
    per_epoch = max(1, n // batch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003))
    t0 = time.time()
    model.train()
    run = 0.0
    bar = tqdm(range(steps), desc="noisy classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        epoch, k = divmod(step, per_epoch)
        if k == 0 and step > 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        idx = perm[k * batch:(k + 1) * batch]
        gen = torch.Generator().manual_seed((seed + 1) * 2_147_483_629 + step)
        sigma = _noise_levels(idx.numel(), gen, p_mean, p_std)
        x = xtr[idx] + sigma.view(-1, 1, 1, 1) * torch.randn(xtr[idx].shape, generator=gen)
        run = cosine_step(opt, F.cross_entropy(model(x, sigma), ytr[idx]), lr, step, steps, run, bar)
    bar.close()
    model.eval()
    acc = {f"{s:g}": round(noisy_accuracy(model, xte, yte, s, seed=seed), 4) for s in EVAL_SIGMAS}
    summary = {
        "test_accuracy_by_sigma": acc, "test_images": int(xte.shape[0]), "steps": steps, "batch": batch, "lr": lr,
        "seed": seed, "p_mean": p_mean, "p_std": p_std, "train_images": int(n), "final_loss_ema": round(run, 4),
        "train_seconds": round(time.time() - t0, 1), "machine": machine_info(),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": "Fashion-MNIST train split (Debian dataset-fashion-mnist), scaled to [-1, 1], noised x0 + sigma n",
        "command": f"adasde train-builtin --model noisy-classifier --steps {steps} --seed {seed} --threads 1",
    }
    if out is not None:
        meta = {"format": NOISY_FORMAT, "version": 1, "arch": model.config(), "dtype": "float16",
                "input": "x = x0 + sigma n in data units ([-1, 1] images), sigma [N]; logits [N, 10]",
                "classes": "Fashion-MNIST label order (builtin.data.CLASSES)", "spec": SPEC, "training": summary}
        _atomic_save({k: v.to(torch.float16) for k, v in model.state_dict().items()}, meta, out)
    return summary
