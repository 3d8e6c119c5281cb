"""Our implementations of the research networks the loaders read: the EDM ``SongUNet`` / ``DhariwalUNet``
(:mod:`.edm`) and the guided-diffusion / consistency-models ADM U-Net and classifier (:mod:`.adm`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..checkpoint import load_checked
from .adm import ADMConfig, ADMUNet, infer_config
from .edm import DhariwalUNet, SongUNet


def build_and_load(build: Callable[[], nn.Module], sd: dict[str, torch.Tensor], source: str, what: str) -> nn.Module:
    """``build()`` on the meta device, the file's tensors checked against it (names and shapes; a one-line
    ``ModelSpecError`` otherwise), then the tensors assigned: nothing is allocated before the file is known to fit,
    and no random initialisation is spent on weights that are overwritten."""
    with torch.device("meta"):
        net = build()
    with warnings.catch_warnings():  # copying into meta tensors is a no-op (and says so); only the check matters
        warnings.simplefilter("ignore")
        load_checked(net, sd, source, what)
    net.load_state_dict(sd, assign=True)
    stray = [k for k, v in list(net.named_parameters()) + list(net.named_buffers()) if v.is_meta]
    if stray:  # every tensor of our modules is persistent, so none should be left
        raise RuntimeError(f"{what}: tensors without values after loading: {stray[:4]}")
    return net


__all__ = ["ADMConfig", "ADMUNet", "DhariwalUNet", "SongUNet", "build_and_load", "infer_config"]
