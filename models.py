"""Model specs -> ``loaders.Denoiser``, with every provider of the package registered (docs/ARCHITECTURE.md,
"The model contract").

``builtin:`` lives in ``builtin/`` and ``testbed:`` in ``testbeds/``, beside their models; the file formats
(``diffusers:``, ``single-file:``, ``edm:``, ``adm:``, ``cm:``) in ``loaders/``.  Each registers its prefix when
imported; this module imports them all, so it is the one entry point that knows every spec.
"""

from __future__ import annotations

from typing import Any

import torch

from .builtin import loader as _builtin  # noqa: F401  (registers builtin:)
from .loaders import Denoiser, ModelSpecError, resolve_spec
from .testbeds import loader as _testbeds  # noqa: F401  (registers testbed:)

__all__ = ["Denoiser", "ModelSpecError", "load_model"]


def load_model(spec: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               **kw: Any) -> Denoiser:
    """Resolve a model spec such as ``builtin:fmnist`` or ``diffusers:/path/to/folder`` to a Denoiser."""
    return resolve_spec(spec, device=device, dtype=dtype, **kw)
