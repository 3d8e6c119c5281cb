"""Distillation engine: AdaSDE (docs/ALGORITHMS.md section 3.5) and AMED (section 4.4) coefficients from a teacher.

Public API: :func:`distill`, :func:`distill_amed`, :class:`DistillOptions`, :class:`DistillError`,
:class:`NonFiniteError`, and :func:`refine` / :class:`RefineOptions` (the grid, section 3.9).
"""

from .._lazy import lazy_exports

_LAZY: dict[str, tuple[str, str]] = {  # public name -> (submodule, attribute)
    "DistillError": (".engine", "DistillError"),
    "DistillOptions": (".options", "DistillOptions"),
    "NonFiniteError": (".engine", "NonFiniteError"),
    "RefineOptions": (".refine", "RefineOptions"),
    "TEACHERS": (".teacher", "TEACHERS"),
    "distill": (".adasde", "distill"),
    "lr_at": (".engine", "lr_at"),
    "map_tables": (".params", "map_tables"),
    "refine": (".refine", "refine"),
    "sample_seed": (".engine", "sample_seed"),
    "steps_for_nfe": (".adasde", "steps_for_nfe"),
    "teacher_trajectory": (".teacher", "teacher_trajectory"),
}

__all__ = [
    "DistillError",
    "DistillOptions",
    "NonFiniteError",
    "RefineOptions",
    "TEACHERS",
    "distill",
    "lr_at",
    "map_tables",
    "refine",
    "sample_seed",
    "steps_for_nfe",
    "teacher_trajectory",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
