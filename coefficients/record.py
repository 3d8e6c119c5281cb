"""The ``Coefficients`` record: everything needed to reproduce a learned AdaSDE / AMED sampler.

Values are stored *effective* (after the parameterisations of docs/ALGORITHMS.md section 3.1), per student step, shape
``[steps, K]``.  File format and validation live in :mod:`.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT_VERSION = 1
KINDS = ("adasde", "amed", "amed_plugin")
PREDICTIONS = ("edm", "eps", "v", "flow", "x0", "unknown")
BASES = ("euler", "dpm_2", "ipndm", "dpmpp")  # AMED-Plugin base solvers (docs/ALGORITHMS.md section 4.3)


@dataclass
class ModelIdentity:
    """Which model a coefficient set was trained for (lookup key: family, prediction, steps/NFE)."""

    family: str = "unknown"  # e.g. "builtin-fmnist", "sd15", "sdxl", "flux", "gmm"
    prediction: str = "unknown"  # one of PREDICTIONS
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    fingerprint: str | None = None  # optional hash of the weights
    name: str | None = None  # free text (checkpoint file name)


@dataclass
class Coefficients:
    """Learned per-step coefficients plus the grid and settings they were trained on.

    ``sigmas`` holds the ``steps + 1`` positive student grid points (no trailing zero).  ``kind`` is ``"adasde"``,
    ``"amed"`` (AMED-Solver; ``predictor`` holds the network weights, the tables its constant fallback) or
    ``"amed_plugin"`` (``base`` names the base solver: euler, dpm_2, ipndm, dpmpp; ``predictor`` the network g_phi
    it was distilled with, the tables its constant fallback, or None for constant tables; ``solver_options`` the
    base's solver form it was trained with: max_order, predict_x0, lower_order_final, taylor_d2, thresholding).
    """

    r: torch.Tensor
    a: torch.Tensor
    c: torch.Tensor
    gamma: torch.Tensor
    w: torch.Tensor
    sigmas: torch.Tensor
    schedule: str = "time_uniform"
    rho: float = 1.0
    afs: bool = True
    model: ModelIdentity = field(default_factory=ModelIdentity)
    kind: str = "adasde"
    base: str | None = None
    predictor: dict[str, torch.Tensor] | None = None
    predictor_config: dict[str, Any] | None = None
    solver_options: dict[str, Any] | None = None  # AMED-Plugin: the base solver's form (samplers.amed.plugin_solver)
    training: dict[str, Any] = field(default_factory=dict)  # teacher, M, lr, batch, trajectories, seed, losses ...
    version: int = FORMAT_VERSION
    source: str | None = None  # file it was loaded from (not saved)

    @property
    def steps(self) -> int:
        return int(self.r.shape[0])

    @property
    def K(self) -> int:  # noqa: N802 - paper symbol
        return int(self.r.shape[1])

    @property
    def num_points(self) -> int:
        """N, the number of student grid points."""
        return self.steps + 1

    @property
    def nfe(self) -> int:
        """Model calls of one sample on the trained grid (docs/ALGORITHMS.md section 3.3): (1 + K)(N - 1) - [AFS]."""
        if self.kind == "amed_plugin" and self.base in ("ipndm", "dpmpp", "euler"):
            return 2 * self.steps - int(self.afs)
        return (1 + self.K) * self.steps - int(self.afs)

    @classmethod
    def untrained(
        cls,
        sigmas: torch.Tensor,
        K: int = 1,  # noqa: N803
        afs: bool = False,
        **kw: Any,
    ) -> Coefficients:
        """r = 0.5, a = c = 1, gamma = 0: AdaSDE reduced to DPM-Solver-2."""
        steps = int(torch.as_tensor(sigmas).numel()) - 1
        full = lambda v: torch.full((steps, K), float(v), dtype=torch.float32)  # noqa: E731
        return cls(r=full(0.5), a=full(1), c=full(1), gamma=full(0), w=full(1.0 / K),
                   sigmas=torch.as_tensor(sigmas, dtype=torch.float64).flatten(), afs=afs, **kw)
