"""adasde: few-step diffusion sampling with learned coefficients (AdaSDE, AMED) for ComfyUI, WebUI and scripts.

Importing this package imports no host module.  ComfyUI finds the node pack through ``comfy_entrypoint`` below, which
imports ``nodes`` lazily; ``WEB_DIRECTORY`` serves ``web/`` (the live distillation chart).  Inside a running ComfyUI
(``comfy.samplers`` and ``folder_paths`` already imported) the dropdown samplers are also registered at import time,
for hosts that do not await ``on_load``.
"""

import sys as _sys

from ._version import __version__  # noqa: F401

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # noqa: ANN201 - ComfyUI V3 entry point
    """ComfyUI V3 entry point: returns the ComfyExtension of ``nodes/`` (imported only inside ComfyUI)."""
    from .nodes import comfy_entrypoint as _entrypoint

    return await _entrypoint()


if "comfy.samplers" in _sys.modules and "folder_paths" in _sys.modules:  # imported by a running ComfyUI
    try:
        from .nodes.host import register as _register

        _register()
    except Exception as _exc:  # noqa: BLE001 - never break ComfyUI's start-up; on_load retries
        import logging as _logging

        _logging.getLogger("adasde").warning("AdaSDE: early sampler registration failed: %s", _exc)
