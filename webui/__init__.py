"""Stable Diffusion WebUI (AUTOMATIC1111 >= 1.6, full features from 1.10, and Forge) integration: sampler and
scheduler registration, model detection for the sampling policy, the AMED bottleneck hook (docs/HOSTS.md section C).
Imported by ``scripts/adasde.py``; host modules (``modules.*``) are imported lazily, so importing this package
outside a WebUI is harmless."""

from .core import (
    INFOTEXT_FILE,
    INFOTEXT_HASH,
    INFOTEXT_NFE,
    SAMPLERS,
    SCHEDULER_NAME,
    HostFeatures,
    adasde_schedule,
    bottleneck_capture,
    coefficient_dirs,
    detect_model,
    host_features,
    make_sampler,
    policy_choice,
    register,
)

__all__ = [
    "INFOTEXT_FILE",
    "INFOTEXT_HASH",
    "INFOTEXT_NFE",
    "SAMPLERS",
    "SCHEDULER_NAME",
    "HostFeatures",
    "adasde_schedule",
    "bottleneck_capture",
    "coefficient_dirs",
    "detect_model",
    "host_features",
    "make_sampler",
    "policy_choice",
    "register",
]
