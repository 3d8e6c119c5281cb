"""Helpers for tests that write pickles in another project's on-disk format (e.g. EDM persistence pickles)."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def fake_modules(names: Iterable[str]) -> Iterator[dict[str, types.ModuleType]]:
    """Empty modules under ``names`` in ``sys.modules`` for the duration (so pickle can record classes of a package
    that is not installed); the previous entries are restored afterwards."""
    names = list(names)
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
