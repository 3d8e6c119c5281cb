"""Robust start of AdaSDE distillation (distill/robust.py) and the shared options (distill/options.py)."""

from __future__ import annotations

import pytest
import torch
from adasde.distill import DistillOptions, distill
from adasde.distill.amed import distill_amed
from adasde.errors import UsageError
from adasde.models import load_model

NFE3 = dict(nfe=3, M=3, gamma_max=0.02, batch=32, trajectories=320)


@pytest.fixture(scope="module")
def gmm_error():
    return load_model("testbed:gmm-error")  # the d = 64 controlled-error mixture of the distillation benchmark


def test_scan_avoids_the_plateau_a_random_start_falls_onto(gmm_error):
    """Seed 1's random start puts the last r above the loss barrier near 0.5; it then slides towards r = 1 (the
    intermediate point on sigma_min).  The scan starts below the barrier and ends with a far lower held-out loss."""
    rand = distill(gmm_error, seed=1, init="random", **NFE3)
    scan = distill(gmm_error, seed=1, **NFE3)
    assert rand.training["init_r"] is None and scan.training["init"] == "scan"
    assert rand.r[-1, 0] > 0.8  # on the plateau
    assert scan.training["init_r"][-1] <= 0.2 and scan.r[-1, 0] < 0.3
    assert scan.training["heldout_loss"] < rand.training["heldout_loss"] / 20
    assert len(scan.training["heldout_losses"]) == 2
    again = distill(gmm_error, seed=1, **NFE3)  # deterministic
    assert torch.equal(again.r, scan.r) and again.training["heldout_loss"] == scan.training["heldout_loss"]


def test_options_object_and_keywords_are_the_same_run(gmm_error):
    opts = DistillOptions(num_steps=3, batch=8, trajectories=16, seed=3, lr=0.1)
    a = distill(gmm_error, opts)
    b = distill(gmm_error, num_steps=3, batch=8, trajectories=16, seed=3, lr=0.1)
    c = distill(gmm_error, DistillOptions(num_steps=3, batch=8, trajectories=16, seed=3), lr=0.1)  # keyword wins
    assert torch.equal(a.r, b.r) and torch.equal(a.r, c.r) and a.training["lr"] == 0.1
    assert a.training["batch"] == 8 and a.training["M"] == 3  # an unset field takes the AdaSDE default
    with pytest.raises(UsageError, match="unknown option.*learning_rate"):
        distill(gmm_error, learning_rate=0.1)
    with pytest.raises(UsageError, match="plugin only apply to distill_amed"):
        distill(gmm_error, plugin="ipndm", num_steps=3)
    with pytest.raises(UsageError, match="gamma_max only apply to distill"):
        distill_amed(gmm_error, gamma_max=0.02, num_steps=3)
    with pytest.raises(UsageError, match="init="):
        distill(gmm_error, init="zeros", num_steps=3)
    am = distill_amed(gmm_error, DistillOptions(num_steps=3, batch=8, trajectories=16))
    assert am.training["lr"] == 5e-3 and am.training["batch"] == 8 and am.training["M"] == 1  # AMED defaults


def test_bench_recipes_ranks_candidates_by_heldout_loss(tmp_path):
    from adasde.bench.recipes import candidates, run

    cands = dict(candidates(3))
    assert cands["published"]["gamma_max"] == 0.02 and cands["batch 64"]["batch"] == 64
    text = run(nfes=(3,), seeds=1, trajectories=32, out_dir=str(tmp_path), name="r")
    rows = [line for line in text.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == len(cands) and "**best**" in rows[0]
    losses = [float(r.split("|")[8]) for r in rows]
    assert losses == sorted(losses) and (tmp_path / "r.md").is_file()


def test_heldout_chunks_do_not_change_the_result(gmm_error):
    """The held-out batch runs in chunks of the per-process batch; a student with history between steps (iPNDM
    plugin) and the teacher give the same losses whatever the chunk size."""
    from adasde.distill.adasde import grids
    from adasde.distill.engine import LoopConfig
    from adasde.distill.robust import HeldOut
    from adasde.samplers import PluginHistory, plugin_step

    _, s, fine = grids("time_uniform", 4, 2, 0.002, 80.0, 1.0, None)
    cfg = LoopConfig(shape=gmm_error.sample_shape, sigmas=s, fine=fine, M=2, teacher="ipndm", seed=0, batch=12,
                     trajectories=12, lr=0.1, cosine=False, bptt=False, flow=False, device=torch.device("cpu"),
                     dtype=torch.float64)
    hist = [PluginHistory()]

    def step(n, x, eps, extra):
        if n == 0:
            hist[0] = PluginHistory()
        den = gmm_error(x, x.new_full((x.shape[0],), s[n]))
        return plugin_step("ipndm", gmm_error, x, s[n], s[n + 1], den, 0.4, 1.0, 1.0, hist[0])[0]

    whole, parts = HeldOut(gmm_error, cfg, chunk=12), HeldOut(gmm_error, cfg, chunk=5)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(whole.ys, parts.ys))
    lw, lp = whole.losses(step), parts.losses(step)
    assert len(lw) == 3 and all(abs(a - b) <= 1e-9 * max(1.0, a) for a, b in zip(lw, lp)) and sum(lw) > 0
