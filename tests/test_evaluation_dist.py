"""Multi-process statistics (gloo) and ``fid sample``: two processes equal one, resume equals one pass, saved PNGs
score like the stream (evaluation/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from adasde.evaluation import RunningStats, save_stats
from adasde.generate import loop as loop_mod
from adasde.generate.score import sample_and_score
from helpers.features import projection_net

MODEL, SAMPLER, SEEDS = "testbed:gmm", "adasde", "0-6"  # exact GMM denoiser, 1 x 8 x 8 samples


PoolNet = projection_net("test-pool", dim=5, seed=1)


def _data() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((41, 4)) + 5.0


def _make_ref(path: Path) -> Path:
    rs = RunningStats(PoolNet.dim).update(np.random.default_rng(3).standard_normal((50, PoolNet.dim)) * 0.2)
    return save_stats(path, rs, meta={"feature_net": "test-pool"})


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        x = _data()
        rs = RunningStats(4).update(x[rank::world]).all_reduce()
        res = sample_and_score(MODEL, SAMPLER, SEEDS, f"{tmp}/ref.npz", steps=2, batch=2, device="cpu",
                               progress=False, resume=f"{tmp}/state.npz", checkpoint_every=0,
                               out_images=f"{tmp}/png2")
        if rank == 0:
            rs.save(f"{tmp}/merged.npz")
            Path(f"{tmp}/res.json").write_text(json.dumps(res, default=str))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path):
    _make_ref(tmp_path / "ref.npz")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    merged = RunningStats.load(tmp_path / "merged.npz")
    x = _data()
    np.testing.assert_allclose(merged.mu, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.sigma, np.cov(x, rowvar=False), rtol=1e-11)
    assert merged.n == 41
    two = json.loads((tmp_path / "res.json").read_text())
    assert sorted(p.name for p in tmp_path.glob("state.rank*")) == ["state.rank0of2.npz", "state.rank1of2.npz"]
    one = sample_and_score(MODEL, SAMPLER, SEEDS, tmp_path / "ref.npz", steps=2, batch=4, device="cpu",
                           progress=False, out_images=tmp_path / "png1")
    # the images are bit-identical whatever the batch size and the number of processes (per-seed noise) ...
    names = sorted(p.name for p in (tmp_path / "png1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "png2").iterdir()) and len(names) == 7
    for n in names:
        assert (tmp_path / "png1" / n).read_bytes() == (tmp_path / "png2" / n).read_bytes(), n
    # ... and the merged statistics give the same distance (float32 feature matmuls differ in the last bits)
    assert two["num_images"] == one["num_images"] == 7 and two["protocol"]["world_size"] == 2
    assert two["value"] == pytest.approx(one["value"], rel=1e-6)
    assert two["frechet"]["mean_term"] == pytest.approx(one["frechet"]["mean_term"], rel=1e-6)
    assert one["value"] > 0


def test_resume_and_saved_images(tmp_path, monkeypatch):
    ref = _make_ref(tmp_path / "ref.npz")
    full = sample_and_score(MODEL, SAMPLER, SEEDS, ref, steps=2, batch=3, device="cpu", progress=False,
                            out_images=tmp_path / "png")
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == ["000000.png", "000001.png"]
    proto = full["protocol"]
    assert proto["model"] == MODEL and proto["sampler"] == SAMPLER and proto["reference"]["sha256"]
    assert proto["feature_net"] == "test-pool" and proto["steps"] == 2 and len(proto["sigmas"]) == 3
    assert proto["nfe"] == 4  # untrained AdaSDE (= DPM-Solver-2) on 3 points: 2 calls per step

    # interrupted after the first batch, then resumed: same result as one pass
    real = loop_mod.SAMPLERS[SAMPLER]
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setitem(loop_mod.SAMPLERS, SAMPLER, flaky)
    state = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt):
        sample_and_score(MODEL, SAMPLER, SEEDS, ref, steps=2, batch=3, device="cpu", progress=False, resume=state,
                         checkpoint_every=0)
    monkeypatch.setitem(loop_mod.SAMPLERS, SAMPLER, real)
    with np.load(state, allow_pickle=False) as z:
        assert json.loads(str(z["progress"]))["done"] == 3
    resumed = sample_and_score(MODEL, SAMPLER, SEEDS, ref, steps=2, batch=3, device="cpu", progress=False,
                               resume=state)
    assert resumed["value"] == pytest.approx(full["value"], rel=1e-6) and resumed["num_images"] == 7
    with pytest.raises(ValueError, match="belongs to another run"):
        sample_and_score(MODEL, SAMPLER, "0-3", ref, steps=2, batch=3, device="cpu", progress=False, resume=state)

    # the written PNGs score exactly like the in-memory stream (same uint8 quantisation)
    from adasde.evaluation import score_images

    calc = score_images(tmp_path / "png", ref, progress=False)
    assert calc["value"] == pytest.approx(full["value"], rel=1e-6)


def test_cli_sample_with_nfe(tmp_path, capsys):
    from adasde.cli import main

    ref = _make_ref(tmp_path / "ref.npz")
    out = tmp_path / "res.json"
    assert main(["fid", "sample", "--model", MODEL, "--sampler", "euler", "--nfe", "3", "--seeds", "0-3",
                 "--ref", str(ref), "--batch", "2", "--device", "cpu", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"]["nfe"] == 3 and res["protocol"]["schedule"] == ["polynomial", 7.0]
    assert res["num_images"] == 4 and res["metric"] == "FD-test" and res["versions"]["adasde"]
    capsys.readouterr()
    assert main(["fid", "sample", "--model", MODEL, "--sampler", "nope", "--nfe", "3", "--seeds", "0-1",
                 "--ref", str(ref), "--no-progress"]) == 2  # a user error: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sampler 'nope'" in err[0]
