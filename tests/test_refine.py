"""Endpoint refinement (distill/refine.py, docs/ALGORITHMS.md section 3.9): grid + coefficients against converged
endpoints, kept only when the held-out loss falls; resumable; the endpoint cache; ``adasde distill --from``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adasde import coefficients
from adasde.cli import main
from adasde.distill import distill
from adasde.distill.refine import RefineOptions, grid_from, refine
from adasde.errors import InputFileError, UsageError
from adasde.models import load_model
from adasde.policy import plan

SMALL = dict(trajectories=64, heldout=64, batch=16, teacher_nfe=35)


@pytest.fixture(scope="module")
def gmm():
    return load_model("testbed:gmm-error")


@pytest.fixture(scope="module")
def stage1(gmm) -> coefficients.Coefficients:
    return distill(gmm, nfe=5, trajectories=96, batch=16)


@pytest.fixture(scope="module")
def refined(gmm, stage1) -> coefficients.Coefficients:
    return refine(gmm, stage1, **SMALL)


def test_grid_parameterisation_keeps_ends_and_order() -> None:
    s = torch.tensor([80.0, 9.7, 0.47, 0.002], dtype=torch.float64)
    ls = s.log()
    u = ((ls[:-1] - ls[1:]) / (ls[0] - ls[-1])).log()
    back = grid_from(u, 80.0, 0.002)
    assert torch.allclose(back, s, rtol=1e-12) and back[0] == 80.0 and back[-1] == 0.002
    wild = grid_from(torch.tensor([5.0, -30.0, 0.0]), 80.0, 0.002)
    assert wild[0] == 80.0 and wild[-1] == 0.002 and bool((wild[:-1] > wild[1:]).all())


def test_refinement_lowers_the_held_out_endpoint_loss(stage1, refined) -> None:
    rec = refined.training["refine"]
    assert rec["kept"] and rec["heldout_after"] < 0.8 * rec["heldout_before"]
    assert refined.schedule == "learned" and refined.sigmas[0] == stage1.sigmas[0]
    assert refined.sigmas[-1] == stage1.sigmas[-1]
    assert not torch.allclose(refined.sigmas, stage1.sigmas)  # the interior moved
    assert torch.equal(refined.gamma, stage1.gamma) and torch.equal(refined.w, stage1.w)
    assert "refine" not in stage1.training  # the input is not mutated
    assert rec["start_sigmas"] == stage1.sigmas.tolist()


def test_refined_file_round_trips_and_every_sampling_plan_uses_its_grid(gmm, refined, tmp_path: Path) -> None:
    path = coefficients.save(refined, tmp_path / "gmm-nfe5.safetensors")
    back = coefficients.load(path)
    assert torch.equal(back.sigmas, refined.sigmas) and back.training["refine"]["kept"]
    p = plan(gmm, "adasde", nfe=5, coefficients=str(path))
    assert torch.equal(p.sigmas, refined.sigmas.to(torch.float64)) and p.nfe == 5
    auto = plan(gmm, "adasde", nfe=5, dirs=[tmp_path])
    assert auto.coeffs is not None and torch.equal(auto.sigmas, p.sigmas)


def test_a_refinement_that_does_not_win_is_not_kept(gmm, refined) -> None:
    again = refine(gmm, refined, **{**SMALL, "lr": 50.0})  # a wild learning rate ruins the solver
    assert not again.training["refine"]["kept"]
    assert torch.equal(again.sigmas, refined.sigmas) and torch.equal(again.r, refined.r)


def test_interrupted_refinement_resumes_to_the_same_result(gmm, stage1, refined, tmp_path: Path) -> None:
    ck = tmp_path / "refine.ckpt.safetensors"

    class StopError(Exception):
        pass

    def stop_at_3(info: dict) -> None:
        if info.get("phase") == "refine" and info["iteration"] == 3:
            raise StopError

    with pytest.raises(StopError):
        refine(gmm, stage1, **SMALL, checkpoint=str(ck), checkpoint_every=1, progress=stop_at_3)
    assert ck.exists()
    done = refine(gmm, stage1, **SMALL, checkpoint=str(ck), resume=True)
    assert torch.equal(done.sigmas, refined.sigmas) and torch.equal(done.r, refined.r)
    with pytest.raises(UsageError, match="lr"):  # another setting: refused, not silently mixed
        refine(gmm, stage1, **{**SMALL, "lr": 0.01}, checkpoint=str(ck), resume=True)


def test_endpoint_cache_is_reused_only_when_it_matches(gmm, stage1, refined, tmp_path: Path) -> None:
    cache = tmp_path / "endpoints.safetensors"
    seen: list[str] = []
    first = refine(gmm, stage1, **SMALL, endpoints=str(cache), progress=lambda i: seen.append(i["phase"]))
    assert cache.exists() and "endpoints" in seen and torch.equal(first.sigmas, refined.sigmas)
    seen.clear()
    second = refine(gmm, stage1, **SMALL, endpoints=str(cache), progress=lambda i: seen.append(i["phase"]))
    assert "endpoints" not in seen and torch.equal(second.sigmas, refined.sigmas)
    seen.clear()
    refine(gmm, stage1, **{**SMALL, "teacher_nfe": 9}, endpoints=str(cache), progress=lambda i: seen.append(i["phase"]))
    assert "endpoints" in seen  # another teacher: recomputed
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputFileError, match="junk.safetensors"):
        refine(gmm, stage1, **SMALL, endpoints=str(tmp_path / "junk.safetensors"))


def test_amed_refinement_trains_the_predictor_and_recomputes_the_constant_tables() -> None:
    import dataclasses

    from adasde.samplers.schedules import get_sigmas

    model = load_model("builtin:fmnist")
    shipped = coefficients.load(Path(coefficients.__file__).parent / "data" / "builtin-fmnist-amed-nfe3.safetensors")
    grid = get_sigmas("polynomial", 3, 0.002, 80.0, rho=7.0, dtype=torch.float64)  # the stage-1 grid
    start = dataclasses.replace(shipped, sigmas=grid, schedule="polynomial", rho=7.0)
    out = refine(model, start, trajectories=16, heldout=16, batch=8, teacher_nfe=5, passes=1, lr=0.05)
    rec = out.training["refine"]
    assert rec["kept"] and rec["heldout_after"] < rec["heldout_before"]
    assert any(not torch.equal(out.predictor[k], start.predictor[k]) for k in start.predictor)
    assert set(out.predictor) == set(start.predictor)
    assert not torch.allclose(out.r, start.r)  # the constant tables follow the new predictor and grid
    assert out.sigmas[0] == start.sigmas[0] and out.sigmas[-1] == start.sigmas[-1]
    assert not torch.allclose(out.sigmas, start.sigmas)


def test_bad_settings_are_one_line_usage_errors(gmm, stage1) -> None:
    with pytest.raises(UsageError, match="trajectories=0"):
        refine(gmm, stage1, trajectories=0)
    with pytest.raises(UsageError, match="nothing to learn"):
        refine(gmm, stage1, grid=False, coefficients=False)
    plugin = distill_plugin(gmm)
    with pytest.raises(UsageError, match="amed_plugin"):
        refine(gmm, plugin)
    assert RefineOptions().passes == 2


def distill_plugin(gmm):
    from adasde.distill.amed import distill_amed

    return distill_amed(gmm, nfe=3, plugin="euler", trajectories=16, batch=8)


def test_cli_refines_a_file_with_from(stage1, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = coefficients.save(stage1, tmp_path / "stage1.safetensors")
    out = tmp_path / "refined.safetensors"
    rc = main(["distill", "--model", "testbed:gmm-error", "--from", str(src), "--out", str(out), "--no-progress",
               "--refine-trajectories", "64", "--endpoints", str(tmp_path / "ep.safetensors")])
    assert rc == 0
    got = coefficients.load(out)
    assert got.training["refine"]["trajectories"] == 64 and got.schedule in ("learned", stage1.schedule)
    assert not list(tmp_path.glob("*.ckpt.safetensors"))  # checkpoints removed after success
    capsys.readouterr()
    for argv, needle in (
        (["--from", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
        (["--from", str(src), "--no-refine"], "--no-refine"),
        (["--from", str(src), "--nfe", "3"], "NFE-5"),
    ):
        rc = main(["distill", "--model", "testbed:gmm-error", "--out", str(tmp_path / "x.safetensors"),
                   "--no-progress", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err
