"""Per-dataset settings of the AdaSDE release (docs/ALGORITHMS.md section 11, "Guidance and presets").

``PRESETS[name]`` holds what ``--preset name`` fills into ``adasde distill``, ``adasde sample`` and ``adasde fid
sample`` when the corresponding flag is not given: the grid (schedule, rho), the distillation settings (teacher, M,
AFS, s_c, s_a, gamma_max, learning rate and its cosine annealing, batch, trajectories), the guidance type and rate,
and the solver form of the DPM-Solver++ / UniPC baselines on latent models (noise prediction, max_order,
lower_order_final).  Flags given on the command line always win.
"""

from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------------------------------ command-line flags
GUIDANCE = ("cfg", "cg", "uncond")


PRESET_FIELDS = {  # argparse dest -> Preset field, per command kind
    "distill": {"schedule": "schedule", "rho": "rho", "teacher": "teacher", "M": "M", "afs": "afs",
                "scale_dir": "scale_dir", "scale_time": "scale_time", "gamma_max": "gamma_max", "lr": "lr",
                "cosine": "cosine", "batch": "batch", "trajectories": "trajectories", "guidance": "guidance",
                "guidance_rate": "guidance_rate"},
    "sample": {"schedule": "schedule", "rho": "rho", "guidance": "guidance", "guidance_rate": "guidance_rate"},
}

ADASDE_ONLY = ("teacher", "M", "scale_dir", "scale_time", "gamma_max", "lr", "cosine")


def add_guidance_arguments(parser: argparse.ArgumentParser, kind: str = "sample", prompts: bool = True) -> None:
    """Add ``--preset``, ``--guidance``, ``--guidance-rate``, ``--classes``, ``--classifier`` (and, with ``prompts``,
    ``--prompts`` / ``--negative-prompt`` / ``--cfg``) to ``parser``, and make ``--preset`` fill the flags of
    :data:`PRESET_FIELDS` that were not given.  Call it after ``parser.set_defaults(func=...)``: the command's
    function is wrapped so that the fill-in happens before it runs."""
    parser.add_argument("--preset", default=None, choices=tuple(PRESETS),
                        help="the AdaSDE release's settings for a dataset (schedule, rho, teacher, M, AFS, guidance, "
                        "budget; docs/ALGORITHMS.md section 11); flags given explicitly override it")
    parser.add_argument("--guidance", default=None, choices=GUIDANCE,
                        help="cfg (classifier-free, text models with --prompts), cg (classifier guidance with "
                        "--classifier and --classes) or uncond (default: cfg with prompts, cg with a classifier)")
    parser.add_argument("--guidance-rate", type=float, default=None, metavar="R",
                        help="guidance strength: CFG scale (default 7.5) or classifier-guidance rate (default 1, 4 "
                        "for builtin:fmnist)")
    parser.add_argument("--classes", default=None, metavar="LIST",
                        help="class labels, e.g. 7 or 0,3,7 (seed s gets classes[s mod len]); class-conditional "
                        "models and --guidance cg")
    parser.add_argument("--classifier", default=None, metavar="SPEC",
                        help="noise-aware classifier for --guidance cg: builtin:fmnist-noisy-classifier (default for "
                        "builtin:fmnist), adm:FILE.pt or FILE.pt (guided-diffusion classifier)")
    if prompts:
        parser.add_argument("--prompts", default=None, metavar="FILE",
                            help="prompt file: .txt (one per line) or .csv with a 'caption' column (MS-COCO layout)")
        parser.add_argument("--negative-prompt", default=None)
        parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (= "
                            "--guidance-rate with --guidance cfg; default 7.5)")
    dests = PRESET_FIELDS["distill" if kind == "distill" else "sample"]
    originals = {d: parser.get_default(d) for d in dests}
    parser.set_defaults(**{d: None for d in dests})
    func = parser.get_default("func")

    def run(args: argparse.Namespace) -> Any:
        apply_preset(args, kind, originals)
        return func(args)

    if func is not None:
        parser.set_defaults(func=run)


def apply_preset(args: argparse.Namespace, kind: str = "sample", originals: dict[str, Any] | None = None
                 ) -> Preset | None:
    """Fill the flags of ``args`` left at None from ``--preset`` (then from ``originals``, the parser's own
    defaults); ``--cfg`` given and ``--guidance-rate`` not: the CFG scale is the rate."""
    preset = get_preset(getattr(args, "preset", None))
    cfg = getattr(args, "cfg", None)
    if getattr(args, "guidance_rate", None) is None and cfg is not None:
        if getattr(args, "guidance", None) not in (None, "cfg"):
            raise UsageError(f"--cfg is the classifier-free guidance scale; with --guidance {args.guidance} use "
                             "--guidance-rate")
        args.guidance_rate = cfg
    own_schedule = getattr(args, "schedule", None) is not None
    adasde = getattr(args, "method", "adasde") == "adasde"
    for dest, name in PRESET_FIELDS["distill" if kind == "distill" else "sample"].items():
        if getattr(args, dest, None) is None:
            value = getattr(preset, name) if preset is not None else None
            if dest in ADASDE_ONLY and not adasde:
                value = None  # the release's AdaSDE settings; AMED keeps its own defaults
            if dest == "rho" and own_schedule:
                value = None  # a schedule given on the command line keeps its own default exponent
            if value is None and originals is not None:
                value = originals.get(dest)
            setattr(args, dest, value)
    return preset


def preset_of(args: argparse.Namespace) -> Preset | None:
    return get_preset(getattr(args, "preset", None))
