"""The one generation loop: (model, plan, seeds, conditioning) -> images, batched and seeded per sample
(docs/ARCHITECTURE.md, "Generation").

* Initial noise: ``x_T = sigma_0 z`` with ``sigma_0`` the first point of the plan's grid and ``z`` drawn from a CPU
  generator seeded by the image's own seed; stochastic samplers get the per-image seeds in ``extra_args["seed"]``.
  An image therefore depends only on its seed (and prompt), not on the batch size or the number of processes.
* Every step's denoised output is checked for NaN / inf; a failure names the step, the sigma and the seeds, and the
  batch is not returned (nothing is written for it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import AdasdeError
from ..policy import Plan
from ..samplers.presets import initial_noise
from ..samplers.registry import SAMPLERS

ExtraFor = Callable[[list[int]], dict[str, Any]]


class NonFiniteSampleError(AdasdeError, FloatingPointError):
    """The model returned NaN or inf while sampling; nothing was written for the batch."""


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float NCHW -> uint8 (round to nearest)."""
    return (images.float().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)


def _finite_check(seeds: list[int], plan: Plan) -> Callable[[dict[str, Any]], None]:
    def check(info: dict[str, Any]) -> None:
        d = info.get("denoised")
        if d is not None and not bool(torch.isfinite(d).all()):
            sigma = float(info.get("sigma", math.nan))
            raise NonFiniteSampleError(
                f"{plan.sampler}: the model returned NaN/inf at step {int(info.get('i', -1)) + 1} of {plan.steps} "
                f"(sigma {sigma:.4g}) for seeds {seeds[0]}..{seeds[-1]}; nothing was written for them. Check the "
                "model file, or sample in fp32 (--dtype fp32)")
    return check


def sample_batch(model: Any, plan: Plan, seeds: Sequence[int], extra: dict[str, Any] | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Samples (model space, float) of ``seeds`` following ``plan``; raises :class:`NonFiniteSampleError`."""
    s = [int(v) for v in seeds]
    sigmas = plan.sigmas.to(device=device, dtype=torch.float32)
    dev = device if device is not None else sigmas.device
    x = initial_noise(s, tuple(model.sample_shape), float(plan.sigmas[0]), device=dev)
    args = {**(extra or {}), "seed": s}
    with torch.no_grad():
        y = SAMPLERS[plan.sampler](model, x, sigmas, extra_args=args, callback=_finite_check(s, plan), disable=True,
                                   **plan.options(model))
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteSampleError(f"{plan.sampler}: the result for seeds {s[0]}..{s[-1]} contains NaN/inf; nothing "
                                   "was written for them. Check the model file, or sample in fp32 (--dtype fp32)")
    return y


def generate(
    model: Any,
    plan: Plan,
    seeds: Sequence[int],
    *,
    batch: int = 8,
    extra_for: ExtraFor | None = None,
    device: torch.device | str | None = None,
    decode: bool = True,
    progress: bool = True,
    desc: str | None = None,
    done: int = 0,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(seeds, images)`` batch by batch: uint8 ``[B, C, H, W]`` on the CPU (``decode=True``, through
    ``model.decode``) or the raw samples.  ``extra_for(seeds)`` adds conditioning (prompts, CFG, classes);
    ``done`` skips the first seeds (a resumed run) while the progress bar counts them."""
    if batch < 1:
        from ..errors import UsageError

        raise UsageError(f"--batch must be >= 1, got {batch}")
    seeds = [int(s) for s in seeds]
    with tqdm(total=len(seeds), initial=done, desc=desc or f"{plan.sampler} NFE {plan.nfe}", unit="img",
              disable=not progress) as bar:
        for i in range(done, len(seeds), batch):
            s = seeds[i: i + batch]
            y = sample_batch(model, plan, s, extra_for(s) if extra_for is not None else None, device)
            if decode:
                with torch.no_grad():
                    y = to_uint8(model.decode(y)).cpu()
            bar.update(len(s))
            yield s, y


def generate_all(model: Any, plan: Plan, seeds: Sequence[int], **kw: Any) -> torch.Tensor:
    """Every image of ``seeds`` in one tensor (see :func:`generate`)."""
    return torch.cat([imgs for _, imgs in generate(model, plan, seeds, **kw)])
