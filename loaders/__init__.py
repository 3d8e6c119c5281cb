"""Model specs -> ``Denoiser`` (docs/ARCHITECTURE.md).  Resolvers register lazily so that importing this package
stays light; each subsystem adds its prefix in ``_ensure_resolvers``."""

from __future__ import annotations

import importlib

# modules (relative to the package root) whose import registers resolvers
_RESOLVER_MODULES = (".builtin.loader", ".testbeds.loader", ".loaders.diffusers_loader", ".loaders.single_file")
_done = False


def _ensure_resolvers() -> None:
    global _done
    if _done:
        return
    root = __package__.rsplit(".", 1)[0]
    for name in _RESOLVER_MODULES:
        try:
            importlib.import_module(name, root)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(root + "."):
                continue  # subsystem not present in this checkout
            raise
    _done = True


__all__ = ["Denoiser", "ModelSpecError", "load_model", "register_resolver"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: ``.base`` (torch) is imported on first use (keeps the CLI light)
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import base

    value = getattr(base, name)
    globals()[name] = value
    return value
