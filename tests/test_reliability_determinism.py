"""Batch-size determinism of every sampler (docs: README, "Determinism").

The sampler arithmetic is exactly batch-invariant: with a model whose per-sample output does not depend on the batch
size, a seed gives the same bits at batch 8 and batch 1, and at a fixed batch size the bits do not depend on the other
seeds in the batch or their order.  What is not exact is the model itself on CPU: BLAS evaluates a batch of one with
a matrix-vector kernel and larger batches with a blocked matrix-matrix kernel (another summation order), so the
builtin U-Net's output differs in the last bits (measured: its embedding ``Linear`` is the first layer to differ,
~1e-6 relative), which a sampler can carry across an 8-bit rounding boundary (one grey level in a few images).
"""

from __future__ import annotations

import pytest
import torch
from adasde.models import load_model
from adasde.samplers import get_sigmas
from adasde.samplers.presets import initial_noise
from adasde.samplers.registry import SAMPLERS

NAMES = ["euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_3m", "ipndm", "unipc", "adasde"]
SEEDS = list(range(8))


class PerSample(torch.nn.Module):
    """The same denoiser evaluated one sample at a time (so its per-sample output cannot depend on the batch)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, **extra):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]) if torch.as_tensor(sigma).ndim == 0 \
            else sigma
        return torch.cat([self.inner(x[i:i + 1], sigma[i:i + 1], **extra) for i in range(x.shape[0])])

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.fixture(scope="module")
def model():
    return load_model("builtin:fmnist")


def _run(fn, m, seeds, sig):
    x = initial_noise(seeds, m.sample_shape, m.sigma_max)
    with torch.no_grad():
        return fn(m, x, sig, extra_args={"seed": list(seeds)})


@pytest.mark.parametrize("name", NAMES)
def test_sampler_arithmetic_is_batch_invariant(model, name):
    fn, sig = SAMPLERS[name], get_sigmas("polynomial", 5, model.sigma_min, model.sigma_max, 7.0)
    per = PerSample(model)
    batch8 = _run(fn, per, SEEDS, sig)
    batch1 = torch.cat([_run(fn, per, [s], sig) for s in SEEDS])
    assert torch.equal(batch8, batch1)


@pytest.mark.parametrize("name", ["heun", "ipndm", "adasde"])
def test_fixed_batch_size_is_independent_of_order_and_company(model, name):
    fn, sig = SAMPLERS[name], get_sigmas("polynomial", 5, model.sigma_min, model.sigma_max, 7.0)
    a = _run(fn, model, SEEDS, sig)
    assert torch.equal(a, _run(fn, model, SEEDS[::-1], sig).flip(0))
    assert torch.equal(a[0], _run(fn, model, [0, 100, 101, 102, 103, 104, 105, 106], sig)[0])
