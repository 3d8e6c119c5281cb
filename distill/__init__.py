"""Distillation engine: AdaSDE (docs/ALGORITHMS.md section 3.5) and AMED (section 4.4) coefficients from a teacher.

Public API: :func:`distill`, :func:`distill_amed`, :class:`DistillOptions`, :class:`DistillError`,
:class:`NonFiniteError`.
"""

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


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: import the submodule on first use (keeps the CLI light)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module[0], __name__), module[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
