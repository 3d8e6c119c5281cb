"""Classifier guidance (``cg``) as a denoiser wrapper (Dhariwal & Nichol 2021, section 4; docs/ALGORITHMS.md
section 1.1).

For a noise-aware classifier p(y | x; sigma) in sigma form, Tweedie's formula D(x; sigma) = x + sigma^2 grad log p(x)
turns the guided score grad log p(x) + w grad_x log p(y | x) into

    D_guided(x; sigma) = D(x; sigma) + sigma^2 * w * grad_x log p(y | x; sigma),

which equals guided-diffusion's eps correction eps - sqrt(1 - alpha_bar) * w * grad_{x_t} log p(y | x_t) after the
change of variables x = x_t / sqrt(alpha_bar) (the classifier itself sees x_t; its sigma-form wrapper does the scaling,
so autograd supplies the sqrt(alpha_bar) factor).  The gradient is taken at a detached copy of x (as the reference
implementation does): it is a constant for any outer autograd graph, e.g. distillation through the sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Denoiser

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_log_prob_grad(classifier: Classifier, x: torch.Tensor, sigma: torch.Tensor,
                             labels: torch.Tensor) -> torch.Tensor:
    """grad_x log p(y | x; sigma) for ``classifier(x, sigma) -> logits`` [B, classes], per sample."""
    with torch.inference_mode(False), torch.enable_grad():  # also under no_grad / inference_mode (hosts)
        xg = x.detach().clone().requires_grad_(True)
        logp = F.log_softmax(classifier(xg, sigma.detach().clone()).float(), dim=-1)
        picked = logp.gather(1, labels.long().view(-1, 1).to(logp.device)).sum()
        (grad,) = torch.autograd.grad(picked, xg)
    return grad.to(x.dtype)


class ClassifierGuided(Denoiser):
    """``denoiser`` guided towards ``classes`` by ``classifier`` with guidance rate ``rate`` (module docstring).

    ``classifier(x, sigma) -> logits`` works in the same sigma form as the denoiser.  ``classes``: an int, a [B]
    sequence/tensor of class indices, or None (then every call must pass ``class_labels``); per-call
    ``class_labels`` override it and are also handed to class-conditional denoisers.  ``rate = 0`` is the unguided
    model.  ``clip``: clamp the guided x0 to [-1, 1] (pixel data range; guided-diffusion's ``clip_denoised``).  All
    ``Denoiser`` attributes (family, sigma range, schedule, shape, decode, bottleneck) are the wrapped
    model's."""

    def __init__(self, denoiser: Denoiser, classifier: Classifier, classes: Any = None, rate: float = 1.0,
                 clip: bool = False):
        super().__init__()
        self.clip = bool(clip)
        rate = float(rate)
        if not rate == rate or rate < 0:  # NaN or negative
            raise UsageError(f"--guidance-rate {rate}: expected a number >= 0")
        self.inner, self.classifier, self.rate = denoiser, classifier, rate
        self.classes = None if classes is None else torch.as_tensor(classes).long().reshape(-1)
        for name in ("sigma_min", "sigma_max", "sample_shape", "family", "prediction", "flow", "model_sigmas",
                     "default_schedule"):
            setattr(self, name, getattr(denoiser, name))

    def labels(self, extra: dict[str, Any], batch: int, device: torch.device) -> torch.Tensor:
        y = extra.get("class_labels")
        y = self.classes if y is None else torch.as_tensor(y)
        if y is None:
            raise UsageError(f"classifier guidance on {self.family}: give the target classes (--classes, or "
                             "extra_args['class_labels'])")
        y = y.to(device)
        if y.ndim == 2:  # one-hot rows
            y = y.argmax(dim=1)
        y = y.long().reshape(-1)
        if y.numel() == 1:
            y = y.expand(batch)
        if y.numel() != batch:
            raise UsageError(f"classifier guidance: {y.numel()} class labels for a batch of {batch}")
        return y

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        y = self.labels(extra, x.shape[0], x.device)
        if getattr(self.inner, "label_dim", 0) or getattr(self.inner, "num_classes", 0):
            extra = {**extra, "class_labels": y}
        d = self.inner(x, sigma, **extra)
        if self.rate == 0:
            return d.clamp(-1, 1) if self.clip else d
        g = classifier_log_prob_grad(self.classifier, x, sigma, y)
        d = d + (sigma.to(x.dtype) ** 2 * self.rate).view(-1, *([1] * (x.ndim - 1))) * g
        return d.clamp(-1, 1) if self.clip else d

    def bottleneck(self) -> torch.Tensor | None:
        return self.inner.bottleneck()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(x)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()


def classifier_guided(denoiser: Denoiser, classifier: Classifier, classes: Any = None, rate: float = 1.0,
                      clip: bool = False) -> ClassifierGuided:
    """``ClassifierGuided(denoiser, classifier, classes, rate, clip)``: the ``cg`` guidance type of the AdaSDE
    release."""
    return ClassifierGuided(denoiser, classifier, classes, rate, clip)
