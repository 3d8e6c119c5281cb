"""Distillation engine: AdaSDE (docs/ALGORITHMS.md section 3.5) and AMED (section 4.4) coefficients from a teacher.

Public API: :func:`distill`, :func:`distill_amed`, :class:`DistillOptions`, :class:`DistillError`,
:class:`NonFiniteError`.
"""

from .._lazy import lazy_exports

_LAZY: dict[str, tuple[str, str]] = {  # public name -> (submodule, attribute)
    "DistillError": (".engine", "DistillError"),
    "DistillOptions": (".options", "DistillOptions"),
    "NonFiniteError": (".engine", "NonFiniteError"),
    "TEACHERS": (".teacher", "TEACHERS"),
    "distill": (".adasde", "distill"),
    "lr_at": (".engine", "lr_at"),
    "map_tables": (".params", "map_tables"),
    "sample_seed": (".engine", "sample_seed"),
    "steps_for_nfe": (".adasde", "steps_for_nfe"),
    "teacher_trajectory": (".teacher", "teacher_trajectory"),
}

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
