"""ComfyUI node pack (V3).  Imported only inside ComfyUI, lazily, by the root ``comfy_entrypoint``.

Registration of the ``adasde`` / ``amed`` samplers, the ``adasde`` scheduler and the ``adasde_coefficients`` folder
happens in one place, :meth:`AdaSDEExtension.on_load`, which ComfyUI 0.30 awaits before it reads the node list or
serves a request (docs/HOSTS.md section B1).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import host


class AdaSDEExtension(ComfyExtension):
    async def on_load(self) -> None:
        host.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .builtin_model import BuiltinModelLoader, EmptyBuiltinLatent
        from .distill_node import DistillAdaSDE
        from .fid import FIDEvaluate, SaveFIDReferenceStats
        from .sampling import AdaSDESampler, AdaSDESigmas, AMEDSampler

        return [AdaSDESampler, AdaSDESigmas, AMEDSampler, DistillAdaSDE, FIDEvaluate, SaveFIDReferenceStats,
                BuiltinModelLoader, EmptyBuiltinLatent]


async def comfy_entrypoint() -> AdaSDEExtension:
    return AdaSDEExtension()
