"""Helpers shared by every sampler: sigma grids, directions, seeded per-sample noise, churn and AFS.

Conventions (docs/ARCHITECTURE.md): ``model(x, sigma * s_in, **extra_args)`` returns x0; ``d = (x - x0) / sigma`` is
the probability-flow ODE direction for sigma-form *and* flow models (docs/ALGORITHMS.md section 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import trange

NoiseSampler = Callable[[Any, Any], torch.Tensor]


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` with a trailing 0 (ComfyUI convention)."""
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def to_d(x: torch.Tensor, sigma: Any, denoised: torch.Tensor) -> torch.Tensor:
    """ODE direction dx/dsigma = (x - D(x; sigma)) / sigma."""
    return (x - denoised) / sigma


def sigma_list(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The grid as Python floats: one host sync before the loop instead of one per step.

    Raises ``ValueError`` naming the offending value for an empty, non-finite, negative or non-decreasing grid.
    """
    fix = "pass a strictly decreasing grid of sigmas >= 0, e.g. samplers.get_sigmas('time_uniform', n, 0.002, 80)"
    if torch.is_tensor(sigmas):
        s = [float(v) for v in sigmas.detach().flatten().cpu().tolist()]
    else:
        try:
            s = [float(v) for v in sigmas]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {sigmas!r}; {fix}") from exc
    if len(s) < 2:
        raise ValueError(f"a sigma grid needs at least 2 points, got {len(s)} ({s}); {fix}")
    for i, v in enumerate(s):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"sigmas[{i}] = {v} is not a finite value >= 0; {fix}")
    for i in range(1, len(s)):
        if s[i] >= s[i - 1]:
            raise ValueError(
                f"sigmas must be strictly decreasing, but sigmas[{i}] = {s[i]} >= sigmas[{i - 1}] = {s[i - 1]}; {fix}"
            )
    return s


def split_trailing_zero(s: list[float]) -> tuple[list[float], bool]:
    """(positive part of the grid, whether it ended in 0)."""
    if s[-1] == 0.0:
        return s[:-1], True
    return s, False


def batch_ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def bcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or a per-sample ``[B]`` tensor against ``x`` ([B, ...])."""
    if torch.is_tensor(v) and v.ndim == 1 and v.numel() == x.shape[0] and x.ndim > 1:
        return v.view(-1, *([1] * (x.ndim - 1)))
    return v


def model_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The ``[B]`` sigma vector for ``model(x, sigma_vec)``: one fill for a number, a broadcast for 0-d / ``[B]``."""
    if isinstance(sigma, (int, float)):
        return x.new_full((x.shape[0],), sigma)
    return sigma_input(sigma, batch_ones(x))


def sigma_input(sigma: torch.Tensor | float, s_in: torch.Tensor) -> torch.Tensor:
    """The ``[B]`` sigma vector passed to the model (scalar or per-sample sigma)."""
    if torch.is_tensor(sigma):
        sigma = sigma.to(s_in.dtype)
        return sigma * s_in if sigma.ndim == 0 else sigma.reshape(-1) * s_in
    return sigma * s_in


def axpy(x: torch.Tensor, a: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
    """``x + a * y`` with ``a`` a Python number (one fused kernel), a 0-d tensor or a per-sample ``[B]`` tensor."""
    if isinstance(a, (int, float)):
        return torch.add(x, y, alpha=a)
    return x + bcast(a, x) * y


def lincomb(terms: Sequence[tuple[torch.Tensor | float, torch.Tensor]]) -> torch.Tensor:
    """``sum_j w_j t_j`` for weights that are Python numbers, 0-d or per-sample ``[B]`` tensors.

    With number weights this is one multiply plus one fused add per further term (no temporaries); tensor weights take
    the out-of-place path so that autograd sees every coefficient.
    """
    (w0, t0), rest = terms[0], terms[1:]
    if all(isinstance(w, (int, float)) for w, _ in terms):
        if w0 == 1 and rest:
            out = torch.add(t0, rest[0][1], alpha=rest[0][0])
            rest = rest[1:]
        else:
            out = t0 * w0
        for w, t in rest:
            out.add_(t, alpha=w)
        return out
    out = bcast(w0, t0) * t0
    for w, t in rest:
        out = out + bcast(w, t) * t
    return out


# --------------------------------------------------------------------------------------------- model type detection
def is_flow_model(model: Any) -> bool:
    """Duck-typed detection of flow (rectified-flow, x = (1 - s) x0 + s eps) models: the first boolean ``flow``
    attribute along the ``inner_model`` chain (our ``Denoiser`` declares one).  Host adapters pass ``flow=``
    explicitly (docs/HOSTS.md section A3); anything else counts as a sigma-form model.
    """
    m = model
    for _ in range(6):
        if m is None:
            break
        flag = getattr(m, "flow", None)
        if isinstance(flag, bool):
            return flag
        m = getattr(m, "inner_model", None)
    return False


# ---------------------------------------------------------------------------------------------------- seeded noise
def sample_seeds(seed: Any, batch: int) -> list[int] | None:
    """Per-sample seeds: an int ``s`` gives ``s, s+1, ...``; a list/tensor gives one seed per sample; None -> None."""
    if seed is None:
        return None
    if torch.is_tensor(seed):
        seed = seed.flatten().tolist()
    if isinstance(seed, (list, tuple)):
        if len(seed) == 1 and batch > 1:
            return [int(seed[0]) + i for i in range(batch)]
        if len(seed) != batch:
            raise ValueError(f"got {len(seed)} seeds for a batch of {batch}")
        return [int(v) for v in seed]
    return [int(seed) + i for i in range(batch)]


class SeededNoise:
    """Noise sampler ``(sigma, sigma_next) -> N(0, I)`` with one CPU generator per sample.

    Sample ``i``'s noise depends only on its own seed and on how many draws were made before, so the same seed gives
    the same noise whatever the batch size, the position in the batch or the device.  Offset ``salt`` decorrelates
    this stream from the host's initial-noise stream, which uses the same seed.
    """

    def __init__(self, x: torch.Tensor, seeds: list[int], salt: int = 0x5DE):
        self.shape = tuple(x.shape[1:])
        self.device, self.dtype = x.device, x.dtype
        self.gens = [torch.Generator(device="cpu").manual_seed((s * 1_000_003 + salt) % (2**63)) for s in seeds]

    def __call__(self, sigma: Any = None, sigma_next: Any = None) -> torch.Tensor:
        z = torch.empty((len(self.gens), *self.shape), dtype=torch.float32)
        for row, g in zip(z, self.gens):  # in place: same values as torch.randn(shape, generator=g), no stack copy
            row.normal_(generator=g)
        return z.to(device=self.device, dtype=self.dtype, non_blocking=True)


def default_noise_sampler(x: torch.Tensor, extra_args: dict | None, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    """The host's ``noise_sampler`` if given, else per-sample seeded noise from ``extra_args['seed']``, else the global
    torch RNG (not reproducible per sample; documented)."""
    if noise_sampler is not None:
        return noise_sampler
    seeds = sample_seeds((extra_args or {}).get("seed"), x.shape[0])
    if seeds is not None:
        return SeededNoise(x, seeds)
    return lambda sigma=None, sigma_next=None: torch.randn_like(x)


# --------------------------------------------------------------------------------------------- churn and AFS
def churn(
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_hat: torch.Tensor | float,
    noise: torch.Tensor,
    flow: bool = False,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Raise the noise level of ``x`` from ``sigma`` to ``sigma_hat`` >= sigma (docs/ALGORITHMS.md section 3.2, step 2).

    Sigma form (x = x0 + sigma eps): x + sqrt(sigma_hat^2 - sigma^2) z.  Flow form (x = (1 - sigma) x0 + sigma eps):
    scale by alpha = (1 - sigma_hat) / (1 - sigma), then add sqrt(sigma_hat^2 - alpha^2 sigma^2) z, so that the
    result is again exactly on the flow path at sigma_hat.
    """
    if flow:
        alpha = (1 - sigma_hat) / (1 - sigma) if not (isinstance(sigma, float) and sigma >= 1.0) else 1.0
        var = sigma_hat**2 - (alpha * sigma) ** 2
        std = torch.sqrt(torch.clamp(torch.as_tensor(var), min=0)) if torch.is_tensor(var) else math.sqrt(max(var, 0.0))
        return axpy(x * alpha, s_noise * std, noise)
    var = sigma_hat**2 - sigma**2
    std = torch.sqrt(torch.clamp(var, min=0)) if torch.is_tensor(var) else math.sqrt(max(var, 0.0))
    return axpy(x, s_noise * std, noise)


def afs_direction(x: torch.Tensor, sigma: torch.Tensor | float, flow: bool = False) -> torch.Tensor:
    """Analytical first step (GENIE, docs/ALGORITHMS.md section 5): d_0 = x / sqrt(1 + sigma^2) in sigma form (data mean
    assumed 0), x / sigma for flow models (D ~ 0).  Costs no model call."""
    if flow:
        return x / sigma
    if torch.is_tensor(sigma):
        return x / torch.sqrt(1 + sigma**2)
    return x / math.sqrt(1 + sigma**2)


def afs_denoised(x: torch.Tensor, sigma: torch.Tensor | float, flow: bool = False) -> torch.Tensor:
    """The denoised estimate implied by AFS, ``x - sigma * afs_direction(x, sigma)`` (0 NFE)."""
    if flow:
        return torch.zeros_like(x)
    if torch.is_tensor(sigma):
        return x * bcast(1 - sigma / torch.sqrt(1 + sigma**2), x)
    return x * (1 - sigma / math.sqrt(1 + sigma**2))


# --------------------------------------------------------------------------------------------- shared solver pieces
def inserted_point(
    model: Any,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    s: torch.Tensor | float,
    diff: torch.Tensor,
    a: torch.Tensor | float = 1.0,
    extra_args: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Euler sub-step to an inserted time and one model call there (docs/ALGORITHMS.md sections 3.2, 4.2, 5).

    ``diff = x - D(x; sigma)`` (so ``d = diff / sigma``); ``x_s = x + (s - sigma) d``; the network sees the scaled time
    ``a * s``.  Returns ``(x_s, D(x_s; a s), x_s - D(x_s; a s))``; the caller divides by the unscaled ``s``.
    ``sigma``, ``s`` and ``a`` may be numbers or per-sample ``[B]`` tensors.
    """
    x_s = axpy(x, (s - sigma) / sigma, diff)
    den_s = model(x_s, model_sigma(a * s, x), **(extra_args or {}))
    return x_s, den_s, x_s - den_s


def run_steps(
    model: Any,
    x: torch.Tensor,
    s: list[float],
    step: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    extra_args: dict | None = None,
    callback: Callable[[dict], Any] | None = None,
    disable: bool | None = None,
    afs: bool = False,
    flow: bool | None = False,
    ends_in_zero: bool = False,
) -> torch.Tensor:
    """The loop shared by the deterministic solvers (docs/ARCHITECTURE.md, sampler contract).

    For each interval ``s[i] -> s[i + 1]`` of the positive grid: ``D(x; s[i])`` from one model call (AFS on step 0:
    :func:`afs_denoised`, no call, flow form auto-detected when ``flow`` is None; or the value the previous step
    handed back), then ``step(i, x, denoised) ->
    (x_next, D(x_next; s[i + 1]) or None)`` and the callback.  A trailing 0 adds the final call ``x = D(x; s[-1])``.
    """
    extra_args = {} if extra_args is None else extra_args
    if afs and flow is None:
        flow = is_flow_model(model)
    denoised = None
    for i in trange(len(s) - 1, disable=disable):
        if denoised is None:
            denoised = afs_denoised(x, s[0], flow) if afs and i == 0 else model(x, model_sigma(s[i], x), **extra_args)
        x, next_denoised = step(i, x, denoised)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": s[i], "sigma_hat": s[i]})
        denoised = next_denoised
    if ends_in_zero:
        x = denoise_to_zero(model, x, s[-1], len(s) - 1, extra_args, callback)
    return x


def denoise_to_zero(
    model: Any, x: torch.Tensor, sigma: float, i: int, extra_args: dict | None, callback: Callable[[dict], Any] | None
) -> torch.Tensor:
    """The last interval ``sigma -> 0`` of a grid ending in 0: ``x = D(x; sigma)`` (1 NFE, k-diffusion convention)."""
    denoised = model(x, model_sigma(sigma, x), **(extra_args or {}))
    if callback is not None:
        callback({"i": i, "x": denoised, "denoised": denoised, "sigma": sigma, "sigma_hat": sigma})
    return denoised


def prepare_grid(sigmas: torch.Tensor | Sequence[float]) -> tuple[list[float], bool]:
    """``(positive grid as floats, whether it ended in 0)``, validated once before the loop."""
    return split_trailing_zero(sigma_list(sigmas))
