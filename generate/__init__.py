"""Generation: the one loop from (model, plan, seeds, conditioning) to images, and the commands built on it
(``adasde sample``, ``adasde fid sample``; the demo and the benchmarks call it too).  docs/ARCHITECTURE.md,
"Generation".  Names are imported on first use, so that ``adasde --help`` does not import torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"NonFiniteSampleError": ".loop", "generate": ".loop", "generate_all": ".loop", "sample_batch": ".loop",
         "to_uint8": ".loop", "parse_seeds": ".seeds", "shard": ".seeds"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
