"""Stable Diffusion WebUI (AUTOMATIC1111 1.6+ and Forge) integration: sampler and scheduler registration, coefficient
selection, the AMED bottleneck hook (docs/HOSTS.md section C).  Imported by ``scripts/adasde.py``; host modules
(``modules.*``) are imported lazily, so importing this package outside a WebUI is harmless."""

from .core import (
    INFOTEXT_FILE,
    INFOTEXT_HASH,
    INFOTEXT_NFE,
    SAMPLERS,
    SCHEDULER_NAME,
    ModelInfo,
    adasde_schedule,
    bottleneck_capture,
    coefficient_dirs,
    detect_model,
    make_sampler,
    register,
    select_coefficients,
)

__all__ = [
    "INFOTEXT_FILE",
    "INFOTEXT_HASH",
    "INFOTEXT_NFE",
    "SAMPLERS",
    "SCHEDULER_NAME",
    "ModelInfo",
    "adasde_schedule",
    "bottleneck_capture",
    "coefficient_dirs",
    "detect_model",
    "make_sampler",
    "register",
    "select_coefficients",
]
