"""The noise-conditional Fashion-MNIST classifier of classifier guidance (``builtin/noisy_classifier.py``): the
shipped weights, their accuracy on real noisy test images, deterministic training, refused broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adasde.builtin.data import load_fmnist
from adasde.builtin.noisy_classifier import (
    NOISY_CLASSIFIER,
    NoisyFMNISTClassifier,
    load_noisy_classifier,
    noisy_accuracy,
    train_noisy_classifier,
)
from adasde.loaders import ModelSpecError


@pytest.fixture(scope="module")
def test_images():
    x, y = load_fmnist("test")
    return x[:1000], y[:1000]


def test_shipped_weights_are_small_fp16_with_a_training_record() -> None:
    from safetensors import safe_open

    assert NOISY_CLASSIFIER.stat().st_size < 300_000
    with safe_open(str(NOISY_CLASSIFIER), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    m = load_noisy_classifier()
    rec = m.meta["training"]
    assert rec["command"].startswith("adasde train-builtin --model noisy-classifier")
    assert rec["steps"] >= 800 and rec["test_images"] == 10000
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def test_noise_conditional_accuracy_on_real_test_images(test_images) -> None:
    x, y = test_images
    m = load_noisy_classifier()
    acc = {s: noisy_accuracy(m, x, y, s, seed=3) for s in (0.1, 1.0, 20.0)}
    # informative at moderate noise, near chance when the image is drowned (sigma 20 >> data scale 0.5)
    assert acc[0.1] > 0.75 and acc[1.0] > 0.6 and acc[20.0] < 0.4
    # the shipped record agrees with a recomputation on other noise within sampling error
    assert acc[1.0] == pytest.approx(m.meta["training"]["test_accuracy_by_sigma"]["1"], abs=0.06)
    # sigma is an input: the same x at another noise level gives other logits
    xb = x[:4] + 0.5 * torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(m(xb, torch.full((4,), 0.5)), m(xb, torch.full((4,), 5.0)))
    assert torch.allclose(m(xb, 0.5), m(xb, torch.full((4,), 0.5)))


def test_training_is_deterministic_and_writes_loadable_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    kw = dict(steps=3, batch=16, limit=256, eval_limit=64, progress=False, threads=1)
    rec = train_noisy_classifier(out=a, **kw)
    train_noisy_classifier(out=b, **kw)
    ma, mb = load_noisy_classifier(path=a), load_noisy_classifier(path=b)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    assert rec["steps"] == 3 and set(rec["test_accuracy_by_sigma"]) == {"0.002", "0.1", "0.5", "1", "2", "5", "20"}
    assert isinstance(ma, NoisyFMNISTClassifier)


def test_broken_or_foreign_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "n.safetensors"
    bad.write_bytes(NOISY_CLASSIFIER.read_bytes()[:1000])
    with pytest.raises(ModelSpecError, match="train-builtin --model noisy-classifier"):
        load_noisy_classifier(path=bad)
    from adasde.builtin.classifier import DEFAULT_CLASSIFIER

    with pytest.raises(ModelSpecError, match="expected 'adasde-builtin-noisy-classifier'"):
        load_noisy_classifier(path=DEFAULT_CLASSIFIER)
