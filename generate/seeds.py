"""Seed lists: parsing (EDM's ``--seeds`` syntax) and the per-rank shard of a ``torchrun`` job."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import UsageError


def parse_seeds(spec: str | Sequence[int]) -> list[int]:
    """``"0-49999"``, ``"0,3,10-12"`` or a list -> list of ints (ranges inclusive, no duplicates)."""
    if not isinstance(spec, str):
        out = [int(s) for s in spec]
    else:
        out = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise UsageError(f"--seeds: range {part!r} is empty (end < start); write e.g. {b}-{a}")
                out.extend(range(a, b + 1))
            elif re.fullmatch(r"\d+", part):
                out.append(int(part))
            else:
                raise UsageError(f"--seeds {spec!r}: cannot parse {part!r}; use e.g. 0-49999 or 0,5,10-19")
    if not out:
        raise UsageError(f"--seeds {spec!r} names no seed; use e.g. 0-15")
    if len(set(out)) != len(out):
        raise UsageError(f"--seeds {spec!r} contains duplicates; every seed makes one image, list each once")
    return out


def shard(seeds: Sequence[int], rank: int, world: int) -> list[int]:
    """The seeds rank ``rank`` of ``world`` generates: every ``world``-th, starting at ``rank``."""
    return list(seeds[rank::world])
