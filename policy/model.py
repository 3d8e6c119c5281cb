"""What the sampling policy needs to know about a model (docs/ALGORITHMS.md section 10).

Every door builds a :class:`ModelInfo`: headless code from a ``loaders.Denoiser`` (:meth:`ModelInfo.of`), host
adapters from the host's own model objects (ComfyUI ``model_sampling``, the WebUI's ``sd_model``).  The policy never
touches the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..coefficients.lookup import normalize_family

LEARNED = ("adasde", "amed", "amed_plugin")  # samplers that take coefficient files


@dataclass(frozen=True)
class ModelInfo:
    """A model's identity for the policy: family, prediction type, sigma range, discrete table, flow shift and the
    grid the model declares as its default (``None``: the policy derives one from the other fields)."""

    family: str = "unknown"
    prediction: str = "unknown"  # edm | eps | v | x0 | flow | unknown
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    model_sigmas: torch.Tensor | None = field(default=None, compare=False, repr=False)
    flow: bool = False
    flow_shift: float | None = None
    default_schedule: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", normalize_family(self.family) or "unknown")
        if self.model_sigmas is not None:
            table = torch.as_tensor(self.model_sigmas, dtype=torch.float64).flatten().cpu()
            object.__setattr__(self, "model_sigmas", table)

    @classmethod
    def of(cls, model: Any) -> ModelInfo:
        """From any object with the ``loaders.Denoiser`` attributes (docs/ARCHITECTURE.md, "The model contract")."""
        if isinstance(model, ModelInfo):
            return model
        flow = bool(getattr(model, "flow", False))
        return cls(
            family=str(getattr(model, "family", "unknown")),
            prediction=str(getattr(model, "prediction", "unknown")),
            sigma_min=float(getattr(model, "sigma_min", 0.002)),
            sigma_max=float(getattr(model, "sigma_max", 80.0)),
            model_sigmas=getattr(model, "model_sigmas", None),
            flow=flow,
            flow_shift=getattr(model, "flow_shift", None),
            default_schedule=_declared(getattr(model, "default_schedule", None)),
        )

    def schedule(self) -> tuple[str, float]:
        """The model's default sigma grid (kind, rho): the declared one, else shift-aware for flow models, the
        discrete table for DDPM/LDM/SD models, polynomial rho 7 otherwise (docs/ALGORITHMS.md section 10)."""
        if self.default_schedule is not None:
            return self.default_schedule
        if self.flow:
            return ("flow_shift", float(self.flow_shift or 1.0))
        if self.model_sigmas is not None:
            return ("discrete", 1.0)
        return ("polynomial", 7.0)

    def describe(self) -> str:
        return f"{self.family} / {self.prediction}, sigma {self.sigma_min:.4g}..{self.sigma_max:.4g}"


def _declared(value: Any) -> tuple[str, float] | None:
    if value is None:
        return None
    kind, rho = value
    return (str(kind), float(rho))
