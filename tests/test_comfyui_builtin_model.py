"""The ``AdaSDE Built-in Model`` nodes on the real ComfyUI server: the example workflow
``workflows/adasde_builtin_fmnist_api.json`` (KSampler adasde + scheduler adasde at 3 steps with the shipped NFE-5
coefficients vs euler at 5 steps: 5 network calls each) runs, and its adasde images are the library's prediction for
the same starting noise, not untrained AdaSDE's.

The prediction reproduces what ComfyUI does before it calls the sampler: the grid is the policy's plan for the model
at the workflow's step count (``steps + 1`` sigmas of the shipped file, no trailing 0: docs/HOSTS.md, the ``adasde``
scheduler); the initial noise is ``torch.randn`` of the latent shape from ``torch.manual_seed(seed)``; at the model's
sigma_max it is scaled by sqrt(1 + sigma_max^2) (ComfyUI's ``max_denoise`` noise scaling); the churn seeds are
derived per image by ``nodes/host.per_image_seeds``; SaveImage truncates ``255 * image`` to uint8.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from helpers.comfyui import REPO, Server, options
from helpers.plans import plan_record, same_plan
from PIL import Image

WORKFLOW = REPO / "workflows" / "adasde_builtin_fmnist_api.json"
SHIPPED = "builtin-fmnist-adasde-nfe5.safetensors"
pytestmark = [pytest.mark.comfyui]


def _host_module():
    """``nodes/host.py`` loaded as a module of the ``adasde`` package without ``nodes/__init__.py`` (which imports
    ComfyUI; the host module's top level imports only torch, the standard library and the core), for the seed
    derivation the ComfyUI adapter uses."""
    spec = importlib.util.spec_from_file_location("adasde.nodes.host", REPO / "nodes" / "host.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _saved_images(comfy: Server, entry: dict, node: str) -> np.ndarray:
    imgs = entry["outputs"][node]["images"]
    arrs = [np.asarray(Image.open(comfy.output_dir / im["subfolder"] / im["filename"]).convert("L")) for im in imgs]
    return np.stack(arrs).astype(np.int16)


def _plan(steps: int):
    """The policy's AdaSDE plan for the built-in model at ``steps`` (what the ``adasde`` scheduler emits)."""
    from adasde.models import load_model
    from adasde.policy import plan

    return plan(load_model("builtin:fmnist"), "adasde", steps=steps)


def _predicted(seed: int, batch: int, steps: int, coeffs) -> np.ndarray:
    """uint8 images the library gives for ComfyUI's noise of ``seed`` on the plan's grid for ``steps`` with
    ``coeffs`` (None = untrained)."""
    from adasde.models import load_model
    from adasde.samplers import sample_adasde

    model = load_model("builtin:fmnist")
    sigmas = _plan(steps).sigmas.to(torch.float32)
    noise = torch.randn((batch, 1, 28, 28), dtype=torch.float32, generator=torch.manual_seed(seed))
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    extra = _host_module().per_image_seeds({"seed": seed}, x)
    with torch.no_grad():
        out = sample_adasde(model, x, sigmas, extra_args=extra, coeffs=coeffs)
    img = model.decode(out)[:, 0].numpy()
    return np.clip(255.0 * img, 0, 255).astype(np.uint8).astype(np.int16)


def load_shipped():
    from adasde.coefficients import load

    return load(REPO / "coefficients" / "data" / SHIPPED)


def test_builtin_model_nodes_are_registered(comfy: Server) -> None:
    info = comfy.object_info("AdaSDEBuiltinModel")
    assert info["output"] == ["MODEL", "VAE", "CONDITIONING"]
    assert "adasde" in info["search_aliases"]
    for node in ("AdaSDEFIDEvaluate", "AdaSDESaveFIDReferenceStats", "AMEDSampler", "AdaSDESampler", "AdaSDESigmas",
                 "AdaSDEDistill"):  # searching "adasde" in the node library finds every node of the pack
        assert "adasde" in comfy.object_info(node)["search_aliases"]
    assert comfy.object_info("AdaSDEEmptyBuiltinLatent")["output"] == ["LATENT"]


def test_builtin_workflow_adasde_matches_the_library_and_beats_untrained(comfy: Server) -> None:
    graph = json.loads(WORKFLOW.read_text())
    batch, seed = 6, 1234
    graph["2"]["inputs"]["batch_size"] = batch
    for ks in ("3", "4"):
        graph[ks]["inputs"]["seed"] = seed
    steps = graph["3"]["inputs"]["steps"]
    # the workflow compares the samplers at equal cost: 3 AdaSDE steps with AFS (the NFE-5 file) vs 5 euler steps
    assert (steps, graph["3"]["inputs"]["scheduler"], graph["4"]["inputs"]["steps"]) == (3, "adasde", 5)
    want = _plan(steps)
    assert want.nfe == 5 and len(want.sigmas) == steps + 1 and float(want.sigmas[-1]) > 0
    assert want.coeffs_path is not None and os.path.basename(want.coeffs_path) == SHIPPED
    torch.testing.assert_close(want.sigmas, load_shipped().sigmas.flatten().double())
    mark = comfy.mark()
    entry = comfy.run(graph, timeout=300)
    got = _saved_images(comfy, entry, "7")
    euler = _saved_images(comfy, entry, "8")
    assert got.shape == euler.shape == (batch, 28, 28)
    # one plan logged (euler is not ours): the shipped file on its whole trained grid, no trailing 0
    (logged,) = comfy.plans_since(mark)
    assert logged["coefficients"] is not None and os.path.basename(logged["coefficients"]) == SHIPPED, logged
    assert same_plan(plan_record(logged), plan_record(want)), (plan_record(logged), plan_record(want))
    # the shipped folder is listed for the sampler nodes once the loader ran
    combo = options(comfy.object_info("AdaSDESampler")["input"]["required"]["coefficients"])
    assert "builtin-fmnist-adasde-nfe5.safetensors" in combo

    trained = _predicted(seed, batch, steps, load_shipped())
    untrained = _predicted(seed, batch, steps, None)
    d_trained = np.abs(got - trained)
    d_untrained = np.abs(got - untrained)
    # ComfyUI's denoiser is our EDM model up to float rounding: at most a couple of grey levels anywhere
    assert d_trained.max() <= 3, (d_trained.max(), d_trained.mean())
    assert d_trained.mean() < 0.2, d_trained.mean()
    # and the shipped coefficients really changed the result (untrained = DPM-Solver-2 on the same grid)
    assert d_untrained.mean() > 20 * max(d_trained.mean(), 0.05), (d_untrained.mean(), d_trained.mean())
    # the euler column is a different sampler on the same noise: real garments, not a copy of the adasde images
    assert np.abs(euler - got).mean() > 1.0
    assert all(img.std() > 10 for img in got) and all(img.std() > 10 for img in euler)


def test_builtin_vae_is_identity_on_pixels(comfy: Server) -> None:
    """VAEEncode then VAEDecode of a sampled batch gives back the same image (pixel space, 1 channel)."""
    graph = json.loads(WORKFLOW.read_text())
    graph["2"]["inputs"]["batch_size"] = 2
    graph["9"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 1]}}
    graph["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 1]}}
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "adasde_vae_rt"}}
    entry = comfy.run(graph, timeout=300)
    a = _saved_images(comfy, entry, "7")
    b = _saved_images(comfy, entry, "11")
    assert np.abs(a - b).max() <= 1
    assert math.isfinite(float(a.mean()))


def test_example_workflow_image_nodes_do_not_overlap() -> None:
    """Save / Preview Image nodes grow to show their images: each keeps a box of at least 300 px height that no other
    node enters."""
    for f in sorted((REPO / "workflows").glob("*.json")):
        if f.stem.endswith("_api"):
            continue
        nodes = json.loads(f.read_text())["nodes"]
        for a in nodes:
            if a["type"] not in ("SaveImage", "PreviewImage"):
                continue
            (x1, y1), (w1, h1) = a["pos"], a["size"]
            h1 = max(h1, 300)
            for b in nodes:
                if b is a:
                    continue
                (x2, y2), (w2, h2) = b["pos"], b["size"]
                apart = x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
                assert apart, (f.name, a["id"], b["id"])
    assert "adasde_builtin_fmnist" in (REPO / "workflows" / "README.md").read_text()
