"""``adasde demo`` end to end in a reduced setting, through the real CLI.

One demo run (32 distillation trajectories, 64 images per solver at the headline NFE 5, 32 at NFE 3) is shared by the
tests here and by the other demo tests: the ``reduced_demo`` fixture (tests/conftest.py, tests/helpers/demo.py).  The
coefficient search path is isolated: the package's ``coefficients/data/`` is replaced by an empty folder and
``$ADASDE_COEFFICIENTS`` points at a folder with one AMED-Solver file (NFE 5, with predictor weights), so the run is
the same whatever files the package ships.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.coefficients import load, lookup
from adasde.demo.run import DEMO_SOLVERS
from helpers.demo import (
    CHART_NFES,
    CHART_SAMPLES,
    NFE,
    SAMPLES,
    TRAINING_FREE,
    TRAJECTORIES,
    DemoRun,
    run_cli,
)
from PIL import Image

SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def demo(reduced_demo: DemoRun) -> DemoRun:
    return reduced_demo


def _results(run: DemoRun) -> dict:
    return json.loads((run.out / "results.json").read_text())


def _fd(run: DemoRun, solver: str, nfe: int) -> float:
    (row,) = [r for r in _results(run)["rows"] if r["solver"] == solver and r["nfe"] == nfe]
    return row["fd_fmnist"]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


# ------------------------------------------------------------------------------------------------------- main run
def test_results_json_every_solver_at_the_headline_nfe(demo: DemoRun) -> None:
    res = _results(demo)
    assert res["nfe"] == NFE and res["chart_nfes"] == list(CHART_NFES) and res["quick"] is False
    head = {r["solver"]: r for r in res["rows"] if r["nfe"] == NFE}
    assert sorted(head) == sorted(DEMO_SOLVERS)
    for name, r in head.items():
        assert r["n"] == SAMPLES and r["trained"] == (name in ("adasde", "amed"))
        assert math.isfinite(r["fd_fmnist"]) and r["fd_fmnist"] > 0, r
        assert math.isfinite(r["ms_per_image"]) and r["ms_per_image"] > 0
    # NFE 3: the training-free solvers only (no coefficients for the learned ones there), reported as skipped
    low = {r["solver"]: r for r in res["rows"] if r["nfe"] == 3}
    assert sorted(low) == sorted(TRAINING_FREE)
    assert all(r["n"] == CHART_SAMPLES and math.isfinite(r["fd_fmnist"]) for r in low.values())
    assert sorted(res["skipped"]) == ["adasde NFE 3: no shipped coefficients", "amed NFE 3: no shipped coefficients"]
    assert len(res["rows"]) == len(DEMO_SOLVERS) + len(TRAINING_FREE)
    assert set(res["timings"]) == {"load", "distill", "sample"}
    # all solvers share seeds and model but not their output: the FD values differ
    assert len({round(r["fd_fmnist"], 6) for r in head.values()}) == len(head)


def test_distilled_coefficients_file(demo: DemoRun) -> None:
    path = demo.out / f"adasde-builtin-fmnist-nfe{NFE}.safetensors"
    assert _results(demo)["coefficients"] == path.name
    c = load(path)
    assert c.kind == "adasde" and c.nfe == NFE and c.afs and c.steps == 3
    assert c.model.family == "builtin-fmnist" and c.model.prediction == "edm"
    assert c.training["trajectories"] == TRAJECTORIES
    for k in ("r", "a", "c", "gamma"):
        assert torch.isfinite(getattr(c, k)).all()
    assert not torch.allclose(c.r, torch.full_like(c.r, 0.5))  # moved away from the untrained DPM-Solver-2 values
    # the file is found by the ordinary lookup for the built-in model at this NFE
    found = lookup.find_coefficients("fmnist", "edm", nfe=NFE, dirs=[demo.out], kind="adasde")
    assert found is not None and Path(found.source) == path


def test_stdout_table(demo: DemoRun) -> None:
    lines = demo.stdout.splitlines()
    (i,) = [j for j, ln in enumerate(lines) if ln.split()[:3] == ["solver", "NFE", "FD-FMNIST"]]
    rows = [ln.split() for ln in lines[i + 1: i + 1 + len(DEMO_SOLVERS)]]
    assert sorted(r[0] for r in rows) == sorted(DEMO_SOLVERS)
    fds = [float(r[2]) for r in rows]
    assert fds == sorted(fds)  # best first
    for r in rows:
        assert int(r[1]) == NFE and int(r[3]) == SAMPLES
        assert float(r[2]) == pytest.approx(_fd(demo, r[0], NFE), abs=6e-4)
    assert f"report: {demo.out / 'report.html'}" in demo.stdout
    assert f"distilled coefficients: {demo.out / f'adasde-builtin-fmnist-nfe{NFE}.safetensors'}" in demo.stdout
    assert "not run: amed NFE 3: no shipped coefficients" in demo.stdout


def test_sample_grids(demo: DemoRun) -> None:
    grids = sorted(p.name for p in demo.out.glob("grid-*.png"))
    assert grids == sorted(f"grid-{s}-nfe{NFE}.png" for s in DEMO_SOLVERS)
    side = (8 * (28 + 2) + 2) * 2  # 8 x 8 images of 28 px, 2 px gutters, scale 2
    arrays = {}
    for name in DEMO_SOLVERS:
        a = _rgb(demo.out / f"grid-{name}-nfe{NFE}.png")
        assert a.shape == (side, side, 3)
        cells = a[4:-4, 4:-4]
        assert cells.std() > 20, f"{name}: grid looks blank"
        # a garment on a dark background (Fashion-MNIST): the image corners are dark in most cells
        corners = np.array([a[4 + 60 * r, 4 + 60 * q] for r in range(8) for q in range(8)])
        assert (corners.mean(axis=1) < 80).mean() > 0.5, f"{name}: not Fashion-MNIST-like"
        arrays[name] = a
    # same seeds and initial noise: grids of different solvers differ, but not completely
    assert not np.array_equal(arrays["euler"], arrays["ipndm"])


def test_fd_vs_nfe_chart(demo: DemoRun) -> None:
    root = ET.parse(demo.out / "fd_vs_nfe.svg").getroot()
    lines = {e.get("data-name"): e for e in root.iter(SVG_NS + "polyline")}
    # a line for each solver measured at both NFEs; the learned ones have one point (a marker) at NFE 5
    assert sorted(lines) == sorted(TRAINING_FREE)
    assert all(len(e.get("points").split()) == len(CHART_NFES) for e in lines.values())
    assert len(list(root.iter(SVG_NS + "circle"))) == len(DEMO_SOLVERS) + len(TRAINING_FREE)
    legend = [t.text for t in root.iter(SVG_NS + "text")]
    assert all(s in legend for s in DEMO_SOLVERS)
    # colours follow DEMO_SOLVERS (adasde red), independent of which solver happens to be measured first
    from adasde.demo.report import PALETTE

    for name, e in lines.items():
        assert e.get("stroke") == PALETTE[DEMO_SOLVERS.index(name)]


def test_coefficients_chart(demo: DemoRun) -> None:
    root = ET.parse(demo.out / "coefficients.svg").getroot()
    lines = {e.get("data-name"): e.get("points").split() for e in root.iter(SVG_NS + "polyline")}
    assert sorted(lines) == ["a", "c", "gamma x 100", "r"]
    assert all(len(p) == 3 for p in lines.values())  # 3 student steps at NFE 5 (AFS)


def test_report_html(demo: DemoRun) -> None:
    text = (demo.out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://|<script|<link|url\(", text, re.I)  # offline, self-contained
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', text)
    grids = sorted(f"grid-{s}-nfe{NFE}.png" for s in DEMO_SOLVERS)
    rows = len(DEMO_SOLVERS) + 1  # the same-noise comparison: the converged reference, then one row per solver
    same = sorted([f"same-noise-{k}.png" for k in range(rows)] + [f"same-noise-{k}-zoom.png" for k in range(rows)])
    assert sorted(srcs) == sorted(grids + same)
    assert all((demo.out / s).is_file() for s in srcs)
    assert "converged model (Heun, 35 NFE)" in text
    assert all(f'data-name="{s}"' in text for s in DEMO_SOLVERS)
    assert text.count("<svg") == 2 and 'id="chart"' in text and 'id="coefficients"' in text
    assert text.count("<polyline") == len(TRAINING_FREE) + 4
    table = text[text.index("<table>"): text.index("</table>")]
    assert table.count("<tr>") == len(DEMO_SOLVERS) + 1 and table.count('class="best"') == 1
    best = min(_fd(demo, s, NFE) for s in DEMO_SOLVERS)
    assert f'<td class="best"><b>{best:.3f}</b></td>' in table
    assert "not FID" in text and "distilled in this run" in text and "AMED-Solver uses the shipped" in text
    assert "amed NFE 3: no shipped coefficients" in text


def test_amed_gets_the_bottleneck_features(demo: DemoRun) -> None:
    """With a predictor in the AMED file the demo passes the model's bottleneck to it (samplers.sample_amed)."""
    from adasde.demo.run import _generate
    from adasde.generate import to_uint8
    from adasde.models import load_model
    from adasde.samplers import sample_amed
    from adasde.samplers.presets import initial_noise

    c = load(next(demo.coef_dir.glob("amed-*.safetensors")))
    assert c.predictor
    model = load_model("builtin:fmnist")
    seeds = [0, 1, 2, 3]
    got = _generate(model, "amed", NFE, seeds, c, batch=4, bar=None)
    x = initial_noise(seeds, model.sample_shape, model.sigma_max)
    sig = c.sigmas.float()
    with_features = model.decode(sample_amed(model, x, sig, coeffs=c, features=model.bottleneck, disable=True))
    without = model.decode(sample_amed(model, x, sig, coeffs=c, features=None, disable=True))
    quantised = lambda im: to_uint8(im).float() / 255  # noqa: E731 - the demo's images are PNG-quantised
    torch.testing.assert_close(got, quantised(with_features))
    assert (got - quantised(without)).abs().max() > 1e-3  # the features reach the predictor and change the step


# --------------------------------------------------------------------------------------------------------- --quick
def test_quick_without_coefficients_fails_before_any_work(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    t = time.perf_counter()
    rc, out, err = run_cli(["demo", "--quick", "--out", str(tmp_path / "out"), "--no-progress"], [empty], empty)
    assert rc == 2, (out, err)
    assert "--quick needs shipped AdaSDE coefficients" in err and "NFE 5" in err and "ADASDE_COEFFICIENTS" in err
    assert "without --quick" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing loaded, nothing written
    assert time.perf_counter() - t < 30


def test_quick_needs_the_headline_nfe(demo: DemoRun, tmp_path: Path) -> None:
    coef = tmp_path / "coef"
    coef.mkdir()
    shutil.copy(demo.out / f"adasde-builtin-fmnist-nfe{NFE}.safetensors", coef)
    rc, _, err = run_cli(["demo", "--quick", "--nfe", "3", "--out", str(tmp_path / "out")], [coef], tmp_path / "none")
    assert rc == 2 and "NFE 3" in err


def test_quick_uses_coefficients_from_the_search_path(demo: DemoRun, tmp_path: Path) -> None:
    """``--quick`` with the distilled file on $ADASDE_COEFFICIENTS: no distillation, the same AdaSDE samples."""
    coef = tmp_path / "coef"
    coef.mkdir()
    shutil.copy(demo.out / f"adasde-builtin-fmnist-nfe{NFE}.safetensors", coef / "adasde-fmnist-5.safetensors")
    out = tmp_path / "quick"
    n = 16
    rc, stdout, err = run_cli(["demo", "--quick", "--out", str(out), "--nfe", str(NFE), "--chart-nfes", str(NFE),
                               "--samples", str(n), "--trajectories", "1", "--no-progress"],
                              [coef, demo.coef_dir], tmp_path / "none")
    assert rc == 0, err
    res = _results(DemoRun(out, coef, rc, stdout, err, 0))
    assert res["quick"] is True and res["coefficients"] is None and "distill" not in res["timings"]
    assert sorted(r["solver"] for r in res["rows"]) == sorted(DEMO_SOLVERS) and not res["skipped"]
    assert not list(out.glob("*.safetensors")) and "distilled coefficients" not in stdout
    assert "shipped file (--quick)" in (out / "report.html").read_text(encoding="utf-8")
    # the first 16 seeds give the same images as in the full run (per-seed noise, same coefficients): the quick
    # grid (2 rows of 8) is the top of the full grid
    for name in ("adasde", "amed", "euler"):
        q = _rgb(out / f"grid-{name}-nfe{NFE}.png")
        full = _rgb(demo.out / f"grid-{name}-nfe{NFE}.png")
        assert q.shape == (124, 484, 3)
        diff = np.abs(q - full[:124])
        assert diff.max() <= 3 and diff.mean() < 0.05, (name, diff.max(), diff.mean())


def test_console_script_rejects_bad_settings(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("adasde")
    if not exe.exists():
        pytest.skip(f"console script {exe} not installed (pip install -e .)")
    p = subprocess.run([str(exe), "demo", "--samples", "1", "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "--samples (1)" in p.stderr and ">= 2" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()
