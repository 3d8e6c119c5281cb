"""Feature networks, image sources and the ``adasde fid ref`` / ``calc`` commands (evaluation/)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.cli import main as adasde_main
from adasde.evaluation import (
    INCEPTION_FILES,
    FeatureNetError,
    ImageReadError,
    iter_images,
    load_feature_net,
    load_stats,
    to_uint8,
)
from helpers.features import projection_net
from PIL import Image

PixelNet = projection_net("test-pixels", dim=6, seed=0)


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        _png(d / f"{i:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _png(d / "sub" / "gray.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (d / "dataset.json").write_text("{}")  # EDM dataset metadata: ignored
    (d / ".DS_Store").write_bytes(b"\0")
    return d


def test_image_folder_and_zip_errors(image_dir, tmp_path):
    imgs = list(iter_images(image_dir))
    assert [n for n, _ in imgs] == ["000.png", "001.png", "002.png", "003.png", "004.png", "sub/gray.png"]
    assert imgs[0][1].shape == (3, 8, 8) and imgs[-1][1].shape == (1, 8, 8) and imgs[0][1].dtype == torch.uint8
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (image_dir / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="broken.png: cannot decode image"):
        list(iter_images(image_dir, on_error="fail"))
    skipped: list[str] = []
    names = [n for n, _ in iter_images(image_dir, on_error="skip", skipped=skipped)]
    assert len(names) == 6 and any("broken.png" in s for s in skipped) and any("notes.txt" in s for s in skipped)
    (image_dir / "broken.png").unlink()
    with pytest.raises(ImageReadError, match=r"notes.txt: not an image file"):
        list(iter_images(image_dir))
    # zip: same rules, names inside the archive reported
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(image_dir / "000.png", "a/000.png")
        zf.writestr("a/bad.jpg", b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageReadError, match=r"imgs.zip:a/bad.jpg"):
        list(iter_images(zpath))
    assert [n for n, _ in iter_images(zpath, on_error="skip")] == ["a/000.png"]
    # sharding: two ranks cover the folder exactly once
    (image_dir / "notes.txt").unlink()
    r0 = [n for n, _ in iter_images(image_dir, rank=0, world=2)]
    r1 = [n for n, _ in iter_images(image_dir, rank=1, world=2)]
    assert sorted(r0 + r1) == [n for n, _ in imgs] and not set(r0) & set(r1)
    with pytest.raises(ImageReadError, match="no such folder"):
        list(iter_images(tmp_path / "nope"))


def test_channel_adaptation():
    from adasde.evaluation.features import to_channels

    gray = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    assert torch.equal(to_channels(gray, 3), gray.expand(-1, 3, -1, -1))  # what Inception sees
    rgb = torch.randint(0, 256, (1, 3, 5, 5), dtype=torch.uint8)
    pil = np.asarray(Image.fromarray(rgb[0].permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(to_channels(rgb, 1)[0, 0].numpy(), pil)  # luma exactly as PIL's convert("L")


def test_to_uint8_protocol():
    x = torch.tensor([0.0, 0.5, 1.0, 0.0019, 0.002]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 128, 255, 0, 1]  # floor(255 x + 0.5), as EDM's PNGs
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8(x * 2 - 1)


def test_cli_ref_and_calc(image_dir, tmp_path, capsys):
    dest = tmp_path / "ref.npz"
    assert adasde_main(["fid", "ref", "--data", str(image_dir), "--dest", str(dest), "--net", "test-pixels",
                        "--no-progress", "--batch", "4"]) == 0
    ref = load_stats(dest)
    assert ref.feature_net == "test-pixels" and ref.n == 6 and ref.meta["resolution"] == [3, 8, 8]
    out = tmp_path / "res.json"
    assert adasde_main(["fid", "calc", "--images", str(image_dir), "--ref", str(dest), "--json", str(out),
                        "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["metric"] == "FD-test" and abs(res["value"]) < 1e-8 and res["num_images"] == 6
    assert res["reference"]["sha256"] and res["feature_net"] == "test-pixels"
    # different images -> positive distance; KID/PR with an image folder as the reference
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        _png(other / f"{i}.png", (rng.integers(0, 80, (8, 8, 3))).astype(np.uint8))
    assert adasde_main(["fid", "calc", "--images", str(other), "--ref", str(image_dir), "--net", "test-pixels",
                        "--kid-pr", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["value"] > 0.1 and "kid" in res and "precision_recall" in res
    # an EDM-style stats file (no metadata) converts to another layout with our metadata
    np.savez(tmp_path / "edm.npz", mu=np.zeros(6), sigma=np.eye(6))
    assert adasde_main(["fid", "ref", "--data", str(tmp_path / "edm.npz"), "--dest", str(tmp_path / "conv.npz"),
                        "--net", "test-pixels", "--layout", "pytorch-fid"]) == 0
    conv = load_stats(tmp_path / "conv.npz")
    assert conv.feature_net == "test-pixels" and conv.meta["layout"] == "pytorch-fid"
    # a reference computed with another network is refused
    capsys.readouterr()
    assert adasde_main(["fid", "calc", "--images", str(image_dir), "--ref", str(dest), "--net", "fmnist",
                        "--no-progress"]) == 2  # a user error: one line, exit 2
    assert "computed with feature network" in capsys.readouterr().err


def _random_inception_file(path: Path) -> None:
    import torchvision

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}, path)


def test_inception_with_weights_file_written_here(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity", reason="torch-fidelity not installed (pip install 'adasde[fid]')")
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ADASDE_INCEPTION_WEIGHTS", raising=False)
    _random_inception_file(hub / INCEPTION_FILES[1])  # pytorch-fid's file name in the hub cache
    net = load_feature_net("inception")
    assert net.name == "inception-v3-compat" and net.dim == 2048 and net.info["weights"].endswith(INCEPTION_FILES[1])
    rgb = torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8)  # ~2 s per image on a busy 2-core CPU
    f_u8 = net(rgb)
    assert f_u8.shape == (1, 2048) and f_u8.dtype == torch.float32 and torch.isfinite(f_u8).all()
    torch.testing.assert_close(net(rgb.float() / 255), f_u8)  # float [0,1] input is quantised like a PNG
    # a damaged weights file is named in the error
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(FeatureNetError, match="bad.pth"):
        load_feature_net("inception", weights=bad)


def test_missing_inception_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.delenv("ADASDE_INCEPTION_WEIGHTS", raising=False)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(FeatureNetError, match=r"adasde\[fid\]"):
            load_feature_net("inception")
        return
    with pytest.raises(FeatureNetError) as err:
        load_feature_net("inception")
    msg = str(err.value)
    assert INCEPTION_FILES[0] in msg and str(tmp_path / "empty_home" / "hub" / "checkpoints") in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" in msg and "--allow-download" in msg
    monkeypatch.setenv("ADASDE_INCEPTION_WEIGHTS", str(tmp_path / "typo.pth"))
    with pytest.raises(FeatureNetError, match=r"typo.pth \(from \$ADASDE_INCEPTION_WEIGHTS\) does not exist"):
        load_feature_net("inception")


def test_fmnist_feature_net():
    from adasde.builtin import classifier

    if not Path(classifier.DEFAULT_CLASSIFIER).is_file():
        pytest.skip(f"builtin classifier weights {classifier.DEFAULT_CLASSIFIER} not built yet")
    net = load_feature_net("fmnist")
    x = torch.rand(3, 1, 28, 28)
    f = net(x)
    assert f.shape == (3, net.dim) and net.name == "fmnist-classifier" and net.metric == "FD-FMNIST"
    torch.testing.assert_close(net(to_uint8(x)), f)
    with pytest.raises(ValueError, match="28 x 28"):
        net(torch.rand(1, 1, 32, 32))
