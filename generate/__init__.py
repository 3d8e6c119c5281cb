"""Generation: the one loop from (model, plan, seeds, conditioning) to images, and the commands built on it
(``adasde sample``, ``adasde fid sample``; the demo and the benchmarks call it too).  docs/ARCHITECTURE.md."""

from .loop import NonFiniteSampleError, generate, generate_all, sample_batch, to_uint8
from .seeds import parse_seeds, shard

__all__ = ["NonFiniteSampleError", "generate", "generate_all", "parse_seeds", "sample_batch", "shard", "to_uint8"]
