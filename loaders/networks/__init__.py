"""Our implementations of the research networks the loaders read: the EDM ``SongUNet`` / ``DhariwalUNet``
(:mod:`.edm`) and the guided-diffusion / consistency-models ADM U-Net and classifier (:mod:`.adm`)."""

from .adm import ADMConfig, ADMUNet, infer_config
from .edm import DhariwalUNet, SongUNet

__all__ = ["ADMConfig", "ADMUNet", "DhariwalUNet", "SongUNet", "infer_config"]
