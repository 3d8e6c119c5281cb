"""Packages whose public names are imported on first use (PEP 562), so that ``adasde --help`` and the CLI parser
import no torch: ``__getattr__, __dir__ = lazy_exports(__name__, {name: (submodule, attribute)})``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, table: Mapping[str, tuple[str, str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to (relative submodule, attribute)."""

    def getattr_(name: str) -> Any:
        entry = table.get(name)
        if entry is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = import_module(entry[0], package)
        pkg = sys.modules[package]
        for public, (sub, attr) in table.items():  # every name of that submodule at once: a submodule named like
            if sub == entry[0]:                      # one of its functions (policy.plan) must not shadow it
                setattr(pkg, public, getattr(module, attr))
        return getattr(pkg, name)

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return getattr_, dir_
