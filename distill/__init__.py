"""Distillation engine: AdaSDE (ALGORITHMS.md section 3.5) and AMED (section 4.4) coefficients from a teacher.

Public API: :func:`distill`, :func:`distill_amed`, :class:`DistillOptions`, :class:`DistillError`,
:class:`NonFiniteError`.
"""

from .adasde import distill, steps_for_nfe
from .engine import DistillError, NonFiniteError, lr_at, sample_seed
from .options import DistillOptions
from .params import map_tables
from .teacher import TEACHERS, teacher_trajectory

__all__ = [
    "DistillError",
    "DistillOptions",
    "NonFiniteError",
    "TEACHERS",
    "distill",
    "lr_at",
    "map_tables",
    "sample_seed",
    "steps_for_nfe",
    "teacher_trajectory",
]
