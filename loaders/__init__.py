"""Model specs -> ``Denoiser`` (docs/ARCHITECTURE.md, "The model contract").

Each resolver module registers its spec prefix when imported: ``diffusers:``, ``single-file:``, ``edm:``, ``adm:``
and ``cm:`` below, ``builtin:`` and ``testbed:`` on the first :func:`load_model` (their models subclass
:class:`Denoiser`, so they import this package).  Optional heavy libraries (diffusers, transformers) are imported
inside the loading functions.
"""

from __future__ import annotations

from . import diffusers_folder, edm_pickle, guided_diffusion, single_file  # noqa: F401  (register their prefixes)
from .base import Denoiser, ModelSpecError, load_model, register_resolver

__all__ = ["Denoiser", "ModelSpecError", "load_model", "register_resolver"]

