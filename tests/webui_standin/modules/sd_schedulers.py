"""STAND-IN: ``modules.sd_schedulers`` (A1111 1.9+): ``Scheduler``, ``schedulers``, ``schedulers_map``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: Any
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list | None = None


def karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]).float().to(device)


schedulers = [Scheduler("automatic", "Automatic", None), Scheduler("karras", "Karras", karras, default_rho=7.0)]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
