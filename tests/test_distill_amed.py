"""AMED distillation (distill/amed.py) and the ``adasde distill`` CLI, on the real GMM testbed and samplers."""

from __future__ import annotations

import json

import pytest
import torch
from adasde.cli import main
from adasde.coefficients import Coefficients, load, save
from adasde.distill import teacher_trajectory
from adasde.distill.amed import distill_amed
from adasde.models import load_model
from adasde.samplers import teacher_sigmas
from adasde.samplers.amed import AMEDPredictor, sample_amed, sample_amed_plugin
from adasde.samplers.presets import initial_noise
from adasde.testbeds.metrics import reference_solve


@pytest.fixture(scope="module")
def gmm():
    return load_model("testbed:gmm-error", d=16, K=4, rank=2)


@pytest.fixture(scope="module")
def probe(gmm):
    x = initial_noise(range(5000, 5064), gmm.sample_shape, 80.0)
    return x, reference_solve(gmm, x, n_steps=100)


def test_amed_solver_trains_the_predictor_and_round_trips(gmm, probe, tmp_path):
    c = distill_amed(gmm, nfe=5, batch=32, trajectories=320, lr=0.05, seed=0)
    assert c.kind == "amed" and c.nfe == 5 and c.predictor and c.training["teacher"] == "heun"
    fresh = AMEDPredictor(0.01, 0.0, seed=0).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in c.predictor.items())  # the weights moved
    path = save(c, tmp_path / "amed.safetensors")
    back = load(path)
    assert back.kind == "amed" and set(back.predictor) == set(c.predictor)
    x, ref = probe
    err = lambda co: (sample_amed(gmm, x, co.sigmas.float(), coeffs=co) - ref).pow(2).mean()
    assert err(back) < err(Coefficients.untrained(c.sigmas, afs=True))
    assert c.training["losses"]["final_total"] < c.training["losses"]["first_total"]
    again = distill_amed(gmm, nfe=5, batch=32, trajectories=64, lr=0.05, seed=0)
    same = distill_amed(gmm, nfe=5, batch=32, trajectories=64, lr=0.05, seed=0)
    assert all(torch.equal(again.predictor[k], same.predictor[k]) for k in again.predictor)


@pytest.mark.parametrize("base", ["euler", "dpm_2", "ipndm", "dpmpp"])
def test_amed_plugin_tables(gmm, probe, base):
    """``constant=True``: per-step tables instead of the predictor (docs/ALGORITHMS.md section 4.4)."""
    c = distill_amed(gmm, nfe=5, plugin=base, batch=32, trajectories=256, lr=0.05, schedule="polynomial", rho=7.0,
                     constant=True)
    assert c.kind == "amed_plugin" and c.base == base and c.predictor is None and c.training["constant"]
    assert ((c.c > 0.99 - 1e-6) & (c.c < 1.01 + 1e-6)).all() and (c.a == 1).all() and (c.gamma == 0).all()
    x, ref = probe
    out = sample_amed_plugin(gmm, x, c.sigmas.float(), coeffs=c)
    assert torch.isfinite(out).all()
    if base == "dpm_2":  # trained tables follow the teacher (DPM-2 on the 2x finer grid) better than r=0.5, c=1
        fine = teacher_sigmas("polynomial", 4, 1, 0.002, 80.0, rho=7.0, dtype=torch.float64).tolist()
        y = teacher_trajectory(gmm, x, fine, 1, "student")[-1]
        err = lambda co: (sample_amed_plugin(gmm, x, c.sigmas.float(), coeffs=co, base=base) - y).pow(2).mean()
        assert err(c) < err(Coefficients.untrained(c.sigmas, afs=True, kind="amed_plugin", base=base))


def test_cli_writes_a_coefficient_file(tmp_path, capsys):
    out = tmp_path / "gmm5.safetensors"
    rc = main(["distill", "--model", "testbed:gmm-error", "--nfe", "5", "--trajectories", "64", "--batch", "16",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    c = load(out)
    assert c.kind == "adasde" and c.nfe == 5 and summary["nfe"] == 5 and c.training["trajectories"] == 64
    assert c.model.family == "gmm-error"
    rc = main(["distill", "--model", "testbed:gmm-error", "--nfe", "5", "--trajectories", "64", "--batch", "16",
               "--method", "amed_plugin", "--base", "dpm_2", "--out", str(tmp_path / "p.safetensors"),
               "--no-progress"])
    assert rc == 0 and load(tmp_path / "p.safetensors").base == "dpm_2"
    assert main(["distill", "--model", "testbed:gmm-error", "--out", str(out)]) == 2  # neither --steps nor --nfe
    assert "give --steps N" in capsys.readouterr().err
    # --steps counts sampling steps (intervals), as every host does: 3 steps with AFS = NFE 5
    rc = main(["distill", "--model", "testbed:gmm-error", "--steps", "3", "--trajectories", "32", "--batch", "16",
               "--out", str(tmp_path / "s3.safetensors"), "--no-progress"])
    assert rc == 0
    s3 = load(tmp_path / "s3.safetensors")
    assert s3.steps == 3 and s3.sigmas.numel() == 4 and s3.nfe == 5


def test_cli_uses_the_recipe_unless_overridden(tmp_path, capsys):
    from adasde.distill.recipes import RECIPES, recipe

    assert recipe(3) == RECIPES[3] and recipe(4) == RECIPES[5] and recipe(15) == RECIPES[max(RECIPES)]
    assert recipe(5, "builtin-fmnist") == {**RECIPES[5], "trajectories": 3000, "scale_dir": 0.05, "init": "random"}
    base = ["distill", "--model", "testbed:gmm-error", "--nfe", "5", "--trajectories", "32", "--no-progress"]
    main(base + ["--out", str(tmp_path / "r.safetensors")])
    t = load(tmp_path / "r.safetensors").training
    want = {k: v for k, v in RECIPES[5].items() if k != "trajectories"}
    assert {k: t[k] for k in want} == want and t["trajectories"] == 32 and t["init"] == "scan"
    main(base + ["--no-recipe", "--out", str(tmp_path / "p.safetensors")])  # the paper's single settings
    t = load(tmp_path / "p.safetensors").training
    assert (t["gamma_max"], t["M"], t["batch"], t["lr"], t["scale_dir"]) == (0.01, 3, 32, 0.2, 0.05)
    assert RECIPES[5]["scale_dir"] != 0.05  # so the two runs differ
    main(base + ["--gamma-max", "0.005", "--batch", "8", "--init", "random", "--out", str(tmp_path / "o.safetensors")])
    t = load(tmp_path / "o.safetensors").training
    assert (t["gamma_max"], t["batch"], t["init"]) == (0.005, 8, "random")
    assert t["scale_dir"] == RECIPES[5]["scale_dir"]
    capsys.readouterr()
    assert main(["distill", "--model", "testbed:gmm-error", "--nfe", "3", "--method", "amed", "--gamma-max", "0.01",
                 "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "--gamma-max 0.01" in capsys.readouterr().err
