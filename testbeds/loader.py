"""``testbed:NAME`` model specs (docs/ARCHITECTURE.md, docs/TESTBEDS.md section 1).

| spec | model |
|---|---|
| ``testbed:gmm`` | exact denoiser of :func:`synthetic_gmm` (d = 64, K = 8, rank 4; shape (1, 8, 8); no data needed) |
| ``testbed:gmm-error`` | controlled-error denoiser of the same mixture (:func:`controlled_error`) |
| ``testbed:gmm-flow`` | the same mixture, flow parameterisation x = (1 - s) y + s n, s in [0.002, 1] |
| ``testbed:fmnist-gmm`` | exact denoiser of the Fashion-MNIST mixture (:func:`fmnist_gmm`, K 10, rank 32, 1x28x28) |
| ``testbed:fmnist-gmm-error`` | controlled-error denoiser of the Fashion-MNIST mixture |

Keyword arguments of ``load_model`` override the constructors' defaults (``d``, ``K``, ``rank``, ``seed`` for the
synthetic mixture, ``rank`` for Fashion-MNIST, ``mean_shift``, ``cov_scale``, ``temperature`` for the error variants,
``shape``).  ``dtype`` float64 switches the exact computation to float64 (default float32 for Fashion-MNIST, float64
for the synthetic mixture).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..loaders.base import ModelSpecError, register_resolver
from .fmnist import fmnist_gmm
from .gmm import ERROR_DEFAULTS, GMMDenoiser, GMMFlowDenoiser, controlled_error, synthetic_gmm

SPECS = ("gmm", "gmm-error", "gmm-flow", "fmnist-gmm", "fmnist-gmm-error")


def _shape(d: int, shape: Any) -> tuple[int, ...]:
    if shape is not None:
        return tuple(int(v) for v in shape)
    side = math.isqrt(d)
    return (1, side, side) if side * side == d else (d,)


def load_testbed(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **kw: Any) -> GMMDenoiser:
    """The Denoiser for ``testbed:NAME`` (module docstring)."""
    if name not in SPECS:
        raise ModelSpecError(f"unknown testbed {name!r} in spec 'testbed:{name}'; choose one of "
                             + ", ".join(f"testbed:{s}" for s in SPECS))
    err = {k: kw.pop(k) for k in list(kw) if k in ERROR_DEFAULTS}
    shape = kw.pop("shape", None)
    if name.startswith("fmnist"):
        mix = fmnist_gmm(rank=int(kw.pop("rank", 32)), dtype=dtype or torch.float32)
    else:
        mix = synthetic_gmm(d=int(kw.pop("d", 64)), K=int(kw.pop("K", 8)), rank=int(kw.pop("rank", 4)),
                            seed=int(kw.pop("seed", 0)), dtype=dtype or torch.float64)
    if kw:
        raise ModelSpecError(f"testbed:{name} got unknown options {sorted(kw)}")
    if device is not None:
        mix.to(device=device)
    common = {"sample_shape": _shape(mix.d, shape), "family": name}
    if name.endswith("-error"):
        model = controlled_error(mix, **err, **common)
    elif name.endswith("-flow"):
        model = GMMFlowDenoiser(mix, **common)
    else:
        model = GMMDenoiser(mix, **common)
    return model


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             **kw: Any) -> GMMDenoiser:
    return load_testbed(rest.strip(), device=device, dtype=dtype, **kw)


register_resolver("testbed", _resolve)
