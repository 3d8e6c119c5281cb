"""Host-free samplers in the k-diffusion calling convention (docs/ARCHITECTURE.md, docs/ALGORITHMS.md).

``SAMPLERS`` maps a name to ``sample_NAME(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``;
``nfe(name, sigmas, **options)`` gives its exact number of model calls (N positive grid points; +1 with a trailing 0,
-1 with AFS):

==============  =====================  ==============================================================================
name            NFE                    options
==============  =====================  ==============================================================================
euler           N - 1                  afs
heun            2 (N - 1)              afs
dpm_2           2 (N - 1)              r (0.5 midpoint, 1 Heun), afs
dpmpp_2m/_3m    N - 1                  predict_x0, lower_order_final, thresholding, taylor_d2 (3m), afs
ipndm           N - 1                  max_order <= 4, afs
unipc           N - 1                  max_order <= 3, predict_x0, variant bh2/bh1, lower_order_final, afs
adasde          (1 + K)(N - 1)         coeffs, afs, noise_sampler, s_noise, flow; extra_args["seed"] per sample
amed            2 (N - 1)              predictor, features, coeffs, afs
amed_plugin     2 (N - 1)              base euler/dpm_2/ipndm/dpmpp, predictor, features, coeffs, max_order, ...
==============  =====================  ==============================================================================

Differentiable single steps for distillation: ``adasde_step``, ``amed_step``, ``plugin_step`` (+ ``PluginHistory``).
"""

from .adasde import CoefficientMismatchWarning, adasde_points, adasde_step, resolve_tables, sample_adasde
from .amed import AMEDPredictor, PluginHistory, amed_step, plugin_step, sample_amed, sample_amed_plugin
from .baselines import (
    ab_direction,
    dpm2_step,
    dpmpp_weights,
    euler_step,
    heun_step,
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_ipndm,
    sample_unipc,
    unipc_coefficients,
)
from .common import SeededNoise, afs_direction, append_zero, is_flow_model, to_d
from .registry import SAMPLERS, nfe
from .schedules import SCHEDULES, get_sigmas, teacher_sigmas

__all__ = [
    "AMEDPredictor",
    "CoefficientMismatchWarning",
    "PluginHistory",
    "SAMPLERS",
    "SCHEDULES",
    "SeededNoise",
    "ab_direction",
    "adasde_points",
    "adasde_step",
    "afs_direction",
    "amed_step",
    "append_zero",
    "dpm2_step",
    "dpmpp_weights",
    "euler_step",
    "get_sigmas",
    "heun_step",
    "is_flow_model",
    "nfe",
    "plugin_step",
    "resolve_tables",
    "sample_adasde",
    "sample_amed",
    "sample_amed_plugin",
    "sample_dpm_2",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sample_ipndm",
    "sample_unipc",
    "teacher_sigmas",
    "to_d",
    "unipc_coefficients",
]
