"""End-to-end tests against the real ComfyUI 0.30.0 server (docs/HOSTS.md section B10), one subprocess per session.

ComfyUI comes from ``tools/install_comfyui.sh`` (``$ADASDE_COMFYUI_DIR``, default ``.cache/comfyui``).  Our repository
root is loaded as a custom node through the ``custom_nodes:`` key of an extra_model_paths yaml (a symlink named
``adasde``), next to the test pack ``tests/comfy_test_pack`` (tiny random SD1.5-shaped model).  Everything talks to
the server over HTTP (POST /prompt, GET /history, GET /object_info, POST /interrupt) plus one websocket for toasts;
``tests/helpers/comfyui.py`` holds the server driver and the graph builders, tests/conftest.py the session fixtures
``comfy`` (the server) and ``browser`` (headless Chromium on its frontend).

Without ComfyUI the tests skip, except in CI (``CI=true``), where a missing ComfyUI fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.chromium import CDP
from helpers.comfyui import (
    REPO,
    SD15_SIGMA_MAX,
    SD15_SIGMA_MIN,
    TRAINED_FILE,
    Server,
    close,
    coefficient_dirs,
    custom_graph,
    direct_node,
    distill_graph,
    empty_latent,
    ksampler_graph,
    options,
    sd15_info,
    stats_node,
    stats_of,
    toy,
    write_trained_file,
)
from helpers.plans import plan_record, same_plan, save_plans

pytestmark = [pytest.mark.comfyui]


# ------------------------------------------------------------------------------------------------------ tests
def test_registration_in_dropdowns_and_nodes(comfy: Server) -> None:
    ks = comfy.object_info("KSampler")["input"]["required"]
    assert {"adasde", "amed"} <= set(options(ks["sampler_name"]))
    assert options(ks["scheduler"]).count("adasde") == 1
    sel = options(comfy.object_info("KSamplerSelect")["input"]["required"]["sampler_name"])
    assert sel.count("adasde") == 1 and sel.count("amed") == 1  # idempotent: import + on_load register once
    assert "adasde" in options(comfy.object_info("BasicScheduler")["input"]["required"]["scheduler"])
    for node in ("AdaSDESampler", "AdaSDESigmas", "AMEDSampler", "AdaSDEDistill", "AdaSDEFIDEvaluate",
                 "AdaSDESaveFIDReferenceStats"):
        assert comfy.object_info(node)["python_module"].startswith("custom_nodes.")


def test_ksampler_dropdown_auto_coefficients_match_custom_node_and_batch(comfy: Server) -> None:
    write_trained_file(comfy.coeff_dir)
    combo = options(comfy.object_info("AdaSDESampler")["input"]["required"]["coefficients"])
    assert TRAINED_FILE in combo, combo  # listed without a restart (user folder from extra_model_paths.yaml)

    # KSampler dropdown: sampler 'adasde' + scheduler 'adasde' -> the trained grid, auto-selected coefficients.
    b2 = stats_of(comfy.run(ksampler_graph(batch=2, seed=7)))
    b1 = stats_of(comfy.run(ksampler_graph(batch=1, seed=7)))
    assert len(b2) == 2 and all(abs(s["std"]) > 0 for s in b2)
    assert close(b1[0]["first"], b2[0]["first"]), (b1[0]["first"][:4], b2[0]["first"][:4])  # same seed, same image
    # the second image of the batch, alone (LatentFromBatch sets batch_index=1 -> same initial noise)
    alone = stats_of(comfy.run(ksampler_graph(batch=2, seed=7, index=1)))
    assert close(alone[0]["first"], b2[1]["first"]), (alone[0]["first"][:4], b2[1]["first"][:4])

    # SamplerCustom + AdaSDE Sampler(file) + AdaSDE Sigmas(file) gives exactly the dropdown's result ...
    sig_node = {"class_type": "AdaSDESigmas", "inputs": {"model": ["m", 0], "coefficients": TRAINED_FILE,
                                                         "steps": 3, "denoise": 1.0}}
    smp = {"class_type": "AdaSDESampler", "inputs": {"coefficients": TRAINED_FILE, "afs": "auto", "s_noise": 1.0}}
    custom = stats_of(comfy.run(custom_graph(smp, sig_node, batch=1, seed=7)))
    assert close(custom[0]["first"], b1[0]["first"])
    # ... and differs from untrained AdaSDE on the same grid (the coefficients really were used)
    smp_u = {"class_type": "AdaSDESampler", "inputs": {"coefficients": "untrained", "afs": "auto", "s_noise": 1.0}}
    untrained = stats_of(comfy.run(custom_graph(smp_u, sig_node, batch=1, seed=7)))
    assert not close(untrained[0]["first"], b1[0]["first"], tol=1e-3)


def test_ksampler_fallback_warns_and_runs(comfy: Server) -> None:
    from adasde.policy import plan_for_sigmas
    from adasde.samplers import append_zero, get_sigmas

    mark = comfy.mark()
    entry = comfy.run(ksampler_graph(batch=1, seed=3, scheduler="karras", steps=2))
    assert all(s["std"] > 0 for s in stats_of(entry))
    # ComfyUI's karras grid (= polynomial rho 7) with its trailing 0 fits no file: the policy's note, shown verbatim
    info = sd15_info()
    karras = append_zero(get_sigmas("polynomial", 2, info.sigma_min, info.sigma_max, rho=7.0)).float()  # 2 steps
    want = plan_for_sigmas(info, "adasde", karras, dirs=coefficient_dirs(comfy))
    assert want.coeffs is None and len(want.notes) == 1
    (got,) = comfy.plans_since(mark)
    assert same_plan(plan_record(got), plan_record(want)), (got, want.protocol())
    assert want.notes[0] in comfy.log_since(mark)
    toasts = comfy.toasts_since(mark)
    assert toasts is None or toasts == want.notes, toasts



def test_distill_node_writes_listed_file_and_outputs(comfy: Server) -> None:
    entry = comfy.run(distill_graph("toy-distilled", trajectories=4), timeout=180)
    summary = entry["outputs"]["d"]["adasde_distill"][0]
    assert summary["file"] == "toy-distilled.safetensors" and summary["steps"] == 2 and summary["nfe"] == 3
    assert len(summary["losses"]) == 2 and all(v > 0 for v in summary["losses"])
    assert (comfy.coeff_dir / "toy-distilled.safetensors").is_file()  # first (user) folder of the merged list
    opts = options(comfy.object_info("AdaSDESampler")["input"]["required"]["coefficients"])
    assert "toy-distilled.safetensors" in opts  # appears in the combo without restart
    assert all(s["std"] > 0 for s in stats_of(entry))  # the returned SAMPLER + SIGMAS sample
    assert entry["outputs"]["chart"]["images"], entry["outputs"]["chart"]  # IMAGE of loss curve + coefficients

    from adasde.coefficients import load

    c = load(comfy.coeff_dir / "toy-distilled.safetensors")
    assert c.model.family == "sd15" and c.model.prediction == "eps" and c.afs
    assert abs(float(c.sigmas[0]) - SD15_SIGMA_MAX) < 1e-3 and abs(float(c.sigmas[-1]) - SD15_SIGMA_MIN) < 1e-4


def test_interrupt_during_distillation_keeps_checkpoint_and_resumes(comfy: Server) -> None:
    name = "toy-interrupted"
    ckpt = comfy.output_dir / "adasde_distill" / f"{name}.ckpt.safetensors"
    pid = comfy.queue(distill_graph(name, trajectories=40, seed=3))
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), comfy.tail()
    comfy.post("/interrupt", {})
    entry = comfy.wait(pid, timeout=120)
    assert entry["status"]["status_str"] == "error"
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert ckpt.exists(), "the checkpoint must survive a Cancel"
    assert not (comfy.coeff_dir / f"{name}.safetensors").exists()
    from adasde.distill.checkpoint import load_checkpoint

    done = int(load_checkpoint(ckpt)[1]["iteration"])
    assert 1 <= done < 20

    entry = comfy.run(distill_graph(name, trajectories=40, seed=3), timeout=240)
    from adasde.coefficients import load

    c = load(comfy.coeff_dir / f"{name}.safetensors")
    assert c.training["resumed_from"] == done and c.training["iterations"] == 20
    assert not ckpt.exists()  # removed after a completed run


def write_amed_file(folder: Path, name: str, enc_seed: int, steps: int = 3) -> Path:
    """An AMED coefficient set whose predictor (seed-fixed) reads the bottleneck; ``enc_seed`` changes only the
    feature encoder, so two files differ in output only if real bottleneck features reach the predictor."""
    from adasde.coefficients import Coefficients, ModelIdentity, save
    from adasde.samplers import AMEDPredictor, get_sigmas

    sig = get_sigmas("polynomial", steps + 1, SD15_SIGMA_MIN, SD15_SIGMA_MAX, rho=7.0, dtype=torch.float64)
    pred = AMEDPredictor(scale_dir=0.1, scale_time=0.1, seed=0)
    g = torch.Generator().manual_seed(enc_seed)
    with torch.no_grad():
        pred.enc1.weight.copy_(torch.randn(pred.enc1.weight.shape, generator=g) * 3.0)
    t = lambda v: torch.full((steps, 1), float(v))  # noqa: E731
    c = Coefficients(r=t(0.5), a=t(1.0), c=t(1.0), gamma=t(0.0), w=t(1.0), sigmas=sig, schedule="polynomial",
                     rho=7.0, afs=False, kind="amed", predictor={k: v.clone() for k, v in pred.state_dict().items()},
                     predictor_config=pred.config(),
                     model=ModelIdentity(family="sd15", prediction="eps", sigma_min=SD15_SIGMA_MIN,
                                         sigma_max=SD15_SIGMA_MAX))
    path = folder / name
    save(c, path)
    return path


def test_amed_sampler_reads_bottleneck_without_touching_the_model(comfy: Server) -> None:
    write_amed_file(comfy.coeff_dir, "toy-amed-a.safetensors", enc_seed=1)
    write_amed_file(comfy.coeff_dir, "toy-amed-b.safetensors", enc_seed=2)
    euler = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    grid = {"class_type": "AdaSDESigmas", "inputs": {"model": ["m", 0], "coefficients": "toy-amed-a.safetensors",
                                                     "steps": 3, "denoise": 1.0}}
    before = stats_of(comfy.run(custom_graph(euler, grid, batch=1, seed=11)))
    outs = []
    for f in ("toy-amed-a.safetensors", "toy-amed-b.safetensors"):
        amed = {"class_type": "AMEDSampler", "inputs": {"coefficients": f, "afs": "auto"}}
        outs.append(stats_of(comfy.run(custom_graph(amed, grid, batch=2, seed=11))))
    assert all(s["std"] > 0 for o in outs for s in o)
    # different feature encoders -> different results: the UNet bottleneck really reached the predictor
    assert not close(outs[0][0]["first"], outs[1][0]["first"], tol=1e-5)
    after = stats_of(comfy.run(custom_graph(euler, grid, batch=1, seed=11)))
    assert after[0]["sha"] == before[0]["sha"]  # the user's model (options) was not modified by the patch
    # the KSampler dropdown entry 'amed' runs too (auto-selects an AMED file for the grid)
    ks = ksampler_graph(batch=1, seed=11, sampler="amed", scheduler="adasde")
    assert all(s["std"] > 0 for s in stats_of(comfy.run(ks)))


def _random_images(seed: int, count: int, size: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # same recipe as the test pack's AdaSDETestImages
    return (torch.rand(count, size, size, 3, generator=g) * 0.8 + 0.1).clamp(0, 1)


def test_fid_nodes_reference_and_accumulation(comfy: Server) -> None:
    ref = {"imgs": {"class_type": "AdaSDETestImages", "inputs": {"seed": 0, "count": 24, "size": 28, "shift": 0.0}},
           "save": {"class_type": "AdaSDESaveFIDReferenceStats", "inputs": {
               "images": ["imgs", 0], "feature_net": "fmnist", "file_name": "toyref", "mode": "overwrite"}}}
    comfy.run(ref)

    def fid_graph(seed: int, reset: bool) -> dict:
        return {"imgs": {"class_type": "AdaSDETestImages", "inputs": {"seed": seed, "count": 8, "size": 28,
                                                                     "shift": 0.1}},
                "fid": {"class_type": "AdaSDEFIDEvaluate", "inputs": {
                    "images": ["imgs", 0], "reference": "toyref.npz", "feature_net": "fmnist", "accumulator": "acc",
                    "reset": reset}}}

    r1 = comfy.run(fid_graph(1, True))["outputs"]["fid"]["adasde_fid"][0]
    r2 = comfy.run(fid_graph(2, False))["outputs"]["fid"]["adasde_fid"][0]
    assert r1["num_images"] == 8 and r2["num_images"] == 16 and r2["metric"] == "FD-FMNIST"
    assert (comfy.output_dir / "adasde_fid" / "acc.npz").is_file()

    # the accumulated value equals a direct computation over all 16 images
    from adasde.evaluation.features import load_feature_net
    from adasde.evaluation.metrics import frechet_distance
    from adasde.evaluation.reference import load_stats
    from adasde.evaluation.stats import RunningStats

    net = load_feature_net("fmnist")

    def feats(x: torch.Tensor) -> torch.Tensor:
        return net(x.permute(0, 3, 1, 2))

    want_ref = RunningStats(net.dim).update(feats(_random_images(0, 24)))
    ref_file = load_stats(Path(r2["reference"]))
    assert abs(ref_file.mu - want_ref.mu).max() < 1e-4
    imgs = torch.cat([(_random_images(s, 8) + 0.1).clamp(0, 1) for s in (1, 2)])
    gen = RunningStats(net.dim).update(feats(imgs))
    want = float(frechet_distance(gen.mu, gen.sigma, want_ref.mu, want_ref.sigma))
    assert abs(r2["value"] - want) <= 1e-3 * max(1.0, abs(want)), (r2["value"], want)
    assert r2["value"] > 0


# ------------------------------------------------------------------------------------------------ headless browser
def _pink_pixels(png: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    # LOSS_COLOR in web/adasde.js is #ff40a0
    return int(((abs(a[..., 0] - 255) < 30) & (abs(a[..., 1] - 64) < 40) & (abs(a[..., 2] - 160) < 40)).sum())


@pytest.mark.chromium
def test_web_extension_draws_live_distill_chart(comfy: Server, browser: CDP, tmp_path: Path) -> None:
    import base64

    browser.call("Page.enable")
    browser.call("Runtime.enable")
    # first-run UI (templates browser) would cover the canvas: mark the tutorial as done for this fresh user
    comfy.post("/settings", {"Comfy.TutorialCompleted": True})
    browser.call("Page.navigate", url=comfy.url + "/")
    browser.wait_for("!!(window.app && window.app.graph && window.LiteGraph && window.__adasdeRegistered)", 120)
    scripts = browser.eval("JSON.stringify(window.app.extensions.map(e => e.name))")
    assert "adasde.ui" in json.loads(scripts)
    node_id = browser.eval("""(async () => {
        const app = window.app;
        app.graph.clear();
        const n = LiteGraph.createNode("AdaSDEDistill");
        n.pos = [220, 140];
        app.graph.add(n);
        app.canvas.ds.offset = [0, 0];
        app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        return n.id;
    })()""")
    assert node_id is not None
    assert browser.eval(f"window.app.graph.getNodeById({node_id}).size[1]") > 190  # room for the chart
    widgets = json.loads(browser.eval(f"JSON.stringify(window.app.graph.getNodeById({node_id}).widgets"
                                      ".map(w => [w.name, w.value]))"))
    names = [w[0] for w in widgets]
    assert widgets[names.index("seed") + 1][1] == "fixed", widgets  # seed control: Cancel then Queue resumes

    # a real distillation queued over HTTP with the same node id: the server broadcasts progress events
    g = distill_graph("toy-web", trajectories=4)
    prompt = {str(node_id) if k == "d" else k: v for k, v in g.items()}
    for v in prompt.values():
        for key, inp in v["inputs"].items():
            if isinstance(inp, list) and inp[0] == "d":
                v["inputs"][key] = [str(node_id), inp[1]]
    comfy.run(prompt, timeout=180)
    events = browser.wait_for("window.__adasde.events >= 3 && window.__adasde.events", 60)
    last = json.loads(browser.eval("JSON.stringify(window.__adasde.last)"))
    assert last["node"] == str(node_id) and last.get("finished") and len(last["losses"]) == 2, last
    assert events >= 3  # two iterations + the final event
    assert browser.eval(f"!!window.app.graph.getNodeById({node_id}).__adasdeDistill")
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'})); true")
    browser.eval("window.app.graph.setDirtyCanvas(true, true); window.app.canvas.draw(true, true); true")
    time.sleep(1.0)
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    out = Path(os.environ.get("ADASDE_SCREENSHOT_DIR", tmp_path)) / "comfyui-distill-node.png"
    out.write_bytes(png)
    assert _pink_pixels(png) > 50, f"no loss curve pixels in the screenshot {out}"


def test_example_workflows_match_the_running_node_schemas(comfy: Server) -> None:
    info = comfy.get("/object_info")
    api_files = sorted((REPO / "workflows").glob("*_api.json"))
    assert {f.stem for f in api_files} >= {"adasde_txt2img_api", "adasde_distill_api", "adasde_fid_api"}
    for f in api_files:
        graph = json.loads(f.read_text())
        for nid, node in graph.items():
            assert node["class_type"] in info, (f.name, nid, node["class_type"])
            schema = info[node["class_type"]]["input"]
            missing = set(schema.get("required", {})) - set(node["inputs"])
            assert not missing, (f.name, nid, missing)
            unknown = set(node["inputs"]) - set(schema.get("required", {})) - set(schema.get("optional", {}))
            assert not unknown, (f.name, nid, unknown)
            for k, v in node["inputs"].items():
                if isinstance(v, list):
                    assert v[0] in graph, (f.name, nid, k, v)
        ui = f.with_name(f.name.replace("_api", ""))
        assert ui.is_file(), f"missing UI-format twin {ui.name}"
        types = {n["type"] for n in json.loads(ui.read_text())["nodes"]}
        assert types == {n["class_type"] for n in graph.values()}, (ui.name, types)


# ------------------------------------------------------------------------------------------------ sampling policy
# Every case: the plan our sampler logged equals the policy's plan computed here (same sigmas within float32, same
# coefficient file, rows, NFE and notes), the toasts are exactly the plan's notes, and the latent equals the library's
# direct call on the policy's plan with ComfyUI's noise (node AdaSDETestDirect) within LATENT_TOL.  The records are
# saved per case as JSON (helpers.plans) for cross-door comparisons.
LATENT_TOL = 1e-4  # absolute and relative: the door's grid is ComfyUI's float32 copy of the plan's float64 grid
OTHER_5 = "case-sd15-5step.safetensors"  # SD1.5, 5 steps, polynomial rho 5: the denoise-0.6 grid (3 of 5 steps)
SDXL_3 = "case-sdxl-3step.safetensors"  # SDXL, the same grid as TRAINED_FILE, sorts first by name
SDXL_4 = "case-sdxl-4step.safetensors"  # SDXL only at 4 steps: an SD1.5 run must not take its grid


@pytest.fixture(scope="session")
def case_files(comfy: Server) -> dict[str, Path]:
    return {TRAINED_FILE: write_trained_file(comfy.coeff_dir),
            OTHER_5: write_trained_file(comfy.coeff_dir, OTHER_5, steps=5, rho=5.0),
            SDXL_3: write_trained_file(comfy.coeff_dir, SDXL_3, family="sdxl"),
            SDXL_4: write_trained_file(comfy.coeff_dir, SDXL_4, steps=4, family="sdxl")}


@pytest.fixture(scope="session")
def plans_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfyui-plans") / "comfyui_plans.json"


def _values(stats: list[dict]) -> torch.Tensor:
    return torch.tensor([s["values"] for s in stats], dtype=torch.float64)


def _check_case(comfy: Server, plans_json: Path, case: str, graph: dict, want: list, door: str = "stats",
                direct: str = "direct") -> dict:
    """Run ``graph``; compare the logged plans with ``want``, the toasts with their notes, and the door's latent
    with the direct call's; save the records.  Returns the history entry."""
    mark = comfy.mark()
    entry = comfy.run(graph)
    got = comfy.plans_since(mark)
    assert len(got) == len(want), (case, got)
    for g, w in zip(got, want):
        assert same_plan(plan_record(g), plan_record(w)), (case, plan_record(g), plan_record(w))
    notes = [n for w in want for n in w.notes]
    toasts = comfy.toasts_since(mark, wait=2.0 if notes else 0.5)
    assert toasts is None or toasts == notes, (case, toasts, notes)
    a, b = _values(stats_of(entry, door)), _values(stats_of(entry, direct))
    torch.testing.assert_close(a, b, atol=LATENT_TOL, rtol=LATENT_TOL)
    save_plans(plans_json, {case: {"door": [plan_record(g) for g in got], "policy": [plan_record(w) for w in want],
                                   "latent_max_abs_diff": float((a - b).abs().max())}})
    return entry


def _policy(comfy: Server, **kw: Any) -> Any:
    from adasde.policy import plan

    return plan(sd15_info(), kw.pop("sampler", "adasde"), dirs=coefficient_dirs(comfy), **kw)


def _scheduler(name: str, steps: int, denoise: float = 1.0) -> dict:
    return {"class_type": "BasicScheduler", "inputs": {"model": ["m", 0], "scheduler": name, "steps": steps,
                                                       "denoise": denoise}}


def test_basic_scheduler_equals_ksampler_sigmas(comfy: Server, case_files: dict) -> None:
    for steps, denoise in ((3, 1.0), (4, 1.0), (3, 0.6)):
        want = _policy(comfy, steps=steps, denoise=denoise)
        g = ksampler_graph(batch=1, seed=5, steps=steps)
        g["ks"]["inputs"]["denoise"] = denoise
        g["bs"] = _scheduler("adasde", steps, denoise)
        g["sig"] = {"class_type": "AdaSDETestSigmas", "inputs": {"sigmas": ["bs", 0]}}
        mark = comfy.mark()
        entry = comfy.run(g)
        basic = entry["outputs"]["sig"]["adasde_sigmas"][0]
        (ks,) = comfy.plans_since(mark)
        assert len(basic) == steps + 1 == len(ks["sigmas"]), (basic, ks["sigmas"])
        assert basic == [float(torch.tensor(v, dtype=torch.float32)) for v in ks["sigmas"]]  # identical values
        assert close(basic, [float(v) for v in want.sigmas], 1e-6)
        if denoise == 1.0:
            assert abs(basic[0] - SD15_SIGMA_MAX) < 1e-4  # starts at the grid's sigma_max, ends at its sigma_min
        assert abs(basic[-1] - SD15_SIGMA_MIN) < 1e-6
    # SamplerCustom on BasicScheduler(adasde) samples exactly what KSampler(adasde) samples
    smp = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "adasde"}}
    custom = stats_of(comfy.run(custom_graph(smp, _scheduler("adasde", 3), batch=1, seed=7)))
    ks = stats_of(comfy.run(ksampler_graph(batch=1, seed=7)))
    assert custom[0]["values"] == ks[0]["values"]


def test_policy_case_auto(comfy: Server, case_files: dict, plans_json: Path) -> None:
    want = _policy(comfy, steps=3)
    assert Path(want.coeffs_path).name == TRAINED_FILE and not want.notes  # SD1.5's file, not the SDXL one
    g = ksampler_graph(batch=1, seed=21)
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=21)
    _check_case(comfy, plans_json, "auto", g, [want])


def test_policy_case_batch_1_vs_4(comfy: Server, case_files: dict, plans_json: Path) -> None:
    want = _policy(comfy, steps=3)
    g = ksampler_graph(batch=4, seed=25)
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=25)
    four = _check_case(comfy, plans_json, "batch-4", g, [want])
    one = stats_of(comfy.run(ksampler_graph(batch=1, seed=25)))
    # same seed, same first image whatever the batch (batched kernels round differently: float32 tolerance)
    torch.testing.assert_close(_values(one)[0], _values(stats_of(four))[0], atol=LATENT_TOL, rtol=LATENT_TOL)


def test_policy_case_named_file(comfy: Server, case_files: dict, plans_json: Path) -> None:
    from adasde.policy import plan_for_sigmas

    grid = _policy(comfy, steps=3).sigmas.float()
    want = plan_for_sigmas(sd15_info(), "adasde", grid, coefficients=case_files[TRAINED_FILE],
                           dirs=coefficient_dirs(comfy))
    smp = {"class_type": "AdaSDESampler", "inputs": {"coefficients": TRAINED_FILE, "afs": "auto", "s_noise": 1.0}}
    g = custom_graph(smp, _scheduler("adasde", 3), batch=1, seed=22)
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=22)
    _check_case(comfy, plans_json, "named", g, [want])


def test_policy_case_wrong_family(comfy: Server, case_files: dict, plans_json: Path) -> None:
    from adasde.coefficients import load
    from adasde.errors import UsageError
    from adasde.policy import check_file

    # a named SDXL file on the SD1.5 model: the node run fails with the policy's one-line message
    with pytest.raises(UsageError) as err:
        check_file(load(case_files[SDXL_3]), sd15_info(), "adasde")
    smp = {"class_type": "AdaSDESampler", "inputs": {"coefficients": SDXL_3, "afs": "auto", "s_noise": 1.0}}
    failed = comfy.error(custom_graph(smp, _scheduler("adasde", 3), batch=1, seed=23))
    assert failed["exception_message"].strip() == str(err.value), failed["exception_message"]
    assert failed["exception_type"].endswith("UsageError")
    # 'auto' at 4 steps: only an SDXL file has 4 steps; the scheduler and sampler keep to SD1.5 (default grid + note)
    want = _policy(comfy, steps=4)
    assert want.coeffs is None and len(want.notes) == 1
    g = ksampler_graph(batch=1, seed=23, steps=4)
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=23)
    _check_case(comfy, plans_json, "wrong-family", g, [want])


def test_policy_case_wrong_step_count(comfy: Server, case_files: dict, plans_json: Path) -> None:
    from adasde.policy import plan_for_sigmas

    grid = _policy(comfy, steps=5).sigmas.float()  # the 5-step grid; the named file has 3 steps
    want = plan_for_sigmas(sd15_info(), "adasde", grid, coefficients=case_files[TRAINED_FILE],
                           dirs=coefficient_dirs(comfy))
    assert want.coeffs is None and len(want.notes) == 1 and TRAINED_FILE in want.notes[0]
    smp = {"class_type": "AdaSDESampler", "inputs": {"coefficients": TRAINED_FILE, "afs": "auto", "s_noise": 1.0}}
    g = custom_graph(smp, _scheduler("adasde", 5), batch=1, seed=26)
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=26)
    _check_case(comfy, plans_json, "wrong-steps", g, [want])


def test_policy_case_denoise(comfy: Server, case_files: dict, plans_json: Path) -> None:
    want = _policy(comfy, steps=3, denoise=0.6)  # the last 3 of 5 steps: rows 2..4 of the 5-step file
    assert Path(want.coeffs_path).name == OTHER_5 and want.offset == 2 and not want.notes
    g = ksampler_graph(batch=1, seed=27)
    g["ks"]["inputs"]["denoise"] = 0.6
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=27)
    _check_case(comfy, plans_json, "denoise-0.6", g, [want])


def test_policy_case_denoise_without_file(comfy: Server, case_files: dict, plans_json: Path) -> None:
    """No 6-step file: the last 3 of the model's default 6-step grid, untrained, with the policy's note (which
    advises distilling; the 'adasde' scheduler is already in use)."""
    want = _policy(comfy, steps=3, denoise=0.5)
    assert want.coeffs is None and len(want.notes) == 1 and "'adasde' scheduler" not in want.notes[0]
    g = ksampler_graph(batch=1, seed=28)
    g["ks"]["inputs"]["denoise"] = 0.5
    g["direct"] = stats_node(["d", 0])
    g["d"] = direct_node(want, ["lat", 0], seed=28)
    _check_case(comfy, plans_json, "denoise-0.5-untrained", g, [want])


def test_policy_case_two_stage_split(comfy: Server, case_files: dict, plans_json: Path) -> None:
    first, second = _policy(comfy, steps=3, end_step=1), _policy(comfy, steps=3, start_step=1)
    assert (first.offset, second.offset) == (0, 1) and Path(second.coeffs_path).name == TRAINED_FILE

    def stage(latent: list, add: bool, start: int, end: int, leftover: bool) -> dict:
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["m", 0], "positive": ["m", 1], "negative": ["m", 2], "latent_image": latent,
            "add_noise": "enable" if add else "disable", "noise_seed": 24, "steps": 3, "cfg": 2.0,
            "sampler_name": "adasde", "scheduler": "adasde", "start_at_step": start, "end_at_step": end,
            "return_with_leftover_noise": "enable" if leftover else "disable"}}

    g = {"m": toy(), "lat": empty_latent(1), "s1": stage(["lat", 0], True, 0, 1, True),
         "s2": stage(["s1", 0], False, 1, 10000, False), "stats": stats_node(["s2", 0]),
         "d1": direct_node(first, ["lat", 0], seed=24), "d2": direct_node(second, ["d1", 0], seed=24, add_noise=False),
         "direct": stats_node(["d2", 0])}
    _check_case(comfy, plans_json, "split", g, [first, second])


def test_distill_leaves_the_users_model_untouched(comfy: Server) -> None:
    def hashes(tag: str) -> dict:
        g = {"m": toy(), "h": {"class_type": "AdaSDETestModelHash", "inputs": {"model": ["m", 0], "tag": tag}}}
        return comfy.run(g)["outputs"]["h"]["adasde_hash"][0]

    before = hashes("before")
    comfy.run(distill_graph("toy-untouched", trajectories=2, seed=4), timeout=180)
    after = hashes("after")
    assert after["values"] == before["values"]  # same weights
    assert after["tensors"] == before["tensors"]  # and the same tensor objects: nothing replaced in the user's model


def test_distill_seed_stays_fixed_in_schema_and_saved_workflow() -> None:
    """The frontend reads ``control_after_generate`` from the schema; the saved workflow keeps 'fixed' after the seed,
    so Cancel then Queue re-runs with the same seed and resumes (the resume itself: the interrupt test above)."""
    ui = json.loads((REPO / "workflows" / "adasde_distill.json").read_text())
    (node,) = [n for n in ui["nodes"] if n["type"] == "AdaSDEDistill"]
    values = node["widgets_values"]  # widget order of the schema: cfg, width, ..., afs, seed, its control, ...
    assert isinstance(values[11], int) and values[12] == "fixed", values
    assert "randomize" not in values


def test_distill_seed_control_in_object_info(comfy: Server) -> None:
    seed = comfy.object_info("AdaSDEDistill")["input"]["required"]["seed"]
    assert seed[1].get("control_after_generate") == "fixed", seed
