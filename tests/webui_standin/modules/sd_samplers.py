"""STAND-IN: ``modules.sd_samplers`` registry: ``all_samplers``, ``all_samplers_map``, ``set_samplers()``,
``find_sampler_config``, ``create_sampler``; ``add_sampler`` exists only in Forge mode (``standin.configure``)."""

from __future__ import annotations

from typing import Any

from . import sd_samplers_kdiffusion

all_samplers: list = []
all_samplers_map: dict = {}
samplers: list = []
samplers_for_img2img: list = []
samplers_map: dict = {}
add_sampler_calls = 0


def set_samplers() -> None:
    global samplers, samplers_for_img2img, samplers_map
    samplers = list(all_samplers)
    samplers_for_img2img = list(all_samplers)
    samplers_map = {}
    for s in all_samplers:
        samplers_map[s.name.lower()] = s.name
        for alias in s.aliases:
            samplers_map[alias.lower()] = s.name


def visible_sampler_names() -> list[str]:
    return [s.name for s in samplers]


def find_sampler_config(name: str) -> Any:
    if name is not None and name in all_samplers_map:
        return all_samplers_map[name]
    return all_samplers_map[samplers_map[name.lower()]]


def create_sampler(name: str, model: Any) -> Any:
    config = find_sampler_config(name)
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def _forge_add_sampler(sampler: Any) -> None:
    global add_sampler_calls
    add_sampler_calls += 1
    all_samplers.append(sampler)
    all_samplers_map[sampler.name] = sampler
    set_samplers()


def reset(forge: bool) -> None:
    global add_sampler_calls
    all_samplers[:] = list(sd_samplers_kdiffusion.samplers_data_k_diffusion)
    all_samplers_map.clear()
    all_samplers_map.update({s.name: s for s in all_samplers})
    add_sampler_calls = 0
    if forge:
        globals()["add_sampler"] = _forge_add_sampler
    else:
        globals().pop("add_sampler", None)
    set_samplers()
