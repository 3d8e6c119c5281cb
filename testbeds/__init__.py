"""Exact Gaussian-mixture testbeds with known ground truth (docs/TESTBEDS.md section 1): exact denoisers (sigma and flow
form), a controlled-error variant, the Fashion-MNIST mixture and exact metrics."""

from .fmnist import fmnist_gmm, load_fashion_mnist, read_idx
from .gmm import (
    GaussianMixture,
    GMMDenoiser,
    GMMFlowDenoiser,
    controlled_error,
    denoiser_error,
    gaussian_ode_solution,
    single_gaussian,
    synthetic_gmm,
)
from .metrics import (
    ExactMoments,
    ExactReference,
    evaluate,
    fd_floor,
    frechet_distance,
    median_bandwidth,
    mmd2_unbiased,
    mode_tv,
    reference_solve,
    rmse,
    sliced_w2,
)

__all__ = [
    "ExactMoments",
    "ExactReference",
    "GMMDenoiser",
    "GMMFlowDenoiser",
    "GaussianMixture",
    "controlled_error",
    "denoiser_error",
    "evaluate",
    "fd_floor",
    "fmnist_gmm",
    "frechet_distance",
    "gaussian_ode_solution",
    "load_fashion_mnist",
    "median_bandwidth",
    "mmd2_unbiased",
    "mode_tv",
    "read_idx",
    "reference_solve",
    "rmse",
    "single_gaussian",
    "sliced_w2",
    "synthetic_gmm",
]
