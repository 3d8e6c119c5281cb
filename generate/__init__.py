"""Generation: the one loop from (model, plan, seeds, conditioning) to images, and the commands built on it
(``adasde sample``, ``adasde fid sample``; the demo and the benchmarks call it too).  docs/ARCHITECTURE.md,
"Generation".  Names are imported on first use, so that ``adasde --help`` does not import torch."""

from .._lazy import lazy_exports

_LAZY: dict[str, tuple[str, str]] = {name: (".loop", name) for name in (
    "NonFiniteSampleError", "generate", "generate_all", "sample_batch", "to_uint8")} | {
    name: (".seeds", name) for name in ("parse_seeds", "shard")}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
