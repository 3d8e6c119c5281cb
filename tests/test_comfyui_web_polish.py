"""The frontend extension (web/adasde.js) in the real ComfyUI frontend, driven by headless Chromium: the FID value has
its own row below the widgets, the distill chart has a legend and axis values, a finished distillation refreshes the
coefficient lists without pressing R, and the built-in model workflow renders its images (screenshots go to
``$ADASDE_SCREENSHOT_DIR``, e.g. docs/img)."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from helpers.chromium import CDP
from helpers.comfyui import REPO, Server, distill_graph

pytestmark = [pytest.mark.comfyui, pytest.mark.chromium]


def _open(comfy: Server, browser: CDP) -> None:
    browser.call("Page.enable")
    browser.call("Runtime.enable")
    comfy.post("/settings", {"Comfy.TutorialCompleted": True})
    browser.call("Page.navigate", url=comfy.url + "/")
    browser.wait_for("!!(window.app && window.app.graph && window.LiteGraph && window.__adasdeRegistered)", 120)


def _shot(browser: CDP, name: str, tmp_path: Path) -> Path:
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'})); true")
    browser.eval("window.app.graph.setDirtyCanvas(true, true); window.app.canvas.draw(true, true); true")
    time.sleep(1.0)
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    out = Path(os.environ.get("ADASDE_SCREENSHOT_DIR", tmp_path)) / name
    out.write_bytes(png)
    return out


def test_fid_value_has_its_own_row_below_reset(comfy: Server, browser: CDP) -> None:
    _open(comfy, browser)
    rows = json.loads(browser.eval("""(async () => {
        const app = window.app;
        app.graph.clear();
        const n = LiteGraph.createNode("AdaSDEFIDEvaluate");
        n.pos = [100, 100];
        app.graph.add(n);
        n.__adasdeFid = {metric: "FID", value: 12.3456, num_images: 64};
        app.canvas.ds.offset = [0, 0];
        app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        app.canvas.draw(true, true);
        await new Promise(r => setTimeout(r, 300));
        app.canvas.draw(true, true);
        return JSON.stringify({names: n.widgets.map(w => w.name),
                               y: n.widgets.map(w => w.last_y ?? w.y ?? null), height: n.size[1]});
    })()"""))
    names = rows["names"]
    assert "adasde_fid_value" in names and "reset" in names, names
    assert names.index("adasde_fid_value") > names.index("reset")
    y = dict(zip(names, rows["y"]))
    if y["adasde_fid_value"] is not None and y["reset"] is not None:
        assert y["adasde_fid_value"] >= y["reset"] + 20, y  # a full row below the toggle
        assert y["adasde_fid_value"] + 30 <= rows["height"] + 1, rows


def test_distill_chart_draws_legend_and_axis_values(comfy: Server, browser: CDP) -> None:
    _open(comfy, browser)
    texts = json.loads(browser.eval("""(async () => {
        const mod = await import("/extensions/adasde/adasde.js");
        const calls = [];
        const ctx = new Proxy({}, {get: (t, k) => {
            if (k === "fillText") return (s) => calls.push(String(s));
            if (k === "measureText") return (s) => ({width: 6 * String(s).length});
            if (k in t) return t[k];
            return () => {};
        }, set: (t, k, v) => { t[k] = v; return true; }});
        mod.drawChart(ctx, {losses: [0.5, 0.2, 0.05], done: 3, total: 10,
                            coeffs: {r: [[0.4], [0.6]], a: [[1.0], [1.02]], gamma: [[0], [0.001]]}}, 520, 0);
        return JSON.stringify(calls);
    })()"""))
    for legend in ("loss", "r", "a", "c", "gamma", "w"):
        assert legend in texts, (legend, texts)
    assert "0.5" in texts and "0.05" in texts, texts  # loss axis: max and min
    assert "1.02" in texts and "0" in texts, texts  # coefficient axis
    assert "3" in texts and "1" in texts  # iteration axis ends
    assert any(t.startswith("loss 0.05") and "3/10" in t for t in texts), texts


def test_finished_distillation_refreshes_lists_without_reload(comfy: Server, browser: CDP, tmp_path: Path) -> None:
    _open(comfy, browser)
    node_id = browser.eval("""(async () => {
        const app = window.app;
        app.graph.clear();
        const d = LiteGraph.createNode("AdaSDEDistill");
        d.pos = [120, 80];
        app.graph.add(d);
        const s = LiteGraph.createNode("AdaSDESampler");
        s.pos = [660, 80];
        app.graph.add(s);
        window.__adasdeSamplerNode = s.id;
        app.canvas.ds.offset = [0, 0];
        app.canvas.ds.scale = 1;
        return d.id;
    })()""")
    before = browser.eval("window.__adasde.refreshes || 0")
    name = "toy-web-refresh"
    g = distill_graph(name, trajectories=4)
    prompt = {str(node_id) if k == "d" else k: v for k, v in g.items()}
    for v in prompt.values():
        for key, inp in v["inputs"].items():
            if isinstance(inp, list) and inp[0] == "d":
                v["inputs"][key] = [str(node_id), inp[1]]
    comfy.run(prompt, timeout=180)
    browser.wait_for(f"(window.__adasde.refreshes || 0) > {before}", 60)
    browser.wait_for(f"""(() => {{
        const s = window.app.graph.getNodeById(window.__adasdeSamplerNode);
        const w = s.widgets.find(w => w.name === "coefficients");
        return w.options.values.includes("{name}.safetensors");
    }})()""", 60)
    shot = _shot(browser, "comfyui-distill-chart.png", tmp_path)
    assert shot.stat().st_size > 10_000


def test_builtin_model_workflow_in_the_frontend(comfy: Server, browser: CDP, tmp_path: Path) -> None:
    _open(comfy, browser)
    wf = (REPO / "workflows" / "adasde_builtin_fmnist.json").read_text()
    browser.eval(f"""(async () => {{
        await window.app.loadGraphData({wf});
        window.app.canvas.ds.offset = [30, 20];
        window.app.canvas.ds.scale = 0.85;
        return true;
    }})()""")
    types = json.loads(browser.eval("JSON.stringify(window.app.graph._nodes.map(n => n.type))"))
    assert "AdaSDEBuiltinModel" in types and types.count("SaveImage") == 2
    missing = json.loads(browser.eval("JSON.stringify(window.app.graph._nodes.filter(n => n.has_errors)"
                                      ".map(n => n.type))"))
    assert not missing, missing
    browser.eval("(async () => { await window.app.queuePrompt(0, 1); return true; })()")
    browser.wait_for("""(() => {
        const outs = window.app.nodeOutputs || {};
        const saves = window.app.graph._nodes.filter(n => n.type === "SaveImage");
        return saves.every(n => (outs[String(n.id)]?.images || []).length > 0);
    })()""", 180)
    time.sleep(2.0)  # let the image previews load
    shot = _shot(browser, "comfyui-builtin-fmnist.png", tmp_path)
    assert shot.stat().st_size > 10_000
