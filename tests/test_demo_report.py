"""Unit tests of demo/report.py: PNG grids, inline SVG charts, the HTML table and the offline page."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.demo import report
from PIL import Image

SVG_NS = "{http://www.w3.org/2000/svg}"


# ------------------------------------------------------------------------------------------------------------ grids
def _grid_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im).copy()


def test_grid_size_and_cells_grey(tmp_path: Path) -> None:
    # 10 grey images of 4 x 5 pixels, grey level 25 i; 4 columns -> 3 rows, the last two cells empty (white)
    n, h, w, pad = 10, 4, 5, 2
    imgs = torch.stack([torch.full((1, h, w), 25 * i / 255) for i in range(n)])
    out = report.save_grid(imgs, tmp_path / "g.png", nrow=4, scale=1)
    assert out == tmp_path / "g.png"
    a = _grid_array(out)
    assert a.shape == (3 * (h + pad) + pad, 4 * (w + pad) + pad, 3)
    for i in range(12):
        r, q = divmod(i, 4)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        cell = a[y: y + h, x: x + w]
        expect = 25 * i if i < n else 255
        assert (cell == expect).all(), (i, np.unique(cell), expect)
    # gutters: the first rows/columns and those between the cells are white
    assert (a[:pad] == 255).all() and (a[:, :pad] == 255).all()
    assert (a[pad + h: 2 * pad + h] == 255).all() and (a[:, pad + w: 2 * pad + w] == 255).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no temporary file left


def test_grid_scale_colour_and_clamping(tmp_path: Path) -> None:
    imgs = torch.zeros(3, 3, 2, 2)
    imgs[0, 0] = 1.0  # red
    imgs[1, 1] = 2.0  # green, clamped to 1
    imgs[2] = torch.tensor([-1.0, 0.5, float("nan")]).view(3, 1, 1)  # clamped to 0 / 128 / NaN -> 0
    out = report.save_grid(imgs, tmp_path / "c.png", nrow=8, scale=3)
    a = _grid_array(out)
    # 3 columns (fewer images than nrow), 1 row, every pixel 3 x 3
    assert a.shape == (3 * (2 + 2 + 2), 3 * (3 * (2 + 2) + 2), 3)
    small = a[::3, ::3]
    assert (a == np.repeat(np.repeat(small, 3, axis=0), 3, axis=1)).all()  # nearest-neighbour upscaling
    cells = [small[2:4, 2 + 4 * q: 4 + 4 * q] for q in range(3)]
    assert (cells[0] == [255, 0, 0]).all()
    assert (cells[1] == [0, 255, 0]).all()
    assert (cells[2] == [0, 128, 0]).all()


def test_grid_replaces_existing_file_and_rejects_bad_input(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    report.save_grid(torch.zeros(4, 1, 3, 3), p, nrow=2, scale=1)
    report.save_grid(torch.ones(1, 1, 3, 3), p, nrow=2, scale=1)
    a = _grid_array(p)
    assert a.shape == (7, 7, 3) and (a[2:5, 2:5] == 255).all()
    for bad in (torch.zeros(0, 1, 3, 3), torch.zeros(2, 2, 3, 3), torch.zeros(3, 3, 3)):
        with pytest.raises(ValueError, match="save_grid"):
            report.save_grid(bad, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="nrow"):
        report.save_grid(torch.zeros(2, 1, 3, 3), tmp_path / "bad.png", nrow=0)
    with pytest.raises(OSError):
        report.save_grid(torch.zeros(2, 1, 3, 3), tmp_path / "missing" / "g.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


# ------------------------------------------------------------------------------------------------------------ charts
def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == SVG_NS + "svg"
    return root


def _polylines(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for el in root.iter(SVG_NS + "polyline"):
        pts = [tuple(float(v) for v in p.split(",")) for p in el.get("points", "").split()]
        out[el.get("data-name")] = pts
    return out


def test_chart_one_polyline_per_series_with_all_points() -> None:
    series = {"adasde": [(3, 30.0), (5, 10.0), (7, 5.0), (9, 4.0)],
              "euler": [(3, 90.0), (5, 60.0), (7, 40.0), (9, 20.0)],
              "ipndm": [(3, 50.0), (9, 8.0)]}
    svg = report.svg_line_chart(series, "FD <test> & more", "NFE", "FD", highlight="adasde")
    root = _parse(svg)  # well-formed XML, title escaped
    assert any(t.text == "FD <test> & more" for t in root.iter(SVG_NS + "text"))
    lines = _polylines(root)
    assert list(lines) == list(series)
    assert [len(v) for v in lines.values()] == [4, 4, 2]
    els = {e.get("data-name"): e for e in root.iter(SVG_NS + "polyline")}
    for i, name in enumerate(series):
        assert els[name].get("stroke") == report.PALETTE[i]
    assert float(els["adasde"].get("stroke-width")) > float(els["euler"].get("stroke-width"))
    assert len(list(root.iter(SVG_NS + "circle"))) == 10  # one marker per point
    # x grows to the right, larger y is higher up (smaller pixel y), equal x share a pixel column
    a, e = lines["adasde"], lines["euler"]
    assert [p[0] for p in a] == sorted(p[0] for p in a) and a[0][0] < a[-1][0]
    assert [p[0] for p in a] == [p[0] for p in e]
    assert all(pe[1] < pa[1] for pa, pe in zip(a, e))
    assert a[0][1] < a[1][1] < a[2][1] < a[3][1]
    # every point inside the canvas
    w, h = float(root.get("width")), float(root.get("height"))
    assert all(0 <= x <= w and 0 <= y <= h for v in lines.values() for x, y in v)
    # legend: every series named
    texts = [t.text for t in root.iter(SVG_NS + "text")]
    assert all(name in texts for name in series)


def test_chart_skips_nan_inf_and_single_points() -> None:
    series = {"a": [(1, 1.0), (2, float("nan")), (3, math.inf), (4, 2.0), (5, None)],
              "b": [(1, 3.0), (2, -math.inf)],  # one finite point: marker but no line
              "c": [(1, float("nan"))]}
    root = _parse(report.svg_line_chart(series, "t", "x", "y"))
    lines = _polylines(root)
    assert list(lines) == ["a"] and len(lines["a"]) == 2
    assert len(list(root.iter(SVG_NS + "circle"))) == 3
    assert "nan" not in ET.tostring(root, encoding="unicode").lower().replace("data-name", "")
    # nothing finite at all: a valid, empty chart that says so
    root = _parse(report.svg_line_chart({"a": [(1, float("nan"))], "b": []}, "Empty", "x", "y", log_y=True))
    assert not _polylines(root)
    assert "no finite values" in "".join(t.text or "" for t in root.iter(SVG_NS + "text"))


def test_chart_log_scale() -> None:
    series = {"s": [(1, 1.0), (2, 10.0), (3, 100.0), (4, 1000.0)], "t": [(1, 0.0), (2, -5.0), (3, 50.0), (4, 5.0)]}
    root = _parse(report.svg_line_chart(series, "t", "x", "y", log_y=True))
    lines = _polylines(root)
    ys = [p[1] for p in lines["s"]]
    steps = np.diff(ys)
    assert (steps < 0).all() and np.allclose(steps, steps[0], atol=0.15)  # decades equally spaced
    assert len(lines["t"]) == 2  # 0 and -5 cannot be placed on a log axis
    # 50 lies between 10 and 100, at log10(5) of the decade
    y50 = lines["t"][0][1]
    assert y50 == pytest.approx(ys[1] + math.log10(5) * (ys[2] - ys[1]), abs=0.15)
    # y ticks: the decades, each at the height of the data point with that value
    ticks = {float(t.text): float(t.get("y")) - 4 for t in root.iter(SVG_NS + "text") if t.get("text-anchor") == "end"}
    assert sorted(ticks) == [1.0, 10.0, 100.0, 1000.0]
    assert [ticks[v] for v in (1.0, 10.0, 100.0, 1000.0)] == pytest.approx(ys, abs=0.15)
    # less than a decade: round linear values on the log axis
    root = _parse(report.svg_line_chart({"s": [(3, 370.5), (5, 923.0)]}, "t", "x", "y", log_y=True))
    ticks = [float(t.text) for t in root.iter(SVG_NS + "text") if t.get("text-anchor") == "end"]
    assert len(ticks) >= 3 and all(v % 100 == 0 for v in ticks) and 300 < min(ticks) and max(ticks) < 1000
    # linear axis for comparison: not equally spaced
    lin = _polylines(_parse(report.svg_line_chart({"s": series["s"]}, "t", "x", "y")))
    assert not np.allclose(np.diff([p[1] for p in lin["s"]]), steps[0], atol=1)


def test_chart_linear_ticks_are_round_and_cover_the_data() -> None:
    root = _parse(report.svg_line_chart({"r": [(0, 0.7359), (1, 0.3512), (2, 0.0871)],
                                         "g": [(0, -0.0657), (1, 1.1604), (2, 0.98)]}, "t", "x", "y"))
    ticks = {float(t.text): float(t.get("y")) - 4 for t in root.iter(SVG_NS + "text") if t.get("text-anchor") == "end"}
    values = sorted(ticks)
    assert values == [0.0, 0.25, 0.5, 0.75, 1.0]
    ys = [y for _, y in _polylines(root)["r"]]
    # 0.7359 lies between the 0.75 and 0.5 tick lines, at the right fraction
    assert ys[0] == pytest.approx(ticks[0.5] + (0.7359 - 0.5) / 0.25 * (ticks[0.75] - ticks[0.5]), abs=0.15)


def test_coefficient_chart_steps_on_x() -> None:
    root = _parse(report.coefficient_chart({"r": [0.3, 0.5, 0.6], "gamma x 100": [0.0, 0.5, 1.0]}, "coeffs"))
    lines = _polylines(root)
    assert list(lines) == ["r", "gamma x 100"] and all(len(v) == 3 for v in lines.values())
    ticks = [t.text for t in root.iter(SVG_NS + "text") if t.get("text-anchor") == "middle"]
    assert {"0", "1", "2"} <= set(ticks)


def test_inline_svg_drops_the_namespace_url_only() -> None:
    svg = report.svg_line_chart({"a": [(1, 1.0), (2, 2.0)]}, "t", "x", "y")
    inline = report.inline_svg(svg)
    assert "http" not in inline and inline.startswith("<svg ")
    assert inline.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1) == svg


# ------------------------------------------------------------------------------------------------------------ table
def _cells(table: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table) if "<td" in row]


def test_html_table_marks_the_best_value() -> None:
    rows = [["euler", 5, 60.0, "x"], ["adasde", 5, 12.3456, "y"], ["broken", 5, float("nan"), "z"],
            ["ipndm", 5, 20.0, "w"]]
    t = report.html_table(["solver", "NFE", "FD", "note"], rows, best_col=2)
    cells = _cells(t)
    assert [c[0] for c in cells] == ["euler", "adasde", "broken", "ipndm"]
    assert cells[1][2] == "<b>12.346</b>"
    assert t.count("<b>") == 1 and t.count('class="best"') == 1
    assert cells[2][2] == "nan"
    assert "<th>FD</th>" in t
    # ties are all marked; no best column -> nothing bold; a column without numbers -> nothing bold
    t2 = report.html_table(["a", "b"], [["p", 1.0], ["q", 1.0], ["r", 2.0]], best_col=1)
    assert t2.count("<b>") == 2
    assert "<b>" not in report.html_table(["a", "b"], rows, best_col=None)
    assert "<b>" not in report.html_table(["a"], [["x"], [float("inf")]], best_col=0)
    # booleans are not numbers (True would otherwise beat 2.0)
    t3 = report.html_table(["a"], [[True], [2.0]], best_col=0)
    assert _cells(t3) == [["True"], ["<b>2.000</b>"]]


def test_html_table_escapes_every_cell() -> None:
    t = report.html_table(["<h>"], [["<b>evil</b>"], ["a & b"]], best_col=0)
    assert "<b>evil" not in t and "&lt;b&gt;evil&lt;/b&gt;" in t and "a &amp; b" in t and "&lt;h&gt;" in t


# ------------------------------------------------------------------------------------------------------------ page
def test_write_html_offline_and_complete(tmp_path: Path) -> None:
    chart = report.inline_svg(report.svg_line_chart({"a": [(1, 1.0), (2, 3.0)]}, "c", "x", "y", log_y=True))
    body = f"<h1>demo</h1>{report.html_table(['x'], [[1.0]], best_col=0)}<div>{chart}</div>" \
           '<img src="grid.png" alt="g">'
    p = report.write_html(tmp_path / "report.html", "adasde <demo>", body)
    text = p.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "<title>adasde &lt;demo&gt;</title>" in text and body in text
    assert '<meta charset="utf-8">' in text
    # offline: no URL with a scheme or protocol-relative reference anywhere, no external stylesheet or script
    assert not re.search(r"https?://|//[a-z0-9]|<link\b|<script\b|@import|url\(", text, re.I)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.html"]


def test_write_html_is_atomic(tmp_path: Path) -> None:
    p = report.write_html(tmp_path / "report.html", "first", "<p>first version</p>")
    before = p.read_bytes()
    # a lone surrogate cannot be encoded: the write fails half-way, the previous page stays whole
    with pytest.raises(UnicodeEncodeError):
        report.write_html(p, "second", "<p>second</p>" + "x" * 100_000 + "\ud800")
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.html"]  # temporary file removed
    report.write_html(p, "third", "<p>third</p>")
    assert "<p>third</p>" in p.read_text(encoding="utf-8") and "first version" not in p.read_text(encoding="utf-8")
