"""The ``Denoiser`` interface and the model-spec registry (docs/ARCHITECTURE.md, "The model contract")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import AdasdeError


class ModelSpecError(AdasdeError, ValueError):
    """A model spec could not be resolved or loaded; the message names the spec/file and the fix."""


class Denoiser(nn.Module):
    """A diffusion model in sigma form: ``forward(x, sigma_vec, **extra) -> x0`` (docs/ALGORITHMS.md section 1).

    Subclasses set the attributes below and implement :meth:`denoise`.  ``bottleneck()`` returns the U-Net middle
    feature map of the most recent call (for AMED) or None; ``decode`` maps samples to images in [0, 1] (NCHW).

    ``default_schedule`` is ``(kind, rho)`` for ``samplers.get_sigmas``.  Flow models (``flow=True``, ``prediction
    "flow"``, x = (1 - s) x0 + s eps) set ``flow_shift`` to the time shift of their training sigmas (SD3: 3; Flux:
    exp(mu) at the model's resolution; 1: unshifted) and carry the shifted grid s = shift u / (1 + (shift - 1) u),
    u = k / 1000, as ``model_sigmas``; their default schedule ``("discrete", 1.0)`` - uniform in u over that table - is
    the shift-aware schedule the flow pipelines sample with.  ``flow_shift`` is None for models that are not flow
    models or whose shift is unknown.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sample_shape: tuple[int, ...] = (1, 28, 28)
    family: str = "unknown"
    prediction: str = "edm"
    flow: bool = False
    flow_shift: float | None = None
    model_sigmas: torch.Tensor | None = None
    default_schedule: tuple[str, float] = ("time_uniform", 1.0)

    def __init__(self) -> None:
        super().__init__()
        self._bottleneck: torch.Tensor | None = None

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        extra.pop("seed", None)  # the samplers' per-sample noise seed (docs/ARCHITECTURE.md), not a model input
        return self.denoise(x, sigma.reshape(-1), **extra)

    def bottleneck(self) -> torch.Tensor | None:
        return self._bottleneck

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples -> images in [0, 1] (pixel models: x in [-1, 1])."""
        return ((x + 1) / 2).clamp(0, 1)

    def identity(self) -> dict[str, Any]:
        """Fields for ``coefficients.ModelIdentity``."""
        return {
            "family": self.family,
            "prediction": self.prediction,
            "sigma_min": float(self.sigma_min),
            "sigma_max": float(self.sigma_max),
        }


Resolver = Callable[..., Denoiser]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(prefix: str, fn: Resolver) -> None:
    """Register ``fn(rest, device=None, dtype=None, **kw) -> Denoiser`` for specs ``"prefix:rest"``."""
    _RESOLVERS[prefix] = fn


def spec_options(rest: str, allowed: dict[str, Callable[[str], Any]]) -> tuple[str, dict[str, Any]]:
    """Split ``PATH?key=value&key=value`` into ``PATH`` and the options, converted by ``allowed[key]``; a query
    whose keys are not all in ``allowed`` is left in ``PATH`` (a ``?`` in a file name)."""
    path, sep, query = rest.rpartition("?")
    if not sep or not query:
        return rest, {}
    pairs = [p.partition("=") for p in query.split("&")]
    if not all(eq and k in allowed for k, eq, _ in pairs):
        return rest, {}
    out: dict[str, Any] = {}
    for k, _, v in pairs:
        try:
            out[k] = allowed[k](v)
        except ValueError as exc:
            raise ModelSpecError(f"{rest}: option {k}={v!r} is not a valid {allowed[k].__name__}") from exc
    return path, out


def resolve_spec(spec: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **kw: Any) -> Denoiser:
    """Resolve a model spec with the resolvers registered so far (``models.load_model`` registers them all)."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in _RESOLVERS:
        known = ", ".join(sorted(f"{p}:..." for p in _RESOLVERS)) or "none"
        raise ModelSpecError(f"unknown model spec {spec!r}; known forms: {known}")
    return _RESOLVERS[prefix](rest, device=device, dtype=dtype, **kw)
