"""The generation layer (generate/): the summary line and the PNG parameters of ``adasde sample``, the initial noise at
the plan's first sigma, NaN/inf refused with nothing written, a used folder resumed or refused, and ``kill -9``
during ``sample`` / ``fid sample`` (every PNG complete, the rerun equal to one uninterrupted pass)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde import coefficients
from adasde.cli import main
from adasde.generate import NonFiniteSampleError, sample_batch
from adasde.policy import ModelInfo, Plan, plan
from PIL import Image

SAMPLE = ["sample", "--model", "builtin:fmnist", "--sampler", "adasde", "--nfe", "5", "--no-progress"]


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_summary_line_and_png_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SAMPLE, "--seeds", "3-4", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["sampler"] == "adasde" and summary["nfe"] == 5 and summary["steps"] == 3 and summary["afs"]
    shipped = coefficients.load(summary["coefficients"])
    assert summary["schedule"] == [shipped.schedule, shipped.rho]  # the file's own grid (learned: section 3.9)
    assert summary["coefficients"].endswith("builtin-fmnist-adasde-nfe5.safetensors")
    assert len(summary["coefficients_sha256"]) == 64 and summary["num_images"] == 2 and summary["seconds"] > 0
    with Image.open(tmp_path / "o" / "000004.png") as im:
        params = im.text["parameters"]
    assert "Steps: 3" in params and "Sampler: adasde" in params and "NFE: 5" in params and "Seed: 4" in params
    assert "builtin-fmnist-adasde-nfe5.safetensors" in params and summary["coefficients_sha256"][:10] in params


def test_every_silent_choice_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NFE 4 for a two-call solver turns AFS off, and no 2-step file exists: both are said on stderr."""
    assert main([*SAMPLE[:-3], "--nfe", "4", "--no-progress", "--seeds", "0", "--grid", str(tmp_path / "g.png")]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: ")]
    assert any("NFE 4 is even" in n and "AFS" in n for n in notes), notes
    assert any("no AdaSDE coefficient file fits 2 steps" in n for n in notes), notes


class _Recorder(torch.nn.Module):
    """A denoiser that records what it is called with and returns zeros (or NaN from call ``nan_at``)."""

    sample_shape = (1, 4, 4)

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.nan_at = nan_at

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.calls.append((x.clone(), sigma.clone()))
        out = torch.zeros_like(x)
        return out * float("nan") if self.nan_at is not None and len(self.calls) > self.nan_at else out


def test_initial_noise_is_drawn_at_the_plans_first_sigma() -> None:
    """A grid that starts below the model's sigma_max (e.g. a coefficient file trained on a shorter range) starts
    from noise of that scale, not of the model's sigma_max."""
    model = _Recorder()
    p = Plan("euler", torch.tensor([20.0, 2.0, 0.1], dtype=torch.float64), 2, 2)
    sample_batch(model, p, list(range(64)))
    x0, s0 = model.calls[0]
    assert float(s0[0]) == pytest.approx(20.0)
    assert float(x0.std()) == pytest.approx(20.0, rel=0.05)


def test_a_model_returning_nan_stops_with_the_step_and_sigma_and_writes_nothing(tmp_path: Path) -> None:
    p = plan(ModelInfo(family="x", prediction="edm", sigma_min=0.002, sigma_max=80.0), "euler", nfe=4)
    with pytest.raises(NonFiniteSampleError, match=r"step 3 of 4 \(sigma [0-9.]+\) for seeds 0\.\.1"):
        sample_batch(_Recorder(nan_at=2), p, [0, 1])


def test_a_used_folder_resumes_with_the_same_settings_and_is_refused_with_others(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main([*SAMPLE, "--seeds", "0-5", "--out", str(out), "--batch", "4"]) == 0
    full = _pngs(out)
    for name in ("000001.png", "000004.png"):  # an interrupted run: some images missing
        (out / name).unlink()
    assert main([*SAMPLE, "--seeds", "0-5", "--out", str(out), "--batch", "4"]) == 0
    again = _pngs(out)
    assert sorted(again) == sorted(full) and all(np.array_equal(again[k], full[k]) for k in full)
    assert json.loads((out / ".adasde_sample.json").read_text())["complete"] is True
    assert main([*SAMPLE, "--seeds", "0-5", "--out", str(out), "--sampler", "euler"]) == 2  # another run's folder


def _child(argv: list[str]) -> None:
    os._exit(main(argv))


def _killed_run(argv: list[str], after: float) -> bool:
    """Run the CLI in a forked child and SIGKILL it after ``after`` seconds; whether it was killed."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    proc.join(after)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        return True
    return False


def _kill_until(argv: list[str], full: float, rng: random.Random, after: Callable[[bool], object],
                kills: int = 3, attempts: int = 12) -> int:
    """Kill runs of ``argv`` at random moments within ``full`` seconds (one uninterrupted run) until ``kills`` runs
    were killed; ``after(killed)`` checks the outputs after each attempt.  Returns the number of kills."""
    done = 0
    for _ in range(attempts):
        if done >= kills:
            break
        killed = _killed_run(argv, rng.uniform(0.05, 0.6) * full)
        done += killed
        after(killed)
    return done


@pytest.mark.slow
def test_kill_during_sample_and_fid_sample_then_rerun_equals_one_pass(tmp_path: Path) -> None:
    rng = random.Random(0)
    args = [*SAMPLE, "--seeds", "0-39", "--batch", "2"]
    t0 = time.perf_counter()
    assert _killed_run([*args, "--out", str(tmp_path / "ref")], 600) is False
    full = time.perf_counter() - t0  # kill moments are drawn within one uninterrupted run, whatever the machine
    ref = _pngs(tmp_path / "ref")
    kills = 0
    out = tmp_path / "killed"
    def check_and_reset(killed: bool) -> None:
        for p in out.glob("*.png"):  # every image on disk is complete and right
            assert np.array_equal(np.asarray(Image.open(p)), ref[p.name]), p.name
        if not killed:  # it finished first: keep a few images, so the next run has work left to resume
            for p in sorted(out.glob("*.png"))[5:]:
                p.unlink()

    kills += _kill_until([*args, "--out", str(out)], full, rng, check_and_reset)
    assert main([*args, "--out", str(out)]) == 0
    got = _pngs(out)
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".adasde-tmp"))]

    stats = tmp_path / "ref.npz"
    assert main(["fid", "ref", "--data", str(tmp_path / "ref"), "--net", "fmnist", "--dest", str(stats),
                 "--no-progress"]) == 0
    fid = ["fid", "sample", "--model", "builtin:fmnist", "--sampler", "adasde", "--nfe", "5", "--seeds", "0-39",
           "--ref", str(stats), "--batch", "2", "--checkpoint-every", "0", "--no-progress"]
    t0 = time.perf_counter()
    assert _killed_run([*fid, "--json", str(tmp_path / "one.json")], 600) is False
    full = time.perf_counter() - t0
    state = tmp_path / "state.npz"
    kills += _kill_until([*fid, "--resume", str(state)], full, rng,
                         lambda killed: killed or state.unlink())  # finished first: start the state over
    assert main([*fid, "--resume", str(state), "--json", str(tmp_path / "two.json")]) == 0
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["num_images"] == one["num_images"] == 40
    assert two["value"] == pytest.approx(one["value"], rel=1e-9, abs=1e-9)
    assert kills >= 6
