"""V3 nodes: ``AdaSDE Sampler``, ``AMED Sampler`` (SAMPLER) and ``AdaSDE Sigmas`` (SIGMAS).

Thin wrappers: the samplers are ``comfy.samplers.KSAMPLER(host.comfy_sample_*, options)``; the grid and the
coefficient choice are the library's sampling policy (``policy.plan``, docs/ALGORITHMS.md section 10), bottleneck
capture and per-image seeds live in :mod:`.host`, the mathematics in the library (``samplers/``).
"""

from __future__ import annotations

from collections.abc import Callable

from comfy_api.latest import io

from . import host

CATEGORY = "sampling/adasde"


def _coeff_combo(tooltip: str) -> io.Combo.Input:
    return io.Combo.Input("coefficients", options=[host.AUTO, host.UNTRAINED, *host.coefficient_files()],
                          default=host.AUTO, tooltip=tooltip)


def _afs_combo(**tooltip: str) -> io.Combo.Input:
    return io.Combo.Input("afs", options=["auto", "on", "off"], default="auto", **tooltip)


def _ksampler(sample_fn: Callable, coefficients: str, afs: str, **options: float) -> io.NodeOutput:
    """A SAMPLER node's output: ComfyUI's KSAMPLER over ``sample_fn`` with the chosen coefficients and AFS."""
    import comfy.samplers

    opts = {"coeffs": host.choice(coefficients), "afs": {"auto": None, "on": True, "off": False}[afs], **options}
    return io.NodeOutput(comfy.samplers.KSAMPLER(sample_fn, extra_options=opts))


class AdaSDESampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDESampler",
            display_name="AdaSDE Sampler",
            category=CATEGORY,
            search_aliases=["adasde", "amed", "few-step sampler", "learned coefficients"],
            description="AdaSDE (NeurIPS 2025) few-step SDE sampler with learned per-step coefficients. Use with "
                        "'AdaSDE Sigmas' (or the 'adasde' scheduler) so the grid matches the coefficients.",
            inputs=[
                _coeff_combo("'auto' picks a file for the model's family, prediction type and sigma grid; "
                             "'untrained' = AdaSDE with r=0.5, a=c=1, gamma=0 (DPM-Solver-2)."),
                _afs_combo(tooltip="Analytical first step (saves one model call); 'auto' = as trained."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Scale of the churn noise (1 = as trained, 0 = deterministic)."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, coefficients: str, afs: str, s_noise: float) -> io.NodeOutput:
        return _ksampler(host.comfy_sample_adasde, coefficients, afs, s_noise=float(s_noise))


class AMEDSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AMEDSampler",
            display_name="AMED Sampler",
            category=CATEGORY,
            search_aliases=["adasde", "amed", "few-step sampler", "learned coefficients"],
            description="AMED-Solver (CVPR 2024): learned mean-direction steps; the predictor reads the UNet "
                        "bottleneck (SD1.x/SDXL) through an output-block patch on a copy of the model options.",
            inputs=[
                _coeff_combo("AMED coefficient file; 'auto' picks one for the model and sigma grid."),
                _afs_combo(),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, coefficients: str, afs: str) -> io.NodeOutput:
        return _ksampler(host.comfy_sample_amed, coefficients, afs)


class AdaSDESigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDESigmas",
            display_name="AdaSDE Sigmas",
            category=CATEGORY,
            search_aliases=["adasde", "scheduler", "trained grid"],
            description="The sigma grid of the sampling policy: the grid a coefficient file was trained on, or the "
                        "model's default grid when 'auto' finds no file; steps + 1 values from sigma_max, like the "
                        "'adasde' scheduler.",
            inputs=[
                io.Model.Input("model"),
                _coeff_combo("'auto' = the file for this model and step count (as the 'adasde' scheduler); a named "
                             "file must have been trained for this many steps (steps / denoise with denoise < 1)."),
                io.Int.Input("steps", default=5, min=1, max=1000, tooltip="Sampling steps (grid intervals)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="< 1: the last 'steps' intervals of a steps / denoise grid (img2img)."),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, coefficients: str, steps: int, denoise: float) -> io.NodeOutput:
        from ..policy import plan

        info = host.model_info(model)
        c = host.choice(coefficients)
        if c == host.AUTO and denoise >= 1.0:
            p = host.scheduler_plan(info, steps)
        else:
            kind = c.kind if not isinstance(c, str) else "adasde"
            p = plan(info, kind, steps=steps, coefficients=c, denoise=float(denoise), dirs=host.coefficient_dirs())
        return io.NodeOutput(p.sigmas.float().cpu())
