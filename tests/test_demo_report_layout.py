"""The demo report at phone, tablet and desktop width in headless Chromium: no horizontal overflow of the page, the
results table or the chart legend; the anchors (data floor, converged model) and the same-starting-noise rows are on
the page.  The report is rebuilt from the reduced demo run (``reduced_demo``, tests/conftest.py) with a same-noise
section made of real samples (``demo.run._generate``: per-seed initial noise and churn noise, the converged Heun
result as the reference row).  With ``$ADASDE_SCREENSHOT_DIR`` the three screenshots are kept there (docs/img)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from adasde.coefficients import load
from adasde.demo import report
from adasde.demo.run import DEMO_SOLVERS, DemoConfig, DemoResult, _generate, _write_report
from helpers.chromium import BASE_FLAGS, FLAGS, devtools
from helpers.demo import DemoRun
from PIL import Image

pytestmark = pytest.mark.chromium
WIDTHS = (420, 900, 1400)
SEEDS = [0, 1, 2, 3, 4, 5]

PROBE = """<script>
window.addEventListener("load", () => {
  const vw = document.documentElement.clientWidth;
  const right = (el) => el ? el.getBoundingClientRect().right : null;
  const wrap = document.querySelector(".table-wrap");
  const legend = [...document.querySelectorAll("#chart svg text")].map(t => t.getBoundingClientRect().right);
  const svg = document.querySelector("#chart svg").getBoundingClientRect();
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    vw, scrollWidth: document.documentElement.scrollWidth, wrapRight: right(wrap),
    tableScrolls: wrap ? wrap.scrollWidth > wrap.clientWidth : null,
    svgRight: svg.right, svgWidth: svg.width, textRight: Math.max(...legend),
    refs: [...document.querySelectorAll("#chart svg line.ref")].map(l => l.dataset.name),
    rows: [...document.querySelectorAll(".sn-row")].map(r => r.dataset.name),
    snRight: Math.max(...[...document.querySelectorAll(".sn-row img")].map(i => i.getBoundingClientRect().right)),
    snLoaded: [...document.querySelectorAll(".sn-row img")].every(i => i.complete && i.naturalWidth > 0),
    viewport: !!document.querySelector('meta[name="viewport"]'),
    h1: document.querySelector("h1").textContent});
  document.body.appendChild(out);
});
</script>"""


def _coeffs(run: DemoRun | None, folder: Path, nfe: int, quick: bool) -> dict:
    """The coefficient records the demo run used at the headline NFE."""
    from adasde.demo.run import _shipped

    out = {}
    for kind in ("adasde", "amed"):
        distilled = folder / f"{kind}-builtin-fmnist-nfe{nfe}.safetensors"
        if not quick and distilled.is_file():
            out[(kind, nfe)] = load(distilled)
        elif run is not None and list(run.coef_dir.glob(f"{kind}-*nfe{nfe}.safetensors")):
            out[(kind, nfe)] = load(next(run.coef_dir.glob(f"{kind}-*nfe{nfe}.safetensors")))
        elif _shipped(kind, nfe) is not None:
            out[(kind, nfe)] = _shipped(kind, nfe)
    return out


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a demo report folder with report.html rewritten to include the same-noise rows: the reduced demo
    run (``reduced_demo``), or the finished ``adasde demo`` folder named by ``$ADASDE_REPORT_SITE`` (used
    for the screenshots in docs/img)."""
    from adasde.models import load_model

    given = os.environ.get("ADASDE_REPORT_SITE")
    run = None if given else request.getfixturevalue("reduced_demo")
    source = Path(given) if given else run.out
    site = tmp_path_factory.mktemp("layout") / "site"
    shutil.copytree(source, site)
    results = json.loads((site / "results.json").read_text())
    nfe = results["nfe"]
    cfg = DemoConfig(out=site, nfe=nfe, samples=results["samples"], chart_samples=results["chart_samples"],
                     chart_nfes=tuple(results["chart_nfes"]), quick=results["quick"], seed=results["seed"])
    res = DemoResult(rows=results["rows"], timings=results["timings"], skipped=results["skipped"])
    coeffs = _coeffs(run, site, nfe, results["quick"])
    all_coeffs = dict(coeffs)
    if given:  # the chart's other NFEs used the shipped files
        from adasde.demo.run import _shipped

        for kind in ("adasde", "amed"):
            for k in results["chart_nfes"]:
                if (kind, k) not in all_coeffs and _shipped(kind, k) is not None:
                    all_coeffs[(kind, k)] = _shipped(kind, k)
    model = load_model("builtin:fmnist")
    rows = {name: _generate(model, name, nfe, SEEDS, coeffs.get((name, nfe)), len(SEEDS), None)
            for name in DEMO_SOLVERS}
    reference = _generate(model, "heun", 35, SEEDS, None, len(SEEDS), None)
    src = "coefficients distilled in this run" if not results["quick"] else "shipped coefficients"
    notes = {"adasde": src, "amed": "shipped coefficients"}
    same = report.same_noise_rows(rows, reference, site, seeds=SEEDS, reference_label="converged (Heun, 35 NFE)",
                                  notes=notes, crop=(6, 6, 14, 14), zoom=3)
    grids = {name: site / f"grid-{name}-nfe{nfe}.png" for name in DEMO_SOLVERS}
    _write_report(cfg, res, all_coeffs, grids, same_noise=same)
    return site


@pytest.fixture(scope="module")
def cdp(tmp_path_factory: pytest.TempPathFactory):
    """One headless Chromium driven over the DevTools protocol: the viewport is set by device emulation, because a
    headless window cannot be made narrower than 500 px."""
    with devtools(tmp_path_factory.mktemp("cdp"), *FLAGS[len(BASE_FLAGS):]) as client:
        client.call("Page.enable")
        client.call("Runtime.enable")
        yield client


def _render(cdp, site: Path, width: int, shot: Path | None = None) -> dict:
    import base64
    import time

    page = (site / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>")
    (site / "probe.html").write_text(page, encoding="utf-8")
    cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1,
             mobile=width < 600)
    cdp.call("Page.navigate", url=(site / "probe.html").as_uri())
    cdp.wait_for("!!document.getElementById('probe')", 60)
    time.sleep(0.3)
    pr = json.loads(cdp.eval("document.getElementById('probe').textContent"))
    if shot is not None:
        cdp.eval("document.getElementById('probe').remove(); true")
        height = int(cdp.eval("document.documentElement.scrollHeight"))
        cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=min(height, 6000), deviceScaleFactor=1,
                 mobile=width < 600)
        time.sleep(0.3)
        data = cdp.call("Page.captureScreenshot", format="png")["data"]
        shot.write_bytes(base64.b64decode(data))
    return pr


@pytest.mark.parametrize("width", WIDTHS)
def test_report_fits_the_width(cdp, site: Path, width: int, tmp_path: Path) -> None:
    shots = os.environ.get("ADASDE_SCREENSHOT_DIR")
    shot = Path(shots) / f"demo-report-{width}px.png" if shots else tmp_path / "shot.png"
    pr = _render(cdp, site, width, shot)
    vw = pr["vw"]
    assert pr["viewport"]
    assert vw <= width and vw > 0.9 * width, pr  # the viewport really was this narrow
    assert pr["scrollWidth"] <= vw, pr  # no horizontal scrolling of the page
    assert pr["wrapRight"] <= vw + 0.5 and pr["svgRight"] <= vw + 0.5, pr
    assert pr["textRight"] <= vw + 0.5, pr  # legend and labels inside the window
    assert pr["snRight"] <= vw + 0.5 and pr["snLoaded"], pr
    if width >= 900:
        assert pr["svgWidth"] >= 600 and not pr["tableScrolls"], pr  # desktop: full-size chart, whole table
    assert "AMED" in pr["h1"] and "against training-free" not in pr["h1"]
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB")).astype(np.int16)
    assert im.size[0] == width and a.std() > 30


def test_anchors_and_same_noise_rows_are_on_the_page(cdp, site: Path) -> None:
    pr = _render(cdp, site, 900)
    assert len(pr["refs"]) == 2 and any("data floor 0.387" in r for r in pr["refs"]), pr["refs"]
    assert any(r.startswith("converged model") for r in pr["refs"])
    assert pr["rows"] == ["converged (Heun, 35 NFE)", *DEMO_SOLVERS]
    text = (site / "report.html").read_text(encoding="utf-8")
    assert "Same starting noise" in text and "mean |difference| to converged (Heun, 35 NFE)" in text
    assert f"{json.loads((site / 'results.json').read_text())['chart_samples']} images per point" in text
    # one strip per row (+ its zoomed crop), each as wide as the seeds
    for k in range(len(DEMO_SOLVERS) + 1):
        with Image.open(site / f"same-noise-{k}.png") as im:
            assert im.size == (3 * (len(SEEDS) * 30 + 2), 3 * 32)
        with Image.open(site / f"same-noise-{k}-zoom.png") as im:
            assert im.size == (len(SEEDS) * (42 + 2) + 2, 42 + 4)
    # the same starting noise: every deterministic solver's row is closer to the converged row than to another seed's
    ref = np.asarray(Image.open(site / "same-noise-0.png").convert("L")).astype(float)
    k = 1 + DEMO_SOLVERS.index("ipndm")
    ipndm = np.asarray(Image.open(site / f"same-noise-{k}.png").convert("L")).astype(float)
    cell = 3 * 30
    same = np.abs(ref - ipndm).mean()
    shifted = np.abs(ref[:, : -cell] - ipndm[:, cell:]).mean()
    assert same < shifted, (same, shifted)
