"""demo/report.py additions: error bars, labelled reference lines, hollow markers, the responsive SVG, the
same-starting-noise rows and the anchors read from the committed benchmark."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.demo import report
from PIL import Image

SVG = "{http://www.w3.org/2000/svg}"


def _root(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _y_of_tick(root: ET.Element, value: float) -> float:
    for t in root.iter(SVG + "text"):
        if t.get("text-anchor") == "end" and t.text and float(t.text) == value:
            return float(t.get("y")) - 4
    raise AssertionError(f"no tick {value}")


def test_viewbox_for_scaling() -> None:
    root = _root(report.svg_line_chart({"a": [(1, 1.0), (2, 2.0)]}, "t", "x", "y", width=500, height=300))
    assert root.get("viewBox") == "0 0 500 300" and root.get("width") == "500"
    assert "max-width: 100%" in report.PAGE and 'name="viewport"' in report.PAGE
    assert ".table-wrap {{ overflow-x: auto" in report.PAGE


def test_error_bars_span_y_minus_to_plus_err() -> None:
    root = _root(report.svg_line_chart({"a": [(1, 2.0, 1.0), (2, 4.0), (3, 6.0, None)]}, "t", "x", "y"))
    bars = [e for e in root.iter(SVG + "path") if e.get("class") == "errorbar"]
    assert len(bars) == 1  # only the point that has an error
    nums = [float(v) for v in re.findall(r"-?\d+\.?\d*", bars[0].get("d"))]
    top, bottom = nums[1], nums[2]  # "Mx,top Vbottom ..."
    # y axis: 1 (=2-1) and 3 (=2+1) in pixel terms, linear scale through the ticks 2 and 4
    y2, y4 = _y_of_tick(root, 2.0), _y_of_tick(root, 4.0)
    per_unit = (y2 - y4) / 2
    assert top == pytest.approx(y2 - per_unit, abs=0.2) and bottom == pytest.approx(y2 + per_unit, abs=0.2)
    # the y range includes the bar
    assert all(0 < float(v) < 380 for v in nums[1:3])


def test_reference_lines_are_labelled_and_in_range() -> None:
    refs = [("data floor 0.387", 0.387), ("converged 23.8", 23.84)]
    root = _root(report.svg_line_chart({"a": [(3, 200.0), (5, 60.0)]}, "t", "x", "y", log_y=True, refs=refs))
    lines = {e.get("data-name"): e for e in root.iter(SVG + "line") if e.get("class") == "ref"}
    assert set(lines) == {"data floor 0.387", "converged 23.8"}
    labels = [t.text for t in root.iter(SVG + "text") if t.get("class") == "ref-label"]
    assert labels == ["data floor 0.387", "converged 23.8"]
    y_floor = float(lines["data floor 0.387"].get("y1"))
    y_conv = float(lines["converged 23.8"].get("y1"))
    assert y_floor > y_conv  # lower value, lower on the page
    height = float(root.get("height"))
    assert 0 < y_conv < y_floor < height


def test_hollow_markers_and_subtitle() -> None:
    root = _root(report.svg_line_chart({"a": [(3, 2.0), (5, 1.0)]}, "t", "x", "y", subtitle="250 images per point",
                                       hollow={"a": {5}}))
    circles = list(root.iter(SVG + "circle"))
    assert [c.get("fill") for c in circles] == [report.PALETTE[0], "white"]
    assert any(t.text == "250 images per point" for t in root.iter(SVG + "text"))


def test_legend_below_plot_fits_the_width() -> None:
    names = {f"solver-{i}": [(1, float(i + 1)), (2, float(i + 2))] for i in range(6)}
    root = _root(report.svg_line_chart(names, "t", "x", "y", width=420, height=380))
    legend = [t for t in root.iter(SVG + "text") if t.text in names]
    assert len(legend) == 6
    for t in legend:
        assert float(t.get("x")) + 7 * len(t.text) <= 420 and float(t.get("y")) <= 380


def test_same_noise_rows_writes_strips_and_differences(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(4, 1, 28, 28, generator=g)
    rows = {"adasde": ref.clone(), "euler": (ref + 0.2).clamp(0, 1)}
    html = report.same_noise_rows(rows, ref, tmp_path, seeds=[10, 11, 12, 13], reference_label="converged",
                                  notes={"adasde": "shipped"}, crop=(4, 4, 10, 10), zoom=2)
    assert html.count('class="sn-row') == 3 and 'class="sn-row reference" data-name="converged"' in html
    assert "Seeds 10, 11, 12, 13" in html and "shipped; mean |difference| to converged: 0.0 / 255" in html
    m = re.search(r"euler.*?mean \|difference\| to converged: ([0-9.]+)", html, re.S)
    assert m and 40 < float(m.group(1)) < 52  # +0.2 clamped: about 0.18 * 255
    strip = np.asarray(Image.open(tmp_path / "same-noise-1.png"))
    assert strip.shape[:2] == (3 * 32, 3 * (4 * 30 + 2))
    zoom = np.asarray(Image.open(tmp_path / "same-noise-1-zoom.png").convert("L")).astype(int)
    assert zoom.shape == (24, 4 * 22 + 2)
    # the zoomed cell is the crop of the first image, each pixel doubled
    want = (ref[0, 0, 4:14, 4:14] * 255 + 0.5).to(torch.uint8).numpy().astype(int)
    assert np.array_equal(zoom[2:22:2, 2:22:2], want)


def test_same_noise_rows_rejects_bad_input(tmp_path: Path) -> None:
    a = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="same"):
        report.same_noise_rows({"a": a, "b": torch.zeros(3, 1, 8, 8)}, None, tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        report.same_noise_rows({"a": a}, None, tmp_path, seeds=[1])
    with pytest.raises(ValueError, match="outside"):
        report.same_noise_rows({"a": a}, None, tmp_path, crop=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="no rows"):
        report.same_noise_rows({}, None, tmp_path)


def test_anchors_from_the_committed_benchmark(tmp_path: Path) -> None:
    anchors = dict((k.split(" ")[0] + " " + k.split(" ")[1], v) for k, v in report.read_anchors())
    text = (Path(report.__file__).resolve().parents[1] / "bench" / "results" / "builtin.md").read_text()
    floor = float(re.search(r"Floor \(train images vs test images[^)]*\): \*\*([0-9.]+)", text).group(1))
    assert anchors["data floor"] == floor
    assert "converged model" in anchors and anchors["converged model"] > floor
    (tmp_path / "b.md").write_text("nothing here")
    assert report.read_anchors(tmp_path / "b.md") == []
    assert report.read_anchors(tmp_path / "missing.md") == []
