"""Host-free samplers in the k-diffusion calling convention (docs/ARCHITECTURE.md, ALGORITHMS.md)."""

from .adasde import CoefficientMismatchWarning, adasde_step, resolve_tables, sample_adasde
from .common import SeededNoise, append_zero, is_flow_model, to_d
from .schedules import SCHEDULES, get_sigmas, teacher_sigmas

__all__ = [
    "CoefficientMismatchWarning",
    "SCHEDULES",
    "SeededNoise",
    "adasde_step",
    "append_zero",
    "get_sigmas",
    "is_flow_model",
    "resolve_tables",
    "sample_adasde",
    "teacher_sigmas",
    "to_d",
]
