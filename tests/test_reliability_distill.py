"""Distillation runs that must fail early and clearly, never late or silently: resume identity, concurrent writers of
one ``--out``, unwritable outputs, saturating learning rates, non-monotone grids, leftover checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from adasde.coefficients import load
from adasde.distill import distill, map_tables
from adasde.distill.checkpoint import load_checkpoint
from adasde.distill.params import init_raw
from adasde.errors import AdasdeError, InputFileError, UsageError
from adasde.fileio import OutputLock
from adasde.models import load_model
from adasde.samplers import get_sigmas

TINY = dict(num_steps=3, batch=8, trajectories=32, checkpoint_every=1)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adasde", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# ------------------------------------------------------------------------------------- item 2: resume identity
def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    a = load_model("testbed:gmm-error", d=16, K=4, rank=2)
    b = load_model("testbed:gmm", d=16, K=4, rank=2)  # same shape, another model
    ck = tmp_path / "run.ckpt.safetensors"
    first = distill(a, seed=1, checkpoint=ck, **TINY)
    assert load_checkpoint(ck)[1]["settings"]["model"]["family"] == "gmm-error"
    with pytest.raises(UsageError, match="another model.*family.*gmm-error.*gmm"):
        distill(b, seed=1, checkpoint=ck, resume=True, **TINY)
    c = load_model("testbed:gmm-error", d=16, K=4, rank=2)
    c.sigma_max = 40.0
    with pytest.raises(UsageError, match="another model.*sigma_max"):
        distill(c, seed=1, checkpoint=ck, resume=True, **TINY)
    again = distill(a, seed=1, checkpoint=ck, resume=True, **TINY)  # the same model still resumes
    assert torch.equal(again.r, first.r)


def test_resume_compares_weights_fingerprint(tmp_path):
    from adasde.distill.checkpoint import run_identity

    m = load_model("builtin:fmnist")
    ident = run_identity(m)
    assert ident["family"] == "builtin-fmnist" and len(ident["fingerprint"]) == 64
    with torch.no_grad():
        next(m.parameters()).add_(1e-3)
    assert run_identity(m)["fingerprint"] != ident["fingerprint"]


# ------------------------------------------------------------------------------ item 7: two writers, one --out
def test_second_writer_of_the_same_out_refuses(tmp_path):
    out = tmp_path / "x.safetensors"
    with OutputLock(out):
        res = cli("distill", "--model", "testbed:gmm-error", "--steps", "3", "--batch", "4", "--trajectories", "8",
                  "--out", str(out), "--no-progress")
        assert res.returncode == 2, res.stderr
        assert "being written by another adasde run" in res.stderr and "Traceback" not in res.stderr
        assert not out.exists()
    errors = []

    def hold():
        try:
            with OutputLock(out):
                pass
        except InputFileError as exc:
            errors.append(exc)

    with OutputLock(out):
        t = threading.Thread(target=hold)
        t.start()
        t.join()
    assert len(errors) == 1
    with OutputLock(out):  # released: the next run takes it
        pass
    assert not list(tmp_path.iterdir())  # no lock file left behind


# ---------------------------------------------------------------------------- item 8: validate before the work
def test_unwritable_or_directory_out_fails_before_training(tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    res = cli("distill", "--model", "testbed:gmm-error", "--steps", "3", "--trajectories", "100000000", "--out",
              str(folder), "--no-progress", timeout=120)
    assert res.returncode == 2 and "is a folder" in res.stderr, res.stderr
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        res = cli("distill", "--model", "testbed:gmm-error", "--steps", "3", "--trajectories", "100000000", "--out",
                  str(ro / "x.safetensors"), "--no-progress", timeout=120)
        assert res.returncode == 2 and "not writable" in res.stderr, res.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("distill", "--model", "testbed:gmm-error", "--steps", "3", "--trajectories", "100000000", "--out",
              str(blocker / "x.safetensors"), "--no-progress", timeout=120)
    assert res.returncode == 2 and "cannot create its folder" in res.stderr, res.stderr


def test_failure_after_training_names_the_checkpoint(tmp_path, monkeypatch):
    from adasde.distill import cli as dcli

    out = tmp_path / "x.safetensors"

    def broken_save(coeffs, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("adasde.coefficients.save", broken_save)
    parser = __import__("argparse").ArgumentParser()
    sub = parser.add_subparsers()
    dcli.register(sub)
    args = parser.parse_args(["distill", "--model", "testbed:gmm-error", "--steps", "3", "--batch", "4",
                              "--trajectories", "8", "--out", str(out), "--no-progress"])
    with pytest.raises(AdasdeError, match=r"No space left.*finished training is in the checkpoint .*ckpt") as e:
        args.func(args)
    assert "\n" not in str(e.value)
    ck = Path(str(out) + ".ckpt.safetensors")
    assert ck.is_file()
    monkeypatch.undo()
    assert args.func(dcli_args(dcli, out, "--resume")) == 0  # the rerun finishes from the checkpoint
    assert out.is_file() and not ck.exists()


def dcli_args(dcli, out, *extra):
    import argparse

    parser = argparse.ArgumentParser()
    dcli.register(parser.add_subparsers())
    return parser.parse_args(["distill", "--model", "testbed:gmm-error", "--steps", "3", "--batch", "4",
                              "--trajectories", "8", "--out", str(out), "--no-progress", *extra])


def test_checkpoint_removed_after_success_unless_kept(tmp_path):
    from adasde.distill import cli as dcli

    out = tmp_path / "x.safetensors"
    assert dcli_args(dcli, out).func(dcli_args(dcli, out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert (out.stat().st_mode & 0o777) == (0o666 & ~_umask())
    out2 = tmp_path / "y.safetensors"
    assert dcli_args(dcli, out2).func(dcli_args(dcli, out2, "--keep-checkpoint")) == 0
    assert (tmp_path / "y.safetensors.ckpt.safetensors").is_file()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_saturating_lr_gives_a_valid_file_or_refusal():
    """r = sigmoid(raw) rounds to exactly 0 or 1 in float32 for |raw| > ~17; the mapping keeps r inside (0, 1)."""
    raw = init_raw(3, 1, 0)
    raw["r"] = torch.tensor([[40.0], [-120.0], [0.0]])
    r = map_tables(raw, 0.05, 0.2, 0.01)["r"]
    assert ((r > 0) & (r < 1)).all(), r
    assert r[2, 0] == 0.5  # ordinary values unchanged


def test_lr_20_run_writes_a_valid_file(tmp_path):
    out = tmp_path / "x.safetensors"
    res = cli("distill", "--model", "testbed:gmm-error", "--steps", "4", "--batch", "8", "--trajectories", "64",
              "--lr", "20", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    c = load(out)
    assert ((c.r > 0) & (c.r < 1)).all()


def test_non_monotone_grid_is_refused_before_training():
    with pytest.raises(UsageError, match=r"time_uniform.*sigma_min=0\.3.*polynomial"):
        get_sigmas("time_uniform", 5, 0.3, 80.0)
    assert get_sigmas("time_uniform", 5, 0.002, 80.0).diff().lt(0).all()
    gmm = load_model("testbed:gmm-error", d=16, K=4, rank=2)
    with pytest.raises(UsageError, match="time_uniform"):  # refused before the first iteration of a huge run
        distill(gmm, num_steps=4, sigma_min=0.3, trajectories=10**9, batch=8)
