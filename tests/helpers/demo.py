"""The reduced ``adasde demo`` run shared by the demo tests (``reduced_demo`` fixture in tests/conftest.py): 32
distillation trajectories, 64 images per solver at the headline NFE 5, 32 at NFE 3, through the real CLI.  The
coefficient search path is isolated: the package's ``coefficients/data/`` is replaced by an empty folder and
``$ADASDE_COEFFICIENTS`` points at a folder with one AMED-Solver file (NFE 5, with predictor weights), so the run is
the same whatever files the package ships.
"""

from __future__ import annotations

import io
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from adasde.coefficients import Coefficients, ModelIdentity, lookup, save

NFE = 5
CHART_NFES = (3, 5)
SAMPLES, CHART_SAMPLES, TRAJECTORIES = 64, 32, 32
TRAINING_FREE = ("ipndm", "dpmpp_3m", "unipc", "euler")


@dataclass
class DemoRun:
    out: Path
    coef_dir: Path  # $ADASDE_COEFFICIENTS of the run (the AMED file)
    rc: int
    stdout: str
    stderr: str
    seconds: float


def make_amed_file(folder: Path, nfe: int = NFE) -> Path:
    """An AMED-Solver coefficient file for the built-in model with (untrained, seeded) predictor weights."""
    from adasde.models import load_model
    from adasde.samplers import AMEDPredictor
    from adasde.samplers.presets import preset

    model = load_model("builtin:fmnist")
    sigmas, opts = preset("amed", nfe, model.sigma_min, model.sigma_max)
    pred = AMEDPredictor(scale_dir=0.01, seed=3)
    c = Coefficients.untrained(sigmas.double(), afs=opts["afs"], kind="amed", predictor=pred.state_dict(),
                               predictor_config=pred.config(), schedule="time_uniform", rho=1.0,
                               model=ModelIdentity(**model.identity()))
    return save(c, folder / f"amed-builtin-fmnist-nfe{nfe}.safetensors")


def run_cli(args: list[str], coef_dirs: list[Path], no_shipped: Path) -> tuple[int, str, str]:
    """``adasde.cli.main(args)`` with stdout/stderr captured, ``$ADASDE_COEFFICIENTS`` = ``coef_dirs`` and the
    shipped-coefficients folder replaced by ``no_shipped``."""
    from adasde.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(lookup.ENV_VAR, os.pathsep.join(str(d) for d in coef_dirs))
        mp.setattr(lookup, "DATA_DIR", no_shipped)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                rc = main([*args, "--threads", "1"])
        finally:
            torch.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


def run_reduced_demo(base: Path) -> DemoRun:
    """The reduced demo run in the empty folder ``base`` (output in ``base/out``)."""
    coef_dir, empty = base / "coefficients", base / "no-shipped"
    coef_dir.mkdir()
    empty.mkdir()
    make_amed_file(coef_dir)
    t = time.perf_counter()
    rc, out, err = run_cli(["demo", "--out", str(base / "out"), "--nfe", str(NFE), "--chart-nfes",
                            *map(str, CHART_NFES), "--samples", str(SAMPLES), "--chart-samples",
                            str(CHART_SAMPLES), "--trajectories", str(TRAJECTORIES), "--refine-trajectories",
                            str(TRAJECTORIES), "--no-progress"],
                           [coef_dir], empty)
    return DemoRun(base / "out", coef_dir, rc, out, err, time.perf_counter() - t)
