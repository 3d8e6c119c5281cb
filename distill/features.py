"""Differentiable feature networks for the final-step feature loss (docs/ALGORITHMS.md section 3.5, step 3, n = N - 2).

The paper's code uses Inception-v3 pool features; the evaluation package's FID networks quantise to uint8 and run
under ``no_grad`` (they are metrics, not losses), so the loss needs its own differentiable path:

* ``fmnist``: the builtin Fashion-MNIST classifier's 128-d penultimate features of images in [0, 1] (1 x 28 x 28).
* any callable ``images -> features`` passed as ``feature_net=`` in Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UsageError

FEATURE_NETS = ("fmnist",)


def feature_net_by_name(name: str, device: torch.device | str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable ``images in [0, 1] -> features`` callable (module docstring)."""
    if name == "fmnist":
        from ..builtin.classifier import load_classifier

        net = load_classifier(device=device).eval().requires_grad_(False)
        return net.features
    if name == "inception":
        raise UsageError("feature net 'inception': the FID Inception network (torch-fidelity) takes uint8 images, is "
                         "not differentiable; pass a differentiable feature_net= callable from Python, or use "
                         "--feature-net fmnist / --loss l2")
    raise UsageError(f"unknown feature net {name!r}; choose one of {', '.join(FEATURE_NETS)} (or --loss l2)")
