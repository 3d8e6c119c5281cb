"""adasde: few-step diffusion sampling with learned coefficients (AdaSDE, AMED) for ComfyUI, WebUI and scripts.

Importing this package imports no host module.  ComfyUI finds the node pack through ``comfy_entrypoint`` below, which
imports ``nodes`` lazily (its extension registers the samplers in ``on_load``, docs/HOSTS.md section B1);
``WEB_DIRECTORY`` serves ``web/`` (the live distillation chart and the toasts).
"""

from ._version import __version__  # noqa: F401

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # noqa: ANN201 - ComfyUI V3 entry point
    """ComfyUI V3 entry point: returns the ComfyExtension of ``nodes/`` (imported only inside ComfyUI)."""
    from .nodes import comfy_entrypoint as _entrypoint

    return await _entrypoint()
