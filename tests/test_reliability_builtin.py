"""``train-builtin`` never replaces the shipped weights or statistics unless asked to explicitly."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from adasde.builtin import classifier as clf
from adasde.builtin import train as tr
from adasde.cli import main


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Copies of the shipped files standing in for the package's (so a regression cannot damage the checkout)."""
    pkg = tmp_path / "pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "stats").mkdir()
    unet = shutil.copy(tr.DEFAULT_WEIGHTS, pkg / "weights" / tr.DEFAULT_WEIGHTS.name)
    cls = shutil.copy(clf.DEFAULT_CLASSIFIER, pkg / "weights" / clf.DEFAULT_CLASSIFIER.name)
    for p in clf.STATS_DIR.glob("*.npz"):
        shutil.copy(p, pkg / "stats" / p.name)
    monkeypatch.setattr(tr, "DEFAULT_WEIGHTS", pkg / "weights" / tr.DEFAULT_WEIGHTS.name)
    monkeypatch.setattr(clf, "DEFAULT_CLASSIFIER", pkg / "weights" / clf.DEFAULT_CLASSIFIER.name)
    monkeypatch.setattr(clf, "STATS_DIR", pkg / "stats")
    assert unet and cls
    return pkg


def _digests(pkg) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pkg.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv", [
    ["--steps", "1", "--batch", "2"],
    ["--steps", "1", "--batch", "2", "--out", "{pkg}/weights/fmnist_unet.safetensors"],
    ["--model", "classifier", "--epochs", "0.001"],
    ["--model", "classifier", "--epochs", "0.001", "--out", "{pkg}/weights/fmnist_classifier.safetensors"],
    ["--model", "stats"],
    ["--model", "stats", "--out", "{pkg}/stats"],
    ["--model", "export", "--checkpoint", "x.ckpt"],
])
def test_shipped_files_are_not_overwritten_by_default(shipped, argv, capsys):
    before = _digests(shipped)
    assert main(["train-builtin", *(a.format(pkg=shipped) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite-shipped" in err and "--out" in err and "Traceback" not in err, err
    assert _digests(shipped) == before


def test_out_is_validated_before_training(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    assert main(["train-builtin", "--steps", "100000", "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
