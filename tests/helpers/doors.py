"""The cross-door matrix (docs/ALGORITHMS.md section 10): tiny models, the coefficient files every door is given, and
:func:`expected` -- the plan the sampling policy makes for each case, which every door (library, CLI, WebUI,
diffusers, ComfyUI) must reproduce.  Everything is built in a temporary folder; nothing touches the network.

Cases (sampler ``adasde``; files written by :func:`write_files` into one folder that is the search path):

* ``auto``: 3 steps, automatic choice (``a3`` wins over ``named3``: same folder, family and prediction; path order).
* ``named``: 3 steps, ``named3`` by name.
* ``wrong_family``: 3 steps, a file of another family by name: refused (one-line ``UsageError``).
* ``wrong_steps``: 4 steps, automatic choice, no 4-step file: untrained, with the policy's note.
* ``named_wrong_steps``: 4 steps, ``named3`` by name: refused.
* ``denoise``: 3 steps at denoise 0.6: the last 3 intervals of the 5-step file's grid, rows 2..4.
* ``split``: 5 steps in two stages, steps 0-2 then 2-5, automatic choice (``five``), rows 0..1 then 2..4.
* ``batch``: as ``auto`` with 4 seeds, run as one batch of 4 and as 4 batches of 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from adasde import policy
from adasde.coefficients import Coefficients, ModelIdentity, save
from adasde.errors import UsageError

CASES = ("auto", "named", "wrong_family", "wrong_steps", "named_wrong_steps", "denoise", "split", "batch")
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
STANDIN = Path(__file__).resolve().parent.parent / "webui_standin"


@dataclass(frozen=True)
class Case:
    """One row of the matrix: what every door is asked for."""

    name: str
    steps: int
    coefficients: str  # "auto" or a key of write_files()
    denoise: float = 1.0
    stages: tuple[tuple[int | None, int | None], ...] = ((None, None),)
    seeds: tuple[int, ...] = (3, 4)


def case(name: str) -> Case:
    return {
        "auto": Case("auto", 3, "auto"),
        "named": Case("named", 3, "named3"),
        "wrong_family": Case("wrong_family", 3, "other"),
        "wrong_steps": Case("wrong_steps", 4, "auto"),
        "named_wrong_steps": Case("named_wrong_steps", 4, "named3"),
        "denoise": Case("denoise", 3, "auto", denoise=0.6),
        "split": Case("split", 5, "auto", stages=((0, 2), (2, None))),
        "batch": Case("batch", 3, "auto", seeds=(5, 6, 7, 8)),
    }[name]


# ------------------------------------------------------------------------------------------------ coefficient files
def trained(info: policy.ModelInfo, steps: int, seed: int, family: str | None = None, afs: bool = True,
            churn: bool = True) -> Coefficients:
    """A coefficient record on the model's default grid (the grid ``policy.plan`` gives for ``steps``)."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(steps, 1, generator=g, dtype=torch.float64)  # noqa: E731
    grid = policy.plan(info, "adasde", steps=steps, coefficients=policy.UNTRAINED).sigmas
    kind, rho = info.schedule()
    return Coefficients(r=u(0.3, 0.7), a=u(0.9, 1.1), c=u(0.95, 1.05),
                        gamma=u(0.02, 0.08) if churn else torch.zeros(steps, 1, dtype=torch.float64),
                        w=torch.ones(steps, 1, dtype=torch.float64), sigmas=grid, schedule=kind, rho=rho, afs=afs,
                        model=ModelIdentity(family=family or info.family, prediction=info.prediction,
                                            sigma_min=info.sigma_min, sigma_max=info.sigma_max))


def write_files(folder: Path, info: policy.ModelInfo, afs: bool = True, churn: bool = True) -> dict[str, Path]:
    """The files of the matrix for one model: ``a3``, ``named3`` (3 steps), ``five`` (5 steps), ``other`` (3 steps,
    another family)."""
    other = "sdxl" if info.family != "sdxl" else "sd15"
    out = {"a3": trained(info, 3, 1, afs=afs, churn=churn), "named3": trained(info, 3, 2, afs=afs, churn=churn),
           "five": trained(info, 5, 3, afs=afs, churn=churn), "other": trained(info, 3, 4, other, afs, churn)}
    return {k: save(v, folder / f"{k}.safetensors") for k, v in out.items()}


def choice(c: Case, files: dict[str, Path]) -> str | Path:
    return policy.AUTO if c.coefficients == "auto" else files[c.coefficients]


def expected(info: policy.ModelInfo, name: str, files: dict[str, Path], dirs: Any = None) -> list[policy.Plan] | str:
    """The policy's plans (one per stage) for case ``name``, or the one-line error text every door must show.
    The hook other doors' tests reuse (ComfyUI: KSampler / KSamplerAdvanced / BasicScheduler / our nodes)."""
    c = case(name)
    try:
        return [policy.plan(info, "adasde", steps=c.steps, coefficients=choice(c, files), dirs=dirs,
                            denoise=c.denoise, start_step=lo, end_step=hi) for lo, hi in c.stages]
    except UsageError as exc:
        return str(exc)


def summary(p: policy.Plan) -> dict[str, Any]:
    """What must agree between doors: grid, file, first trained row, NFE, notes."""
    return {"sigmas": [float(v) for v in p.sigmas], "coefficients": p.coeffs_path if p.trained else None,
            "offset": p.offset, "nfe": p.nfe, "notes": list(p.notes)}


def assert_same(door: dict[str, Any], want: dict[str, Any], rtol: float = 1e-6) -> None:
    """A door's plan summary equals the policy's (sigmas to ``rtol``: hosts hold grids in float32)."""
    got_s, want_s = torch.tensor(door["sigmas"], dtype=torch.float64), torch.tensor(want["sigmas"], dtype=torch.float64)
    assert got_s.shape == want_s.shape, (door["sigmas"], want["sigmas"])
    torch.testing.assert_close(got_s, want_s, rtol=rtol, atol=0)
    for key in ("coefficients", "offset", "nfe", "notes"):
        assert door[key] == want[key], (key, door[key], want[key])


# ------------------------------------------------------------------------------------------------ tiny models
def _tokenizer(root: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"), model_max_length=8)


def _clip(tok, width: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=width, intermediate_size=16,
                         num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tok.get_vocab()) + 2,
                         max_position_embeddings=8, projection_dim=8)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(shift: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[4, 8], norm_num_groups=4, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         sample_size=16, **({"shift_factor": shift, "scaling_factor": 1.5} if shift else {}))


def make_pipeline(kind: str, root: Path, seed: int = 0) -> Path:
    """A ``save_pretrained`` folder of a tiny random ``kind`` pipeline: ``sd15`` (cross-attention width 768, so it is
    recognised as SD1.5), ``sdxl`` or ``sd3`` (SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler, shift 3,
    no T5).  Latents 4 x 8 x 8, images 16 x 16."""
    import diffusers
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tok = _tokenizer(root.parent / f"{root.name}_tok")
    unet_common = dict(block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1, sample_size=8, in_channels=4,
                       out_channels=4, attention_head_dim=2)
    if kind == "sd15":
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=768,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        pipe = diffusers.StableDiffusionPipeline(
            unet=unet, vae=_vae(), text_encoder=_clip(tok, 768), tokenizer=tok, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
            scheduler=diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1))
    elif kind == "sdxl":
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=16,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                                    addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
                                    transformer_layers_per_block=1, use_linear_projection=True)
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=_clip(tok, 8), text_encoder_2=_clip(tok, 8, True), tokenizer=tok, tokenizer_2=tok,
            unet=unet, scheduler=diffusers.EulerDiscreteScheduler(**SD_BETAS))
    elif kind == "sd3":
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
            pos_embed_max_size=16)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(0.25),
            text_encoder=_clip(tok, 8, True), tokenizer=tok, text_encoder_2=_clip(tok, 8, True), tokenizer_2=tok,
            text_encoder_3=None, tokenizer_3=None)
    else:
        raise ValueError(kind)
    pipe.save_pretrained(root)
    return root


class SD3Denoiser:
    """D(x; sigma) = x - sigma v of the tiny SD3 transformer with CFG on ``prompts``: the library-side direct call for
    a flow model (the sampler functions of ``adasde.samplers`` on the policy's plan)."""

    flow = True

    def __init__(self, pipe: Any, prompts: list[str], cfg: float) -> None:
        self.pipe, self.cfg = pipe, cfg
        with torch.no_grad():
            pe, npe, pooled, npooled = pipe.encode_prompt(prompts, prompts, None, do_classifier_free_guidance=True,
                                                          max_sequence_length=8)
        self.embeds, self.pooled = torch.cat([npe, pe]), torch.cat([npooled, pooled])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = sigma.reshape(-1).to(x.dtype).expand(x.shape[0])
        with torch.no_grad():
            v = self.pipe.transformer(hidden_states=torch.cat([x, x]), timestep=torch.cat([s, s]) * 1000,
                                      encoder_hidden_states=self.embeds, pooled_projections=self.pooled,
                                      return_dict=False)[0]
        un, co = v.chunk(2)
        return x - s.view(-1, 1, 1, 1) * (un + self.cfg * (co - un))


# ------------------------------------------------------------------------------------------------ WebUI stand-in
@contextlib.contextmanager
def webui_host(kind: str, models_path: Path) -> Iterator[Any]:
    """The labelled WebUI stand-in (tests/webui_standin) as ``kind`` = ``"a1111"`` or ``"forge"``, with
    ``models_path``; yields ``modules.standin``; restores ``sys.modules`` afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == "modules" or k.startswith("modules.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(STANDIN))
    try:
        import modules.standin as st

        st.configure(kind, models_path=str(models_path))
        yield st
    finally:
        from adasde.webui import core

        core.set_generation(None)
        sys.path.remove(str(STANDIN))
        for k in [k for k in sys.modules if k == "modules" or k.startswith("modules.") or k == "gradio"]:
            del sys.modules[k]
        sys.modules.update(saved)


def run_webui_script(root: Path) -> Any:
    """Execute scripts/adasde.py as the WebUI does (a loose module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adasde.py", root / "scripts" / "adasde.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def env_search_path(folder: Path) -> dict[str, str]:
    """The environment that makes ``folder`` the first search folder of every door."""
    return {**os.environ, "ADASDE_COEFFICIENTS": str(folder)}
