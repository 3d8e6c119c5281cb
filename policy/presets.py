"""Per-dataset settings of the AdaSDE release (docs/ALGORITHMS.md section 11, "Guidance and presets").

``PRESETS[name]`` holds what ``--preset name`` fills into ``adasde distill``, ``adasde sample`` and ``adasde fid
sample`` when the corresponding flag is not given: the grid (schedule, rho), the distillation settings (teacher, M,
AFS, s_c, s_a, gamma_max, learning rate and its cosine annealing, batch, trajectories), the guidance type and rate,
and the solver form of the DPM-Solver++ / UniPC baselines on latent models (noise prediction, max_order,
lower_order_final).  Flags given on the command line always win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Preset:
    """One dataset's release settings (field meanings: module docstring)."""

    name: str
    model: str  # the release's checkpoint file (documentation; the user's --model names the local copy)
    schedule: str = "time_uniform"
    rho: float = 1.0
    teacher: str = "dpm2"
    M: int = 3
    afs: bool = True
    scale_dir: float = 0.05
    scale_time: float = 0.2
    gamma_max: float = 0.01
    lr: float = 0.2
    cosine: bool = True
    batch: int = 32
    trajectories: int = 10_000
    guidance: str = "uncond"
    guidance_rate: float | None = None
    class_conditional: bool = False
    solver_options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LATENT_SOLVER = {"predict_x0": False, "max_order": 3}
_SD_SOLVER = {"predict_x0": False, "max_order": 2, "lower_order_final": True}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cifar10", "edm-cifar10-32x32-uncond-vp.pkl", gamma_max=0.02),
    Preset("ffhq", "edm-ffhq-64x64-uncond-vp.pkl"),
    Preset("afhqv2", "edm-afhqv2-64x64-uncond-vp.pkl"),
    Preset("imagenet64", "edm-imagenet-64x64-cond-adm.pkl", class_conditional=True),
    Preset("lsun_bedroom", "edm_bedroom256_ema.pt"),
    Preset("imagenet256", "256x256_diffusion.pt + 256x256_classifier.pt", guidance="cg", guidance_rate=1.0,
           class_conditional=True),
    Preset("lsun_bedroom_ldm", "CompVis lsun_bedrooms + vq-f4", schedule="discrete",
           solver_options=_LATENT_SOLVER),
    Preset("ms_coco", "v1-5-pruned-emaonly.ckpt + MS-COCO val2014 30k captions", schedule="discrete",
           guidance="cfg", guidance_rate=7.5, lr=0.01, cosine=False, trajectories=5_000, solver_options=_SD_SOLVER),
)}

# solvers whose keyword options the solver form applies to (samplers/baselines.py)
SOLVER_OPTION_KEYS = {"dpmpp_2m": ("predict_x0", "lower_order_final"), "dpmpp_3m": ("predict_x0", "lower_order_final"),
                      "unipc": ("predict_x0", "max_order", "lower_order_final"), "ipndm": ("max_order",)}


def get_preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (None for None); an unknown name is a :class:`UsageError` listing the known ones."""
    if name is None:
        return None
    if name not in PRESETS:
        raise UsageError(f"--preset {name!r} is not known; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def solver_options(preset: Preset | None, sampler: str) -> dict[str, Any]:
    """The preset's solver-form options that ``sampler`` accepts (empty for AdaSDE / AMED and pixel presets)."""
    if preset is None:
        return {}
    keys = SOLVER_OPTION_KEYS.get(sampler, ())
    opts = {k: v for k, v in preset.solver_options.items() if k in keys}
    if sampler == "ipndm" and "max_order" in opts:
        opts["max_order"] = min(int(opts["max_order"]), 4)
    return opts
