"""Fault injection: ``kill -9`` at random moments during ``adasde distill`` and ``adasde fid ref``.

After every kill each output is absent, the previous version or complete (never torn), the checkpoint is absent or
readable, and nothing but our own temporary/lock files is left; resuming then ends bit-identical to a run that was
never interrupted, and the leftovers of the killed writers are gone.  The CLI runs in forked children of this
(already imported) process, so a kill costs milliseconds instead of an interpreter start.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.cli import main
from adasde.coefficients import Coefficients, ModelIdentity, load, save
from adasde.distill.checkpoint import load_checkpoint
from adasde.evaluation.reference import load_stats
from adasde.fileio import LOCK_SUFFIX, TEMP_SUFFIX
from adasde.samplers import get_sigmas

DISTILL = ["distill", "--model", "testbed:gmm-error", "--steps", "4", "--batch", "8", "--trajectories", "480",
           "--checkpoint-every", "1", "--no-progress", "--threads", "1"]


def _child(argv: list[str]) -> None:
    os._exit(main(argv))


def _run(argv: list[str], kill_after: float | None) -> int | None:
    """Run the CLI in a forked child; SIGKILL it after ``kill_after`` seconds (None: let it finish)."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    if kill_after is None:
        proc.join(300)
        return proc.exitcode
    proc.join(kill_after)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        return None
    return proc.exitcode


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _old_version(path: Path) -> bytes:
    sig = get_sigmas("time_uniform", 4, 0.002, 80.0)
    c = Coefficients.untrained(sig, model=ModelIdentity(family="old"))
    return save(c, path).read_bytes()


@pytest.mark.slow
def test_kill9_during_distill_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    assert _run([*DISTILL, "--out", str(ref_dir / "x.safetensors")], None) == 0
    want = load(ref_dir / "x.safetensors")
    out = run_dir / "x.safetensors"
    ck = run_dir / "x.safetensors.ckpt.safetensors"
    old = _old_version(out)
    rng = random.Random(7)
    kills = 0
    t0 = time.perf_counter()
    while kills < 12 and time.perf_counter() - t0 < 40:
        rc = _run([*DISTILL, "--out", str(out), "--resume"], rng.uniform(0.05, 1.2))
        if rc is None:
            kills += 1
        else:
            assert rc == 0
        data = out.read_bytes()
        assert data == old or torch.equal(load(out).r, want.r), "a torn or foreign --out"
        if ck.exists():
            load_checkpoint(ck)  # readable, never half-written
        for name in _leftovers(run_dir, {out.name, ck.name}):
            assert name.endswith(TEMP_SUFFIX) or name.endswith(LOCK_SUFFIX), name
        if data != old:  # a run completed: start the next round from the previous version again
            old = _old_version(out)
    assert kills >= 10
    assert _run([*DISTILL, "--out", str(out), "--resume"], None) == 0
    got = load(out)
    for k in ("r", "a", "c", "gamma", "w", "sigmas"):
        assert torch.equal(getattr(got, k), getattr(want, k)), k
    assert _leftovers(run_dir, {out.name}) == []  # stale temps and the lock removed, checkpoint removed on success


@pytest.mark.slow
def test_kill9_during_fid_ref(tmp_path):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng_np = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng_np.integers(0, 255, (28, 28), dtype=np.uint8)).save(imgs / f"{i:04d}.png")
    dest = tmp_path / "out" / "ref.npz"
    argv = ["fid", "ref", "--data", str(imgs), "--dest", str(dest), "--net", "fmnist", "--no-progress"]
    t0 = time.perf_counter()
    assert _run(argv, None) == 0
    full = time.perf_counter() - t0  # kill moments are drawn within one uninterrupted run, whatever the machine
    want = load_stats(dest)
    previous = dest.read_bytes()
    rng = random.Random(3)
    kills = 0
    for _ in range(8):
        rc = _run(argv, rng.uniform(0.02, 0.8) * full)
        kills += rc is None
        got = load_stats(dest)  # never torn: the previous version or the complete new one
        assert np.array_equal(got.mu, want.mu) and np.array_equal(got.sigma, want.sigma)
        for name in _leftovers(dest.parent, {dest.name}):
            assert name.endswith(TEMP_SUFFIX), name
    assert kills >= 4
    assert _run(argv, None) == 0
    assert _leftovers(dest.parent, {dest.name}) == []
    assert previous[:4] == dest.read_bytes()[:4]
