"""V3 node ``Distill AdaSDE Coefficients``: learn AdaSDE coefficients for the connected model, inside ComfyUI.

Design (docs/HOSTS.md section B4, the precedent of ComfyUI's own training node): the work runs under
``torch.inference_mode(False)`` + ``enable_grad`` through a ``CFGGuider`` and a small ``comfy.samplers.Sampler``
subclass, so conditioning, CFG, model patches and ComfyUI's memory management (loading/offloading the model) are
handled by ComfyUI itself; the sampler hands the guider-wrapped denoiser to the library's ``distill()``.

* Progress: a ``comfy.utils.ProgressBar`` and ``adasde.distill.progress`` events (loss history and coefficients) for
  the live chart in ``web/adasde.js``.
* Cancel: the progress callback calls ``comfy.model_management.throw_exception_if_processing_interrupted()``; the
  library's checkpoint (``<file>.ckpt`` next to the output) survives and the next run with the same settings resumes.
* The user's model is never changed: training runs on a copy of the module tree whose inference-mode tensors
  are cloned (autograd cannot save those) and whose other tensors are shared read-only, inside a fresh
  ModelPatcher (:func:`training_model`).
* Seed: ``fixed`` after each run (``control_after_generate``), so Cancel then Queue resumes with the same settings.
* Output: written atomically into the ``adasde_coefficients`` folder (listed by every coefficient combo without a
  restart); returns the SAMPLER, the SIGMAS and an IMAGE of the loss curve and coefficients.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from typing import Any

import torch
from comfy_api.latest import io

from ..errors import UsageError
from . import host
from .plot import chart

log = logging.getLogger("adasde")
CATEGORY = "sampling/adasde"
EVENT = "adasde.distill.progress"


def safe_file_name(name: str) -> str:
    """``name`` as a plain ``.safetensors`` file name inside the coefficients folder (no directories)."""
    stem = name.strip()
    if stem.endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if not stem or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,120}", stem) or ".." in stem:
        raise UsageError(
            f"Distill AdaSDE Coefficients: file_name {name!r} is not a plain file name; use letters, digits, "
            f"'-', '_', '.' and spaces only (e.g. 'sd15-nfe5'); it is saved in the {host.FOLDER} folder"
        )
    return stem + ".safetensors"


def checkpoint_path(fname: str) -> str:
    """Where the resumable checkpoint of a run lives: ``<output>/adasde_distill/<file>.ckpt.safetensors`` (outside
    the coefficients folder, so it never shows up in the coefficient combos; survives restarts, unlike temp/)."""
    import folder_paths

    d = os.path.join(folder_paths.get_output_directory(), "adasde_distill")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, fname[: -len(".safetensors")] + ".ckpt.safetensors")


def refine_checkpoint(ckpt_path: str) -> str:
    """The refinement stage's checkpoint next to the distillation's."""
    return ckpt_path.replace(".ckpt.safetensors", ".refine.ckpt.safetensors")


def _refine(den: Any, coeffs: Any, trajectories: int, batch: int, seed: int, device: Any, ckpt_path: str,
            resume: bool) -> Any:
    """The library's grid refinement (docs/ALGORITHMS.md section 3.9) with a ComfyUI progress bar; Cancel keeps its
    checkpoint."""
    import comfy.model_management as mm
    import comfy.utils

    from ..distill.refine import refine

    bar: dict[str, Any] = {}

    def progress(p: dict[str, Any]) -> None:
        total = int(p.get("total", p.get("iterations", 1)))
        done = int(p.get("done", p.get("iteration", 0)))
        if bar.get("phase") != p["phase"]:
            bar.update(phase=p["phase"], pbar=comfy.utils.ProgressBar(total))
        bar["pbar"].update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    rck = refine_checkpoint(ckpt_path)
    return refine(den, coeffs, trajectories=trajectories, heldout=max(batch, trajectories // 4), batch=batch,
                  seed=seed, device=device, checkpoint=rck, resume=resume and os.path.isfile(rck),
                  checkpoint_every=1, progress=progress)


def _make_denoiser(guider_call: Any, info: Any, shape: tuple[int, ...], name: str | None) -> Any:
    """A library ``Denoiser`` around the CFG-combined ComfyUI model call, with the UNet bottleneck captured; its
    identity and default grid are the policy's ``ModelInfo`` of the model (docs/ALGORITHMS.md section 10)."""
    from ..loaders import Denoiser

    cap = host.BottleneckCapture()

    class ComfyDenoiser(Denoiser):
        sigma_min = info.sigma_min
        sigma_max = info.sigma_max
        sample_shape = tuple(shape)
        family = info.family
        prediction = info.prediction
        flow = info.flow
        model_sigmas = info.model_sigmas
        default_schedule = info.schedule()

        def denoise(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
            return guider_call(x, sigma, cap)

        def bottleneck(self) -> torch.Tensor | None:
            return cap()

        def identity(self) -> dict[str, Any]:
            d = super().identity()
            if name:
                d["name"] = name
            return d

    return ComfyDenoiser()


def _coeff_lists(c: Any) -> dict[str, list[list[float]]]:
    """Per-step coefficient tables as nested lists (from a Coefficients record or a progress snapshot dict)."""
    out = {}
    for k in ("r", "a", "c", "gamma", "w"):
        t = getattr(c, k, None) if c is not None and not isinstance(c, dict) else (c or {}).get(k)
        if t is not None and not torch.is_tensor(t):
            t = torch.as_tensor(t, dtype=torch.float32)
        if torch.is_tensor(t) and t.numel():
            out[k] = t.detach().float().reshape(t.shape[0], -1).cpu().tolist()
    return out


def _send(event: dict[str, Any]) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(EVENT, event)
    except Exception:  # noqa: BLE001 - no server (in-process use)
        pass


def _encode_prompts(clip: Any, text: str) -> list | None:
    """A multi-line prompt list -> one CONDITIONING whose batch holds one prompt per line (cycled over the
    distillation batch by ComfyUI's cond batching)."""
    lines = [t.strip() for t in (text or "").splitlines() if t.strip()]
    if clip is None or not lines:
        return None
    conds, pooled = [], []
    for t in lines:
        c = clip.encode_from_tokens_scheduled(clip.tokenize(t))
        conds.append(c[0][0])
        if c[0][1].get("pooled_output") is not None:
            pooled.append(c[0][1]["pooled_output"])
    n = math.lcm(*[c.shape[1] for c in conds])
    conds = [c.repeat(1, n // c.shape[1], 1) for c in conds]
    extra = {"pooled_output": torch.cat(pooled)} if len(pooled) == len(conds) else {}
    return [[torch.cat(conds), extra]]


def _module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree with its own parameter, buffer and submodule tables: inference-mode tensors are
    cloned into ordinary ones (same values), all other tensors are shared and only read."""
    new = copy.copy(module)
    new._parameters = {k: torch.nn.Parameter(p.clone(), requires_grad=False) if p is not None and p.is_inference()
                       else p for k, p in module._parameters.items()}
    new._buffers = {k: b.clone() if b is not None and b.is_inference() else b for k, b in module._buffers.items()}
    new._modules = {k: _module_copy(m) if m is not None else None for k, m in module._modules.items()}
    return new


def training_model(model: Any) -> Any:
    """A ModelPatcher for the training path that shares no mutable state with the user's ``model``: ComfyUI first
    unloads the loaded models (so the weights are the unpatched ones), then the module tree is copied
    (:func:`_module_copy`) and wrapped in a clone with its own backup tables (docs/HOSTS.md section B4)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    work = _module_copy(model.model)
    return model.clone(model_override=(work, ({}, {}, {}, set())))


class DistillAdaSDE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDEDistill",
            display_name="Distill AdaSDE Coefficients",
            category=CATEGORY,
            search_aliases=["adasde", "amed", "distill", "train coefficients"],
            description="Learn AdaSDE coefficients for this model (teacher trajectories on a fine grid, student "
                        "matched at every step). Progress and a live chart on the node; Cancel keeps a checkpoint "
                        "and the next run resumes. The file appears in the AdaSDE combos without a restart.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", optional=True),
                io.Conditioning.Input("negative", optional=True),
                io.Clip.Input("clip", optional=True, tooltip="Encodes 'prompts' (one per line) when connected."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="One prompt per line (needs CLIP); used instead of 'positive'."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1),
                io.Int.Input("width", default=512, min=16, max=4096, step=8),
                io.Int.Input("height", default=512, min=16, max=4096, step=8),
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Student sampling steps (grid intervals); a 3-step file with AFS runs at NFE 5."),
                io.Int.Input("target_nfe", default=0, min=0, max=100,
                             tooltip="If > 0, overrides steps: grid size and AFS chosen to use exactly this NFE."),
                io.Int.Input("teacher_M", default=3, min=0, max=20, tooltip="Teacher points per student interval."),
                io.Combo.Input("teacher", options=["dpm2", "heun", "dpmpp", "euler", "student"], default="dpm2",
                               tooltip="Teacher solver on the fine grid (paper: dpm2, 4 NFE per interval)."),
                io.Int.Input("batch", default=4, min=1, max=256),
                io.Int.Input("trajectories", default=64, min=1, max=1_000_000),
                io.Float.Input("learning_rate", default=0.2, min=1e-5, max=2.0, step=0.001,
                               tooltip="Adam learning rate (paper: 0.2, cosine-annealed)."),
                io.Boolean.Input("afs", default=True, tooltip="Analytical first step (ignored with target_nfe, "
                                                              "which picks it from the NFE parity)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             control_after_generate=io.ControlAfterGenerate.fixed,
                             tooltip="Seed of the teacher trajectories; kept fixed so a cancelled run resumes."),
                io.Int.Input("refine_trajectories", default=64, min=0, max=1_000_000, optional=True,
                             tooltip="Then learn the time grid with the coefficients against converged 35-NFE Heun "
                                     "endpoints on this many trajectories; kept only when a held-out loss falls. "
                                     "0 = the paper's fixed grid."),
                io.String.Input("file_name", default="adasde-distilled"),
                io.Boolean.Input("resume", default=True, tooltip="Resume from the checkpoint of a cancelled run."),
            ],
            outputs=[io.Sampler.Output(), io.Sigmas.Output(), io.Image.Output(display_name="chart")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, cfg: float, width: int, height: int, steps: int, target_nfe: int, teacher_M: int,
                teacher: str, batch: int, trajectories: int, learning_rate: float, afs: bool, seed: int,
                file_name: str, resume: bool, positive=None, negative=None, clip=None,
                prompts: str = "", refine_trajectories: int = 64) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.samplers
        import comfy.utils

        from ..coefficients import save
        from ..distill import distill
        from ..samplers import append_zero
        from ..samplers.presets import grid_for_nfe

        fname = safe_file_name(file_name)
        out_path = os.path.join(host.output_folder(), fname)
        ckpt_path = checkpoint_path(fname)
        node_id = str(cls.hidden.unique_id) if cls.hidden is not None else None
        afs = grid_for_nfe("adasde", target_nfe)[1] if target_nfe > 0 else bool(afs)

        with torch.inference_mode(False), torch.enable_grad():
            pos = _encode_prompts(clip, prompts) or positive
            if pos is None:
                raise UsageError("Distill AdaSDE Coefficients: connect 'positive' CONDITIONING, or a CLIP plus at "
                                 "least one line in 'prompts'")
            neg = negative
            if neg is None:
                if clip is None:
                    raise UsageError("Distill AdaSDE Coefficients: connect 'negative' CONDITIONING or a CLIP (the "
                                     "empty prompt is used as negative)")
                neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
            mp = training_model(model)
            info = host.model_info(mp)
            latent_format = mp.get_model_object("latent_format")
            channels = int(getattr(latent_format, "latent_channels", 4))
            shape = (channels, height // 8, width // 8)
            guider = comfy.samplers.CFGGuider(mp)
            guider.set_conds(pos, neg)
            guider.set_cfg(cfg)
            state: dict[str, Any] = {"losses": [], "coeffs": None}
            pbar = comfy.utils.ProgressBar(trajectories)

            def progress(p: dict[str, Any]) -> None:  # the engine's progress record (distill/engine.py run)
                done, total, loss = int(p["trajectories"]), int(trajectories), float(p["loss"])
                state["losses"].append(loss)
                state["coeffs"] = p["coefficients"]
                pbar.update_absolute(min(done, total), total)
                _send({"node": node_id, "done": done, "total": total, "loss": loss,
                       "losses": state["losses"][-500:], "coeffs": _coeff_lists(state["coeffs"]), "file": fname})
                mm.throw_exception_if_processing_interrupted()

            result: dict[str, Any] = {}

            class _DistillSampler(comfy.samplers.Sampler):
                def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                           denoise_mask=None, disable_pbar=False):
                    opts = extra_args.get("model_options") or {}
                    guider_seed = extra_args.get("seed")

                    def call(x: torch.Tensor, sigma: torch.Tensor, cap: host.BottleneckCapture) -> torch.Tensor:
                        ex = cap.install({"model_options": opts, "seed": guider_seed})
                        return model_wrap(x, sigma, **ex)

                    den = _make_denoiser(call, info, shape, getattr(mp.model, "model_name", None))
                    kw: dict[str, Any] = {
                        "shape": shape, "afs": afs, "M": teacher_M, "teacher": teacher, "batch": batch,
                        "trajectories": trajectories,
                        "lr": learning_rate, "seed": seed, "device": noise.device, "progress": progress,
                        "checkpoint": ckpt_path, "resume": bool(resume) and os.path.isfile(ckpt_path),
                        "checkpoint_every": 1, "name": fname,
                    }
                    if target_nfe > 0:
                        kw["nfe"] = target_nfe
                    else:
                        kw["num_steps"] = steps + 1
                    result["coeffs"] = distill(den, **kw)
                    if refine_trajectories > 0:
                        result["coeffs"] = _refine(den, result["coeffs"], refine_trajectories, batch, seed,
                                                   noise.device, ckpt_path, bool(resume))
                    return latent_image

            mm.load_models_gpu([mp])
            device = mm.get_torch_device()
            dummy = torch.zeros((1, *shape), device="cpu")
            grid = append_zero(torch.tensor([info.sigma_max, info.sigma_min]))
            guider.sample(dummy, dummy, _DistillSampler(), grid.to(device), seed=seed)
            coeffs = result["coeffs"]

        ident = getattr(coeffs, "model", None)
        if ident is not None:
            for k in ("family", "prediction"):
                if getattr(ident, k, "unknown") in (None, "unknown"):
                    setattr(ident, k, getattr(info, k))
        save(coeffs, out_path)
        for path in (ckpt_path, refine_checkpoint(ckpt_path)):
            if os.path.exists(path):
                os.remove(path)
        losses = state["losses"]
        img = chart(losses, coeffs, title=f"{fname}: {coeffs.steps} steps, NFE {coeffs.nfe}")
        sampler = comfy.samplers.KSAMPLER(host.comfy_sample_adasde, extra_options={"coeffs": coeffs})
        sigmas = coeffs.sigmas.flatten().float().cpu()  # the trained grid, as AdaSDE Sigmas emits it
        summary = {"file": fname, "nfe": int(coeffs.nfe), "steps": int(coeffs.steps),
                   "final_loss": losses[-1] if losses else None, "losses": losses[-500:],
                   "coeffs": _coeff_lists(coeffs)}
        _send({"node": node_id, "done": trajectories, "total": trajectories, "finished": True, **summary})
        return io.NodeOutput(sampler, sigmas, img, ui={"adasde_distill": [summary]})
