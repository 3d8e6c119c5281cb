"""Frechet distance, streaming statistics, KID / precision-recall and reference files (evaluation/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from adasde.evaluation import (
    RefStats,
    RunningStats,
    StatsFileError,
    check_feature_net,
    frechet_distance,
    kid,
    load_stats,
    precision_recall,
    save_stats,
)
from adasde.generate import parse_seeds


def _rand_cov(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    return np.cov(x, rowvar=False)


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("method", ["cholesky", "eigh", "sqrtm"])
def test_frechet_closed_form_commuting_diagonals(method):
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 16.0, 0.0])  # one variance 0: singular
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    res = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert res.value == pytest.approx(exact, rel=1e-10, abs=1e-10)
    assert float(res) == res.value and res.mean_term == pytest.approx(5.0)
    # identical Gaussians: distance 0
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a), method=method).value == pytest.approx(0, abs=1e-10)


def test_frechet_matches_scipy_sqrtm_random_and_singular():
    rng = np.random.default_rng(1)
    d = 24
    for n in (200, 10):  # full rank, then rank 9 < d (fewer samples than dimensions)
        s1, s2 = _rand_cov(rng, d, n), _rand_cov(rng, d, 300)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        ref = _scipy_fid(mu1, s1, mu2, s2)
        for method in ("cholesky", "eigh"):
            res = frechet_distance(mu1, s1, mu2, s2, method=method)
            assert res.value == pytest.approx(ref, rel=1e-6), (n, method)
            assert res.diagnostics["max_imag"] == 0.0
        assert frechet_distance(mu1, s1, mu2, s2).diagnostics["factor"] == "cholesky(sigma2)"
        assert frechet_distance(mu2, s2, mu1, s1).value == pytest.approx(ref, rel=1e-6)  # symmetric
    # both covariances singular (10 and 12 samples in 24-d): pivoted Cholesky, agrees with the exact eigh route
    s1, s2 = _rand_cov(rng, d, 10), _rand_cov(rng, d, 12)
    res = frechet_distance(np.zeros(d), s1, np.ones(d), s2)
    assert res.diagnostics["factor"] == "pivoted-cholesky(sigma1)" and res.diagnostics["rank1"] == 9
    assert res.value == pytest.approx(frechet_distance(np.zeros(d), s1, np.ones(d), s2, method="eigh").value, rel=1e-7)
    # both singular: the eigen route stays real and agrees with the rank-aware closed form on a shared subspace
    s = np.diag([2.0, 3.0, 0.0, 0.0])
    res = frechet_distance(np.zeros(4), s, np.zeros(4), 4 * s)
    assert res.value == pytest.approx(2.0 + 3.0)  # sum (sqrt(v) - sqrt(4 v))^2 = sum v
    sq = frechet_distance(np.zeros(4), s, np.zeros(4), 4 * s, method="sqrtm")
    assert "max_imag" in sq.diagnostics and sq.value == pytest.approx(5.0, rel=1e-6)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="unknown method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="magic")


def test_running_stats_equal_batch_stats_and_merge():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((157, 9)) * 3 + 100.0  # large offset: naive sums would lose digits
    rs = RunningStats(9)
    for i in range(0, 157, 20):
        rs.update(torch.from_numpy(x[i : i + 20]))
    np.testing.assert_allclose(rs.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rs.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)
    assert rs.n == 157
    a, b = RunningStats(9).update(x[:50]), RunningStats(9).update(x[50:])
    a.merge(b)
    np.testing.assert_allclose(a.sigma, rs.sigma, rtol=1e-10)
    np.testing.assert_allclose(a.mu, rs.mu, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[N, 9\]"):
        rs.update(np.zeros((3, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = RunningStats(3).update(np.zeros((1, 3))).sigma


def test_running_stats_save_load_resume(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 5))
    part = RunningStats(5, meta={"feature_net": "x"}).update(x[:25])
    path = part.save(tmp_path / "state.npz")
    back = RunningStats.load(path).update(x[25:])
    np.testing.assert_allclose(back.sigma, np.cov(x, rowvar=False), rtol=1e-10)
    assert back.meta == {"feature_net": "x"} and back.n == 60
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError)):
        RunningStats.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("layout", ["edm", "pytorch-fid", "torch-fidelity"])
def test_npz_round_trip(tmp_path, layout):
    rng = np.random.default_rng(3)
    rs = RunningStats(6, meta={"feature_net": "inception-v3-compat"}).update(rng.standard_normal((40, 6)))
    path = save_stats(tmp_path / "ref.npz", rs, layout=layout, meta={"source": "unit"})
    with np.load(path, allow_pickle=False) as z:  # what pytorch-fid / EDM do
        assert {"mu", "sigma"} <= set(z.files)
        assert z["mu"].dtype == (np.float32 if layout == "torch-fidelity" else np.float64)
        assert z["sigma"].dtype == np.float64
    ref = load_stats(path, feature_net="inception-v3-compat")
    np.testing.assert_allclose(ref.mu, rs.mu, rtol=1e-6 if layout == "torch-fidelity" else 0)
    np.testing.assert_array_equal(ref.sigma, rs.sigma)
    assert ref.n == 40 and ref.meta["source"] == "unit" and ref.meta["layout"] == layout
    with pytest.raises(StatsFileError, match="fmnist-classifier"):
        load_stats(path, feature_net="fmnist-classifier")


def test_foreign_npz_without_meta_and_refusals(tmp_path):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # EDM fid-refs layout
    ref = load_stats(tmp_path / "edm.npz")
    assert ref.feature_net == "inception-v3-compat" and ref.meta["feature_net_assumed"]
    with pytest.raises(StatsFileError, match="dimension 2048"):
        check_feature_net(RefStats(ref.mu, ref.sigma, path="edm.npz"), "fmnist-classifier", dim=128)
    np.savez(tmp_path / "pickled.npz", mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(StatsFileError, match="pickled"):
        load_stats(tmp_path / "pickled.npz")
    np.savez(tmp_path / "nokeys.npz", m=np.zeros(2))
    with pytest.raises(StatsFileError, match="missing key"):
        load_stats(tmp_path / "nokeys.npz")
    with pytest.raises(StatsFileError, match="not found"):
        load_stats(tmp_path / "absent.npz")
    meta = json.loads(str(np.load(save_stats(tmp_path / "m.npz", ref), allow_pickle=False)["adasde_meta"]))
    assert meta["dim"] == 2048


def test_kid_and_precision_recall():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    far = b + 3.0
    same = kid(a, b, subsets=10, subset_size=100)
    diff = kid(a, far, subsets=10, subset_size=100)
    assert abs(same["kid_mean"]) < 0.05 < diff["kid_mean"]
    assert kid(a, b, subsets=5, subset_size=50, seed=1) == kid(a, b, subsets=5, subset_size=50, seed=1)
    pr = precision_recall(a, b, k=3)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    pr_far = precision_recall(a, far, k=3)
    assert pr_far["precision"] < 0.2 and pr_far["recall"] < 0.2


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_seeds("0-3,x")
    with pytest.raises(ValueError, match="duplicates"):
        parse_seeds("0-3,2")
