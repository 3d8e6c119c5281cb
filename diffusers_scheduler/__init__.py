"""diffusers schedulers running AdaSDE / AMED-Plugin coefficients inside diffusers pipelines (docs/HOSTS.md section D2).

``pipe.scheduler = AdaSDEScheduler.for_pipeline(pipe.scheduler.config, model_family="sd15")`` (the best fitting
coefficient file, chosen by the sampling policy) or ``AdaSDEScheduler.from_coefficients("sd15_nfe5.safetensors",
pipe.scheduler.config)``.
Imported lazily so that ``import adasde`` does not need diffusers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AMEDPluginScheduler", "AdaSDEScheduler"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import scheduling_adasde

        return getattr(scheduling_adasde, name)
    raise AttributeError(name)
