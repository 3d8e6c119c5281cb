"""Training smoke runs (builtin/train.py): determinism, checkpoint + resume equivalence, export -> loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adasde.builtin.loader import load_fmnist
from adasde.builtin.train import TrainConfig, train
from adasde.loaders import ModelSpecError
from safetensors import safe_open

TINY = {"channels": [8, 16, 16], "blocks": [1, 1, 1], "mid_blocks": 1, "emb_dim": 32, "fourier_dim": 16,
        "groups": 4}


@pytest.fixture(scope="module")
def tiny_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand((64, 1, 28, 28), generator=g) * 2 - 1)


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(seed=3, steps=4, batch=8, warmup_steps=2, arch=TINY, progress=False, flip=True,
                out=str(tmp_path / f"{name}.safetensors"))
    base.update(kw)
    return TrainConfig(**base)


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_same_seed_same_weights_and_resume(tmp_path, tiny_data) -> None:
    _, s1 = train(_cfg(tmp_path, "a"), tiny_data)
    train(_cfg(tmp_path, "b"), tiny_data)
    ta, tb = _tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "b.safetensors")
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert s1["steps"] == 4 and np.isfinite(s1["final_loss_avg100"])

    # a different seed gives different weights
    train(_cfg(tmp_path, "c", seed=4), tiny_data)
    tc = _tensors(tmp_path / "c.safetensors")
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)

    # 2 steps, checkpoint, resume to 4 == 4 steps straight
    ckpt = tmp_path / "ckpt.safetensors"
    train(_cfg(tmp_path, "r", steps=2, checkpoint=str(ckpt)), tiny_data)
    _, s2 = train(_cfg(tmp_path, "r", steps=4, checkpoint=str(ckpt), resume=True), tiny_data)
    assert s2["steps_this_run"] == 2
    tr = _tensors(tmp_path / "r.safetensors")
    assert all(torch.equal(ta[k], tr[k]) for k in ta)


def test_export_roundtrip_through_loader(tmp_path, tiny_data) -> None:
    cfg = _cfg(tmp_path, "x", steps=2, out_dtype="float32")
    ema, summary = train(cfg, tiny_data)
    model = load_fmnist(path=cfg.out)
    assert model.cfg.to_dict() == ema.cfg.to_dict()
    assert model.meta["training"]["seed"] == 3 and model.meta["training"]["steps"] == 2
    x = torch.randn(3, 1, 28, 28)
    s = torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.allclose(model(x, s), ema(x, s), atol=1e-6)
    with safe_open(cfg.out, framework="pt") as f:
        meta = json.loads(f.metadata()["adasde"])
    assert meta["format"] == "adasde-builtin-unet" and "machine" in meta["training"]


def test_checkpoint_arch_mismatch(tmp_path, tiny_data) -> None:
    ckpt = tmp_path / "ckpt.safetensors"
    train(_cfg(tmp_path, "m", steps=1, checkpoint=str(ckpt)), tiny_data)
    other = dict(TINY, channels=[8, 16, 24])
    with pytest.raises(ValueError, match="architecture"):
        train(_cfg(tmp_path, "m", steps=2, checkpoint=str(ckpt), resume=True, arch=other), tiny_data)


def test_needs_budget(tiny_data) -> None:
    with pytest.raises(ValueError, match="--steps"):
        train(TrainConfig(steps=None, minutes=None), tiny_data)


def test_loader_rejects_checkpoint_file(tmp_path, tiny_data) -> None:
    ckpt = tmp_path / "ckpt.safetensors"
    train(_cfg(tmp_path, "k", steps=1, checkpoint=str(ckpt)), tiny_data)
    with pytest.raises(ModelSpecError, match="format"):
        load_fmnist(path=ckpt)


def test_cli_train_and_export(tmp_path, capsys) -> None:
    from adasde.cli import main

    out, ckpt = tmp_path / "cli.safetensors", tmp_path / "cli_ckpt.safetensors"
    rc = main(["train-builtin", "--steps", "2", "--batch", "4", "--arch", json.dumps(TINY), "--out", str(out),
               "--checkpoint", str(ckpt), "--no-progress", "--seed", "5"])
    assert rc == 0 and out.is_file() and ckpt.is_file()
    assert json.loads(capsys.readouterr().out.splitlines()[0])["steps"] == 2
    exp = tmp_path / "exported.safetensors"
    assert main(["train-builtin", "--model", "export", "--checkpoint", str(ckpt), "--out", str(exp)]) == 0
    a, b = load_fmnist(path=out), load_fmnist(path=exp)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.meta["training"]["steps"] == 2 and b.meta["training"]["seed"] == 5
