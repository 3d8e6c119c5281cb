"""Reference statistics and image sources under hostile input: invalid covariances, a destination without ``.npz``,
the feature network's weights identity, decompression bombs, and a seeded fuzz over the statistics reader."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from adasde.errors import UsageError
from adasde.evaluation.reference import RefStats, StatsFileError, check_feature_net, load_stats, save_stats
from helpers.fuzz import corrupt


def _stats(d: int = 8, seed: int = 0) -> RefStats:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, d))
    return RefStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False), meta={"feature_net": "fmnist-classifier"})


def test_invalid_covariance_is_refused(tmp_path):
    good = _stats()
    p = save_stats(tmp_path / "good.npz", good)
    assert np.array_equal(load_stats(p).sigma, good.sigma)
    asym = good.sigma.copy()
    asym[0, 1] += 1.0
    neg = good.sigma - 10 * np.eye(8)  # negative eigenvalues
    for name, sigma in (("asym", asym), ("neg", neg)):
        q = tmp_path / f"{name}.npz"
        np.savez(q, mu=good.mu, sigma=sigma)
        with pytest.raises(StatsFileError, match="covariance"):
            load_stats(q)


def test_dest_without_npz_suffix_is_refused_before_work(tmp_path):
    with pytest.raises(UsageError, match=r"\.npz"):
        save_stats(tmp_path / "stats", _stats())
    assert not list(tmp_path.iterdir())
    # the CLI refuses before computing anything (an empty image folder would otherwise fail later)
    res = subprocess.run([sys.executable, "-m", "adasde", "fid", "ref", "--data", str(tmp_path), "--dest",
                          str(tmp_path / "stats"), "--net", "fmnist"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and ".npz" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_feature_network_weights_identity_is_checked(tmp_path):
    from adasde.builtin import classifier as clf
    from adasde.evaluation.features import load_feature_net

    net = load_feature_net("fmnist")
    assert net.info["weights_sha256"] == clf.file_sha256(clf.DEFAULT_CLASSIFIER)
    shipped = load_stats(clf.STATS_DIR / "fmnist_test.npz")
    check_feature_net(shipped, net.name, dim=net.dim, weights_sha256=net.info["weights_sha256"])  # matches
    other = RefStats(shipped.mu, shipped.sigma, meta=dict(shipped.meta, classifier_sha256="0" * 64), path="x.npz")
    with pytest.raises(StatsFileError, match="weights"):
        check_feature_net(other, net.name, dim=net.dim, weights_sha256=net.info["weights_sha256"])
    # a retrained classifier beside the shipped statistics: the FD-FMNIST reference refuses the comparison
    from adasde.evaluation import pipeline

    p = tmp_path / "clf.safetensors"
    data = bytearray(clf.DEFAULT_CLASSIFIER.read_bytes())
    data[-1] ^= 1  # same format, other weights
    p.write_bytes(bytes(data))
    orig = clf.DEFAULT_CLASSIFIER
    clf.DEFAULT_CLASSIFIER = p
    try:
        with pytest.raises(StatsFileError, match="classifier"):
            pipeline.fd_fmnist_reference("test")
    finally:
        clf.DEFAULT_CLASSIFIER = orig


def test_decompression_bomb_is_an_unreadable_image(tmp_path):
    from adasde.evaluation.images import ImageReadError, iter_images
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400 M pixels, ~50 kB on disk
    (folder / "b_bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(ImageReadError, match="b_bomb"):
        list(iter_images(folder))
    skipped: list[str] = []
    got = list(iter_images(folder, on_error="skip", skipped=skipped))
    assert [n for n, _ in got] == ["a.png"] and len(skipped) == 1


# ------------------------------------------------------------------------------------------------- fuzz
def test_fuzz_stats_reader(tmp_path):
    """>= 1,000 seeded corruptions of .npz statistics files: only StatsFileError, one line, bounded time/memory."""
    bases = [save_stats(tmp_path / "edm.npz", _stats(), layout="edm").read_bytes(),
             save_stats(tmp_path / "pf.npz", _stats(seed=1), layout="pytorch-fid").read_bytes()]
    rng = random.Random(99)
    p = tmp_path / "f.npz"
    errors = 0
    t0 = time.perf_counter()
    for i in range(1100):
        data = corrupt(rng.choice(bases), rng, i, _mutate_member,
                       lambda d: (0, min(200, len(d))))  # case 3: the zip local header and the npy header
        p.write_bytes(data)
        try:
            load_stats(p)
        except StatsFileError as exc:
            errors += 1
            assert "\n" not in str(exc) and str(p) in str(exc), str(exc)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {i} op {i % 4}: {type(exc).__name__}: {exc}")
    assert errors > 900
    assert time.perf_counter() - t0 < 60


def _mutate_member(data: bytes, rng: random.Random) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    victim = rng.choice(src.namelist())
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            raw = src.read(name)
            if name == victim:
                shape = rng.choice(["(10**12,)", "(2**62, 2**62)", "(8, 8)", "(-1,)", "()", "(8,)", "(3, 3, 3)"])
                descr = rng.choice(["'<f8'", "'|O'", "'<U5'", "'<c16'", "'|b1'", "'<f4'", "'>i8'", "'|V0'"])
                hdr = f"{{'descr': {descr}, 'fortran_order': {rng.choice(['False', 'True'])}, 'shape': {shape}, }}"
                hdr = hdr.ljust(118) + "\n"
                body = raw[128:] if rng.random() < 0.7 else raw[128:][: rng.randrange(1, 64)]
                raw = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + body
            dst.writestr(name, raw)
    return out.getvalue()


def test_fuzz_running_stats_state_reader(tmp_path):
    """The resumable accumulator state (``RunningStats.load``) ends in StatsFileError on any corruption too."""
    from adasde.evaluation.stats import RunningStats

    rs = RunningStats(6, meta={"feature_net": "x"}).update(np.random.default_rng(0).normal(size=(20, 6)))
    base = rs.save(tmp_path / "s.state").read_bytes()
    assert RunningStats.load(tmp_path / "s.state").n == 20
    rng = random.Random(5)
    p = tmp_path / "f.state"
    for i in range(300):
        data = bytearray(base)
        if i % 3 == 0:
            data = data[:rng.randrange(len(data))]
        elif i % 3 == 1:
            for _ in range(rng.randint(1, 6)):
                j = rng.randrange(len(data))
                data[j] ^= 1 << rng.randrange(8)
        else:
            data = bytearray(_mutate_member(bytes(data), rng))
        p.write_bytes(bytes(data))
        try:
            RunningStats.load(p)
        except StatsFileError as exc:
            assert "\n" not in str(exc) and str(p) in str(exc), str(exc)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {i}: {type(exc).__name__}: {exc}")
