"""The offline demo report rendered in headless Chromium: the page is not blank, every sample
grid image decodes, both inline SVG charts are laid out, and the chart lines are drawn in their palette colours.

Uses the reduced demo run (the ``reduced_demo`` fixture, tests/conftest.py).  Skipped only when Chromium is missing
outside CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from adasde.demo.report import PALETTE
from adasde.demo.run import DEMO_SOLVERS
from helpers.chromium import FLAGS, chromium
from helpers.demo import CHART_NFES, NFE, TRAINING_FREE, DemoRun
from PIL import Image

pytestmark = pytest.mark.chromium

WIDTH, HEIGHT = 1200, 3600  # tall enough for the same-noise rows and the sample grids below them

# runs after load (all <img> from file:// are decoded by then) and records what the browser made of the page
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute("src"), w: i.naturalWidth, h: i.naturalHeight,
    shown: i.getBoundingClientRect().width, complete: i.complete}));
  const svgs = [...document.querySelectorAll("svg")].map(s => {
    const r = s.getBoundingClientRect();
    return {parent: s.parentElement.id, x: r.left, y: r.top, w: r.width, h: r.height, ns: s.namespaceURI,
      lines: [...s.querySelectorAll("polyline")].map(p => ({name: p.dataset.name, n: p.points.numberOfItems,
        len: p.getTotalLength()}))};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({imgs, svgs, scrollWidth: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>"""


def _run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def page(reduced_demo: DemoRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoRun, Path]:
    """A copy of the demo report folder (the probe page is written next to report.html there)."""
    run = reduced_demo
    copy = tmp_path_factory.mktemp("report") / "site"
    shutil.copytree(run.out, copy)
    return run, copy


@pytest.fixture(scope="module")
def screenshot(page: tuple[DemoRun, Path], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    exe = chromium()
    _, site = page
    shot = tmp_path_factory.mktemp("shot") / "report.png"
    _run(exe, tmp_path_factory.mktemp("profile"), f"--screenshot={shot}", (site / "report.html").as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        assert im.size == (WIDTH, HEIGHT)
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def probe(page: tuple[DemoRun, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    exe = chromium()
    _, site = page
    html = (site / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>")
    (site / "probe.html").write_text(html, encoding="utf-8")
    p = _run(exe, tmp_path_factory.mktemp("profile"), "--dump-dom", (site / "probe.html").as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', p.stdout, re.S)
    assert m, f"probe did not run; DOM tail: {p.stdout[-1500:]}"
    import html as html_mod

    return json.loads(html_mod.unescape(m.group(1)))


def _colour_pixels(a: np.ndarray, hex_colour: str, tol: int = 40) -> int:
    rgb = [int(hex_colour[i: i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


def test_images_decode_and_charts_are_laid_out(probe: dict) -> None:
    imgs = {i["src"]: i for i in probe["imgs"]}
    grids = sorted(f"grid-{s}-nfe{NFE}.png" for s in DEMO_SOLVERS)
    strips = sorted(k for k in imgs if k.startswith("same-noise-"))
    assert sorted(imgs) == sorted(grids + strips)
    assert len(strips) == 2 * (len(DEMO_SOLVERS) + 1)  # reference + one row per solver, each with a zoomed crop
    for src in grids:
        i = imgs[src]
        assert i["complete"] and i["w"] == 484 and i["h"] == 484, (src, i)
        assert i["shown"] > 200, (src, i)
    for src in strips:
        assert imgs[src]["complete"] and imgs[src]["w"] > 0 and imgs[src]["shown"] > 50, (src, imgs[src])
    svgs = {s["parent"]: s for s in probe["svgs"]}
    assert sorted(svgs) == ["chart", "coefficients"]
    for s in svgs.values():
        assert s["ns"] == "http://www.w3.org/2000/svg"  # parsed as SVG (the inline charts carry no xmlns)
        assert s["w"] > 400 and s["h"] > 250
        assert all(line["len"] > 20 for line in s["lines"])  # the polylines have a rendered length
    fd = {line["name"]: line["n"] for line in svgs["chart"]["lines"]}
    assert fd == {name: len(CHART_NFES) for name in TRAINING_FREE}
    assert {line["name"]: line["n"] for line in svgs["coefficients"]["lines"]} == {
        "r": 3, "a": 3, "c": 3, "gamma x 100": 3}
    assert probe["scrollWidth"] <= 1200  # nothing wider than the window


def test_screenshot_not_blank(screenshot: np.ndarray) -> None:
    a = screenshot
    white = (a.min(axis=2) > 245).mean()
    assert 0.3 < white < 0.97, f"white fraction {white:.3f}"
    assert a.std() > 30
    # dark text in the top band (the title and the introduction)
    assert (a[:300].max(axis=2) < 80).sum() > 2000


def test_screenshot_shows_the_grids(screenshot: np.ndarray) -> None:
    # Fashion-MNIST grids: many near-black pixels (image backgrounds) in large blocks below the charts
    dark = screenshot.max(axis=2) < 30
    rows = np.flatnonzero(dark.sum(axis=1) > 300)
    assert rows.size > 400, f"only {rows.size} screenshot rows with a wide dark band"


def _crop(a: np.ndarray, svg: dict) -> np.ndarray:
    x, y, w, h = (int(round(svg[k])) for k in ("x", "y", "w", "h"))
    assert 0 <= x and 0 <= y and x + w <= a.shape[1] and y + h <= a.shape[0], f"chart outside the screenshot: {svg}"
    return a[y: y + h, x: x + w]


def test_screenshot_shows_the_charts(screenshot: np.ndarray, probe: dict) -> None:
    """The same window size lays the page out the same way, so the probe's SVG rectangles locate the charts in the
    screenshot; each series must show in its palette colour there."""
    svgs = {s["parent"]: s for s in probe["svgs"]}
    fd = _crop(screenshot, svgs["chart"])
    for i, name in enumerate(DEMO_SOLVERS):  # colours follow DEMO_SOLVERS
        n = _colour_pixels(fd, PALETTE[i])
        # a polyline for the solvers measured at two NFEs, one marker (about 38 px) for the learned ones
        assert n > (150 if name in TRAINING_FREE else 15), f"FD chart: {name} ({PALETTE[i]}) has {n} pixels"
    coef = _crop(screenshot, svgs["coefficients"])
    for i, name in enumerate(["r", "a", "c", "gamma x 100"]):
        n = _colour_pixels(coef, PALETTE[i])
        assert n > 150, f"coefficient chart: {name} ({PALETTE[i]}) has {n} pixels"
    # the charts themselves are mostly white with black axes
    for crop in (fd, coef):
        assert (crop.min(axis=2) > 245).mean() > 0.7 and (crop.max(axis=2) < 60).sum() > 500
