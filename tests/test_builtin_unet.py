"""The shipped U-Net as a ``loaders.Denoiser`` (builtin/unet.py): contract, preconditioning, denoising quality."""

from __future__ import annotations

import pytest
import torch
from adasde.builtin.data import load_fmnist
from adasde.builtin.unet import FMNISTDenoiser, UNetConfig, edm_precond
from adasde.models import load_model


@pytest.fixture(scope="module")
def model() -> FMNISTDenoiser:
    return load_model("builtin:fmnist")


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    x, _ = load_fmnist("test")
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:64]]


def test_attributes(model) -> None:
    assert model.family == "builtin-fmnist" and model.prediction == "edm" and model.flow is False
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)
    assert model.sample_shape == (1, 28, 28) and model.default_schedule == ("polynomial", 7.0)
    assert model.model_sigmas is None
    assert model.identity()["family"] == "builtin-fmnist"


def test_sigma_forms_and_batch_independence(model) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((4, 1, 28, 28), generator=g) * 3
    sig = torch.tensor([0.05, 0.7, 3.0, 40.0])
    with torch.no_grad():
        batch = model(x, sig)
        single = torch.cat([model(x[i:i + 1], sig[i:i + 1]) for i in range(4)])
        scalar = model(x, 0.7)
        vec = model(x, torch.full((4,), 0.7))
        zero_d = model(x, torch.tensor(0.7))
    assert batch.shape == x.shape
    assert torch.allclose(batch, single, atol=1e-5)
    assert torch.equal(scalar, vec) and torch.equal(zero_d, vec)


def test_bottleneck_exposed(model) -> None:
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        model(x, torch.full((3,), 1.0))
    b1 = model.bottleneck()
    assert b1 is not None and b1.shape == (3, model.cfg.channels[-1], 7, 7) and not b1.requires_grad
    with torch.no_grad():
        model(x, torch.full((3,), 10.0))
    assert not torch.equal(b1, model.bottleneck())


def test_precond_formulas() -> None:
    s = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_precond(s)
    assert torch.allclose(c_skip, 0.25 / (s ** 2 + 0.25))
    assert torch.allclose(c_out, s * 0.5 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c_in, 1 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c_noise, s.log() / 4)
    # EDM section 5: unit-variance network input and unit-variance effective training target
    assert torch.allclose(c_in ** 2 * (s ** 2 + 0.25), torch.ones_like(s))
    target_var = ((1 - c_skip) ** 2 * 0.25 + c_skip ** 2 * s ** 2) / c_out ** 2
    assert torch.allclose(target_var, torch.ones_like(s))


def test_near_identity_at_small_sigma(model, clean) -> None:
    x = clean + 0.002 * torch.randn_like(clean)
    with torch.no_grad():
        d = model(x, torch.full((x.shape[0],), 0.002))
        d0 = model(x, torch.zeros(x.shape[0]))
    assert (d - x).abs().max() < 0.02
    assert torch.isfinite(d0).all() and torch.allclose(d0, x)


@pytest.mark.parametrize("sigma,ratio", [(0.2, 0.25), (0.5, 0.12), (2.0, 0.04)])
def test_denoises_real_images(model, clean, sigma: float, ratio: float) -> None:
    """The trained model removes most of the noise: MSE(D(y + s n), y) < ratio * MSE(y + s n, y) = ratio s^2."""
    g = torch.Generator().manual_seed(2)
    noisy = clean + sigma * torch.randn(clean.shape, generator=g)
    with torch.no_grad():
        d = model(noisy, torch.full((clean.shape[0],), sigma))
    mse = float(((d - clean) ** 2).mean())
    assert mse < ratio * sigma ** 2, (sigma, mse)


def test_dtypes_decode_and_errors(model) -> None:
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out64 = model(x.double(), torch.tensor([1.0, 2.0]))
        out32 = model(x, torch.tensor([1.0, 2.0]))
        out16 = model(x.half(), torch.tensor([1.0, 2.0]))
    assert out64.dtype == torch.float64 and out16.dtype == torch.float16
    assert torch.allclose(out64.float(), out32, atol=1e-4)
    img = model.decode(out32)
    assert img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        model(torch.zeros(2, 3, 28, 28), torch.ones(2))
    with pytest.raises(ValueError, match="sigma"):
        model(x, torch.ones(3))


def test_random_init_config_roundtrip() -> None:
    cfg = UNetConfig(channels=(8, 16), blocks=(1, 1), mid_blocks=1, emb_dim=16, fourier_dim=8, groups=4)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"chanels": [1]})
    m = FMNISTDenoiser(cfg)
    with torch.no_grad():
        out = m(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 5.0]))
    assert out.shape == (2, 1, 28, 28) and m.bottleneck().shape == (2, 16, 14, 14)


def test_bfloat16_weights_close_to_float32(model) -> None:
    from adasde.builtin.loader import load_fmnist as load_weights

    mb = load_weights(dtype=torch.bfloat16)
    x = torch.randn(4, 1, 28, 28) * 2
    s = torch.tensor([0.1, 1.0, 5.0, 50.0])
    with torch.no_grad():
        ref, out = model(x, s), mb(x, s)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1


def test_samples_are_recognisable(model) -> None:
    """Heun samples (EDM Algorithm 1, 10 steps) look like Fashion-MNIST to the FD-FMNIST classifier."""
    from adasde.builtin.classifier import load_classifier
    from adasde.builtin.train import heun_sample

    x = heun_sample(model, 48, steps=10, seed=7)
    assert torch.isfinite(x).all() and x.abs().max() < 3  # data lie in [-1, 1]; small overshoot is normal
    with torch.no_grad():
        prob = load_classifier()(model.decode(x)).softmax(1)
    conf, cls = prob.max(1)
    assert float(conf.mean()) > 0.75, float(conf.mean())
    assert len(set(cls.tolist())) >= 7
