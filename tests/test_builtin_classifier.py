"""FD-FMNIST classifier and reference statistics (builtin/classifier.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adasde.builtin import classifier as C
from adasde.builtin.data import load_fmnist_uint8
from adasde.loaders import ModelSpecError


@pytest.fixture(scope="module")
def test_subset() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_uint8("test")
    idx = np.random.default_rng(0).choice(x.shape[0], 1000, replace=False)
    return torch.from_numpy(x[idx]).float().div(255).unsqueeze(1), torch.from_numpy(y[idx]).long()


def test_shipped_classifier_accuracy_and_features(test_subset) -> None:
    assert C.DEFAULT_CLASSIFIER.stat().st_size <= 2 * 1024 * 1024
    model = C.load_classifier()
    images, labels = test_subset
    acc = C.accuracy(model, images, labels)
    assert acc >= 0.88, acc
    with torch.no_grad():
        f = model.features(images[:7])
        logits = model(images[:7])
    assert f.shape == (7, C.FEATURE_DIM) and logits.shape == (7, 10)
    assert not any(p.requires_grad for p in model.parameters())
    # batch-size independent (eval mode, no batch statistics)
    with torch.no_grad():
        one = torch.cat([model.features(images[i:i + 1]) for i in range(7)])
    assert torch.allclose(one, f, atol=1e-5)
    assert model.meta["training"]["test_accuracy"] >= 0.90


def test_classifier_rejects_bad_input_and_files(tmp_path) -> None:
    model = C.load_classifier()
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        model.features(torch.zeros(2, 3, 28, 28))
    bad = tmp_path / "clf.safetensors"
    bad.write_bytes(C.DEFAULT_CLASSIFIER.read_bytes()[:5000])
    with pytest.raises(ModelSpecError, match="train-builtin --model classifier"):
        C.load_classifier(path=bad)


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_reference_stats(split: str, n: int) -> None:
    path = C.STATS_DIR / f"fmnist_{split}.npz"
    with np.load(path, allow_pickle=False) as z:
        mu, sigma = z["mu"], z["sigma"]
        meta = json.loads(str(z["adasde_meta"]))
        assert z["adasde_meta"].shape == ()
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (C.FEATURE_DIM,) and sigma.shape == (C.FEATURE_DIM, C.FEATURE_DIM)
    assert np.allclose(sigma, sigma.T) and np.linalg.eigvalsh(sigma).min() > -1e-8
    assert meta["feature_net"] == "fmnist-classifier" and meta["n"] == n
    assert meta["classifier_sha256"] == C.file_sha256(C.DEFAULT_CLASSIFIER)


def test_stats_match_features(test_subset) -> None:
    """The shipped test statistics agree with features recomputed on a 1,000-image subset (sampling error only)."""
    model = C.load_classifier()
    mu_sub, _ = C.feature_stats(C.compute_features(model, test_subset[0]))
    with np.load(C.STATS_DIR / "fmnist_test.npz", allow_pickle=False) as z:
        mu, sigma = z["mu"], z["sigma"]
    se = np.sqrt(np.diag(sigma) / 1000)
    assert np.abs(mu_sub - mu).max() < 6 * se.max()
