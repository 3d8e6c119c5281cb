"""``builtin:fmnist`` loading (builtin/loader.py): shipped weights and clear errors for bad files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from adasde.builtin import loader
from adasde.loaders import ModelSpecError
from adasde.models import load_model
from safetensors import safe_open
from safetensors.torch import save_file


def _shipped() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(loader.FMNIST_WEIGHTS), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_shipped_weights_load() -> None:
    assert loader.FMNIST_WEIGHTS.stat().st_size <= 8 * 1024 * 1024
    model = load_model("builtin:fmnist")
    assert isinstance(model, loader.FMNISTDenoiser)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    meta = model.meta
    assert meta["format"] == "adasde-builtin-unet" and meta["training"]["steps"] > 0
    assert {"seed", "train_seconds", "machine", "config"} <= set(meta["training"])
    m64 = loader.load_fmnist(dtype=torch.float64)
    assert m64.unet.conv_in.weight.dtype == torch.float64


def test_unknown_builtin_name() -> None:
    with pytest.raises(ModelSpecError, match="builtin:fmnist"):
        load_model("builtin:cifar")


def _expect(path, *needles: str) -> None:
    with pytest.raises(ModelSpecError) as err:
        loader.load_fmnist(path=path)
    msg = str(err.value)
    assert str(path) in msg and "train-builtin" in msg, msg
    for n in needles:
        assert n in msg, msg


def test_missing_file(tmp_path) -> None:
    _expect(tmp_path / "none.safetensors", "not found")


def test_random_and_truncated_files(tmp_path) -> None:
    rnd = tmp_path / "random.safetensors"
    rnd.write_bytes(os.urandom(4096))
    _expect(rnd, "truncated or damaged")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(loader.FMNIST_WEIGHTS.read_bytes()[:100_000])
    _expect(trunc, "truncated or damaged")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _expect(empty)


def test_wrong_shapes_missing_tensors_and_foreign_files(tmp_path) -> None:
    tensors, meta = _shipped()
    name = "conv_in.weight"
    bad = dict(tensors)
    bad[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:], dtype=tensors[name].dtype)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    _expect(tmp_path / "shape.safetensors", "wrong shapes", name)

    missing = {k: v for k, v in tensors.items() if k != name}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    _expect(tmp_path / "missing.safetensors", "missing tensors")

    nan = dict(tensors)
    nan[name] = torch.full_like(tensors[name], float("nan"))
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata=meta)
    _expect(tmp_path / "nan.safetensors", "non-finite")

    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    _expect(tmp_path / "nometa.safetensors", "format")

    m = json.loads(meta["adasde"])
    m["arch"]["channels"] = [8, 8]
    save_file(tensors, str(tmp_path / "arch.safetensors"), metadata={"adasde": json.dumps(m)})
    _expect(tmp_path / "arch.safetensors", "architecture")
