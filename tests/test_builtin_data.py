"""Fashion-MNIST IDX reader (builtin/data.py)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from adasde.builtin import data


def test_test_split_shapes_and_range() -> None:
    images, labels = data.load_fmnist_uint8("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10
    x, y = data.load_fmnist("test")
    assert tuple(x.shape) == (10000, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert abs(float(x.mean()) - (images.mean() / 127.5 - 1)) < 1e-4
    assert y.dtype.is_floating_point is False and int(y.max()) == 9


def test_missing_folder_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(data.DatasetMissingError) as err:
        data.load_fmnist_uint8("train")
    msg = str(err.value)
    assert "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg and data.ENV_VAR in msg


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_fmnist("valid")


def _write_idx(path, arr: np.ndarray, truncate: int = 0) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[:len(raw) - truncate])


def test_env_override_and_truncated_file(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.arange(5, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labs)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    got, got_l = data.load_fmnist_uint8("test")
    assert np.array_equal(got, imgs) and np.array_equal(got_l, labs)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, truncate=7)
    with pytest.raises(ValueError, match="truncated"):
        data.load_fmnist_uint8("test")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.gz"):
        data.read_idx(tmp_path / "bad.gz")
