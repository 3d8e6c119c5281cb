"""Model specs -> ``Denoiser`` (docs/ARCHITECTURE.md, "The model contract").

Each resolver module registers its spec prefix when imported: ``diffusers:``, ``single-file:``, ``edm:``, ``adm:``
and ``cm:`` below; ``builtin:`` and ``testbed:`` beside their models (they subclass :class:`Denoiser`).
``models.load_model`` imports them all and is the entry point callers use.  Optional heavy libraries (diffusers,
transformers) are imported inside the loading functions.
"""

from __future__ import annotations

from . import diffusers_folder, edm_pickle, guided_diffusion, single_file  # noqa: F401  (register their prefixes)
from .base import Denoiser, ModelSpecError, register_resolver, resolve_spec

__all__ = ["Denoiser", "ModelSpecError", "register_resolver", "resolve_spec"]

