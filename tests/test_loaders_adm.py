"""``adm:`` (guided-diffusion ADM + noise-aware classifier) and ``cm:`` (consistency-models EDM U-Net) loaders on
tiny random-weight state dicts saved with ``torch.save`` under the original key names, and classifier guidance."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from adasde.errors import UsageError
from adasde.loaders import ModelSpecError
from adasde.loaders.guidance import ClassifierGuided
from adasde.loaders.networks.adm import RELEASED, ADMConfig, ADMUNet, AttentionBlock, infer_config
from adasde.models import load_model
from adasde.samplers import get_sigmas, sample_adasde, sample_heun

MARKER = "ADM_PICKLE_CODE_RAN"
UNET = ADMConfig(16, 64, 6, 1, (2,), (1, 2), num_classes=10)
CLASSIFIER = ADMConfig(16, 64, 10, 1, (2,), (1, 2), pool="attention")
CM = ADMConfig(16, 64, 3, 1, (2,), (1, 2), use_scale_shift_norm=False, attention_order="qkv_first", attn_conv2d=True)


def _state_dict(cfg: ADMConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = ADMUNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {k: v.clone() for k, v in net.state_dict().items()}


def _save(path: Path, cfg: ADMConfig, seed: int = 0) -> Path:
    torch.save(_state_dict(cfg, seed), path)
    return path


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / MARKER).exists()


def test_state_dict_uses_guided_diffusion_key_names():
    sd = _state_dict(UNET, 0)
    expect = {  # guided-diffusion UNetModel names for this layout (ResBlock up/down, scale-shift, 1 block per level)
        "time_embed.0.weight": (256, 64), "time_embed.2.weight": (256, 256), "label_emb.weight": (10, 256),
        "input_blocks.0.0.weight": (64, 3, 3, 3), "input_blocks.1.0.in_layers.0.weight": (64,),
        "input_blocks.1.0.in_layers.2.weight": (64, 64, 3, 3), "input_blocks.1.0.emb_layers.1.weight": (128, 256),
        "input_blocks.1.0.out_layers.3.weight": (64, 64, 3, 3), "input_blocks.2.0.in_layers.2.weight": (64, 64, 3, 3),
        "input_blocks.3.0.skip_connection.weight": (128, 64, 1, 1), "input_blocks.3.1.qkv.weight": (384, 128, 1),
        "input_blocks.3.1.proj_out.weight": (128, 128, 1), "middle_block.0.out_layers.0.bias": (128,),
        "middle_block.1.norm.weight": (128,), "middle_block.2.emb_layers.1.bias": (256,),
        "output_blocks.0.0.in_layers.0.weight": (256,), "output_blocks.1.1.qkv.bias": (384,),
        "output_blocks.1.2.in_layers.2.weight": (128, 128, 3, 3), "output_blocks.2.0.skip_connection.weight":
        (64, 192, 1, 1), "out.0.weight": (64,), "out.2.weight": (6, 64, 3, 3),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("output_blocks.4") for k in sd)
    csd = _state_dict(CLASSIFIER, 0)
    assert tuple(csd["out.2.positional_embedding"].shape) == (128, 8 * 8 + 1)
    assert tuple(csd["out.2.c_proj.weight"].shape) == (10, 128, 1) and "output_blocks.0.0.in_layers.0.weight" not in csd
    assert tuple(_state_dict(CM, 0)["middle_block.1.qkv.weight"].shape) == (384, 128, 1, 1)


def test_released_configs_are_recovered_from_shapes():
    """Built-in configs of the released files: inference from their tensor layout gives the same architecture, and
    the diffusion U-Nets have the published size (ADM ImageNet 256 conditional: 554M parameters)."""
    for name, cfg in RELEASED.items():
        with torch.device("meta"):
            sd = ADMUNet(cfg).state_dict()
        assert infer_config(sd, 256) == cfg, name
        if name == "256x256_diffusion":
            assert math.isclose(sum(v.numel() for v in sd.values()) / 1e6, 553.8, abs_tol=0.1)
    for cfg in (UNET, CLASSIFIER, CM):
        assert infer_config(_state_dict(cfg, 0), 16) == cfg


@pytest.mark.parametrize("order", ["legacy", "qkv_first"])
def test_attention_channel_layouts(order):
    """Per-head attention written out with explicit channel indices for both layouts."""
    torch.manual_seed(0)
    blk = AttentionBlock(64, heads=2, order=order)
    x = torch.randn(2, 64, 3, 3)
    with torch.no_grad():
        qkv = blk.qkv(blk.norm(x).reshape(2, 64, 9))
        d, outs = 32, []
        for h in range(2):
            if order == "legacy":
                base = h * 3 * d
                q, k, v = (qkv[:, base + j * d: base + (j + 1) * d] for j in range(3))
            else:
                q, k, v = (qkv[:, j * 64 + h * d: j * 64 + (h + 1) * d] for j in range(3))
            w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
            outs.append(torch.einsum("bts,bcs->bct", w, v))
        ref = x + blk.proj_out(torch.cat(outs, 1)).reshape(2, 64, 3, 3)
        torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-5)


def _linear_table():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    return ((1 - ac) / ac).sqrt()


def test_adm_eps_model_against_the_discrete_schedule(tmp_path):
    f = _save(tmp_path / "16x16_diffusion.pt", UNET)
    den = load_model(f"adm:{f}")
    table = _linear_table()
    assert den.family == "adm-16-cond" and den.prediction == "eps" and den.sample_shape == (3, 16, 16)
    assert den.default_schedule == ("discrete", 1.0)
    torch.testing.assert_close(den.model_sigmas.double(), table, rtol=1e-6, atol=0)
    assert den.sigma_min == pytest.approx(float(table[0])) and den.sigma_max == pytest.approx(float(table[-1]))
    idx = torch.tensor([0, 250, 999])
    sigma, x, y = table[idx].float(), torch.randn(3, 3, 16, 16), torch.tensor([1, 4, 9])
    with torch.no_grad():
        got = den(x, sigma, class_labels=y)
        s = table[idx].view(-1, 1, 1, 1)
        out = den.net((x.double() / (1 + s**2).sqrt()).float(), idx.float(), y)  # integer timesteps at the table
        ref = x.double() - s * out[:, :3].double()
    scale = (1 + table[idx]).view(-1, 1, 1, 1).float()
    torch.testing.assert_close(got / scale, ref.float() / scale, atol=2e-5, rtol=1e-5)
    assert den.bottleneck().shape == (3, 128, 8, 8)
    with pytest.raises(UsageError, match="class_labels"):
        den(x, sigma)


def test_cm_edm_preconditioning(tmp_path):
    f = _save(tmp_path / "cm_bedroom16_ema.pt", CM)
    den = load_model(f"cm:{f}")
    assert den.family == "cm-lsun_bedroom16" and den.prediction == "edm"
    assert (den.sigma_min, den.sigma_max) == (0.002, 80)
    assert den.default_schedule == ("time_uniform", 1.0) and den.model_sigmas is None
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.05, 20.0])
    with torch.no_grad():
        got = den(x, sigma)
        s = sigma.double().view(-1, 1, 1, 1)
        c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
        f_x = den.net((c_in * x.double()).float(), 250 * sigma.log())
        ref = c_skip * x.double() + c_out * f_x.double()
    scale = (1 + sigma).view(-1, 1, 1, 1)
    torch.testing.assert_close(got / scale, ref.float() / scale, atol=2e-5, rtol=1e-5)
    sig = get_sigmas("time_uniform", 4, den.sigma_min, den.sigma_max)
    z = torch.randn(2, *den.sample_shape) * den.sigma_max
    y = sample_heun(den, z, sig)
    assert torch.isfinite(y).all()
    from adasde.distill import distill

    co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=2, seed=0)
    assert co.steps == 2 and torch.isfinite(co.r).all() and co.model.family == "cm-lsun_bedroom16"


def test_classifier_guidance_formula_sampling_and_distill(tmp_path):
    from adasde.distill import distill

    model = _save(tmp_path / "16x16_diffusion.pt", UNET)
    cls = _save(tmp_path / "16x16_classifier.pt", CLASSIFIER, seed=1)
    den = load_model(f"adm:{model} --classifier {cls}?rate=2.5&classes=3")
    assert isinstance(den, ClassifierGuided) and den.rate == 2.5 and den.family == "adm-16-cond"
    assert den.default_schedule == ("discrete", 1.0) and den.model_sigmas is not None
    plain = load_model(f"adm:{model}")
    table = _linear_table()
    idx = torch.tensor([100, 600])
    sigma, x = table[idx].float(), torch.randn(2, 3, 16, 16)
    y = torch.tensor([3, 3])
    got = den(x, sigma)
    with torch.no_grad():
        base = plain(x, sigma, class_labels=y)
    # independent gradient: d/dx_t log softmax(classifier(x_t, t))[y] at x_t = x / sqrt(1 + sigma^2), chain rule by hand
    alpha = (1 / (1 + table[idx] ** 2).sqrt()).view(-1, 1, 1, 1).float()
    xt = (alpha * x).requires_grad_(True)
    logp = torch.log_softmax(den.classifier.net(xt, idx.float()), -1)[torch.arange(2), y].sum()
    (g_t,) = torch.autograd.grad(logp, xt)
    ref = base + sigma.view(-1, 1, 1, 1) ** 2 * 2.5 * alpha * g_t
    scale = (1 + sigma**2).view(-1, 1, 1, 1)
    torch.testing.assert_close(got.detach() / scale, ref / scale, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, base)
    with torch.inference_mode():  # hosts (ComfyUI) sample under inference mode; the gradient is still taken
        torch.testing.assert_close(den(x, sigma), got.detach())
    # the same model through load_model keywords, rate 0 = unguided
    zero = load_model(f"adm:{model}", classifier=str(cls), guidance_rate=0.0, classes=[3])
    with torch.no_grad():
        torch.testing.assert_close(zero(x, sigma), base)
    clipped = load_model(f"adm:{model} --classifier {cls}?rate=2.5&classes=3&clip=1")
    c = clipped(x, sigma)
    torch.testing.assert_close(c, got.clamp(-1, 1))
    assert float(got.abs().max()) > 1  # the clamp is exercised
    # sampling and a couple of distillation iterations under guidance
    sig = get_sigmas("time_uniform", 4, den.sigma_min, den.sigma_max)
    z = torch.randn(2, *den.sample_shape) * den.sigma_max
    out = sample_adasde(den, z, sig, extra_args={"seed": 2})
    assert out.shape == z.shape and torch.isfinite(out).all()
    co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=2, seed=0,
                 condition_fn=lambda it, rng: {"class_labels": torch.randint(0, 10, (2,), generator=rng)})
    assert co.steps == 2 and torch.isfinite(co.r).all()
    with pytest.raises(UsageError, match="classes"):
        load_model(f"adm:{model}?classifier={cls}")(x, sigma)


class _Shell:
    def __init__(self, marker):
        self.cmd = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("prefix", ["adm", "cm", "classifier"])
def test_malicious_checkpoints_are_refused(tmp_path, prefix):
    evil = tmp_path / "256x256_diffusion.pt"
    sd = _state_dict(UNET if prefix != "cm" else CM, 0)
    sd["input_blocks.0.0.weight"] = _Shell(tmp_path / MARKER)
    torch.save(sd, evil)
    if prefix == "classifier":
        good = _save(tmp_path / "16x16_diffusion.pt", UNET)
        spec = f"adm:{good} --classifier {evil}"
    else:
        spec = f"{prefix}:{evil}"
    with pytest.raises(ModelSpecError, match=r"256x256_diffusion\.pt.*weights_only=True"):
        load_model(spec, classes=[1])
    assert not (tmp_path / MARKER).exists()


def test_wrong_files_are_clear_errors(tmp_path):
    unet = _save(tmp_path / "16x16_diffusion.pt", UNET)
    cls = _save(tmp_path / "16x16_classifier.pt", CLASSIFIER)
    with pytest.raises(ModelSpecError, match="classifier"):
        load_model(f"adm:{cls}")
    with pytest.raises(ModelSpecError, match="diffusion U-Net"):
        load_model(f"adm:{unet} --classifier {unet}")
    with pytest.raises(ModelSpecError, match="output channels"):
        load_model(f"cm:{unet}")
    odd = tmp_path / "model.pt"
    torch.save(_state_dict(CM, 0), odd)
    with pytest.raises(ModelSpecError, match="size=N"):
        load_model(f"cm:{odd}")
    assert load_model(f"cm:{odd}?size=16").sample_shape == (3, 16, 16)
    released = tmp_path / "256x256_diffusion.pt"
    torch.save(_state_dict(UNET, 0), released)  # a file named like the release but of another architecture
    with pytest.raises(ModelSpecError, match="256x256_diffusion.pt.*do not fit"):
        load_model(f"adm:{released}")
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv_in.weight": torch.zeros(4, 3, 3, 3)}, foreign)  # a diffusers-layout file
    with pytest.raises(ModelSpecError, match="foreign.pt: not a guided-diffusion / consistency-models state dict"):
        load_model(f"adm:{foreign}")
    with pytest.raises(ModelSpecError, match="unknown option"):
        load_model(f"adm:{unet}?bogus=1")
