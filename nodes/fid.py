"""V3 nodes ``FID Evaluate`` and ``Save FID Reference Stats`` over the library's evaluation package.

* Features: ``evaluation.load_feature_net`` ("inception" = the standard FID Inception-v3, weights read from a local
  file, never downloaded here; "fmnist" = FD-FMNIST with adasde's builtin classifier, images resized to 28 x 28).
* Accumulation across queue runs: with an ``accumulator`` name the running feature statistics
  (``evaluation.RunningStats``, mergeable, saved atomically, never pickled) live in
  ``<output>/adasde_fid/<name>.npz``; each run adds its images and reports the FID of everything accumulated so far,
  so a large evaluation is a headless loop of small prompts over a seed range.
* Reference statistics: ``.npz`` files in ``models/adasde_fid_stats`` (folder_paths, merged with extra_model_paths),
  or an absolute path, or a path relative to the output directory.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import torch
from comfy_api.latest import io

from . import host

CATEGORY = "sampling/adasde/evaluation"
REF_FOLDER = "adasde_fid_stats"
FEATURE_NETS = ["inception", "fmnist"]
_NETS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _name_ok(name: str, what: str) -> str:
    n = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,120}", n) or ".." in n:
        raise ValueError(f"{what} {name!r} must be a plain name (letters, digits, '-', '_', '.'), e.g. 'sd15-nfe5'")
    return n


def register_ref_folder() -> str:
    """``models/adasde_fid_stats`` (default) merged with any folder of that name from extra_model_paths.yaml; returns
    the first folder path."""
    return host.register_model_folder(REF_FOLDER, {".npz"})


def resolve_reference(ref: str) -> str:
    """Absolute path, a name in the reference folder(s), or a path relative to the output directory."""
    import folder_paths

    register_ref_folder()
    ref = ref.strip()
    if not ref:
        raise ValueError("FID Evaluate: 'reference' is empty; give a statistics .npz (write one with 'Save FID "
                         f"Reference Stats' or `adasde fid ref`) in models/{REF_FOLDER} or as an absolute path")
    if os.path.isabs(ref) and os.path.isfile(ref):
        return ref
    hit = folder_paths.get_full_path(REF_FOLDER, ref) or folder_paths.get_full_path(REF_FOLDER, ref + ".npz")
    if hit:
        return hit
    out = os.path.join(folder_paths.get_output_directory(), ref)
    if os.path.isfile(out):
        return out
    raise FileNotFoundError(f"FID Evaluate: reference statistics {ref!r} not found (looked in "
                            f"{folder_paths.get_folder_paths(REF_FOLDER)} and {folder_paths.get_output_directory()}); "
                            f"create it with 'Save FID Reference Stats' or `adasde fid ref --data DIR --dest FILE`")


def feature_net(name: str) -> Any:
    import comfy.model_management as mm

    from ..evaluation.features import load_feature_net

    device = str(mm.get_torch_device())
    with _LOCK:
        key = (name, device)
        if key not in _NETS:
            _NETS[key] = load_feature_net(name, device=device)
        return _NETS[key]


def image_features(net: Any, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> features ``[B, dim]`` (28 x 28 for the fmnist network)."""
    x = images.detach().float().clamp(0, 1).permute(0, 3, 1, 2)
    if x.shape[1] == 4:
        x = x[:, :3]
    if getattr(net, "metric", "") == "FD-FMNIST" and tuple(x.shape[-2:]) != (28, 28):
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([net(c.to(net.device)).float().cpu() for c in x.split(chunk)])


def _accumulator_path(name: str) -> str:
    import folder_paths

    d = os.path.join(folder_paths.get_output_directory(), "adasde_fid")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, _name_ok(name, "FID Evaluate: accumulator") + ".npz")


class FIDEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDEFIDEvaluate",
            display_name="FID Evaluate",
            category=CATEGORY,
            search_aliases=["adasde", "fid", "fd-fmnist", "frechet", "evaluate"],
            description="Frechet distance of IMAGE batches to reference statistics. With an accumulator name the "
                        "statistics accumulate across queue runs (saved in output/adasde_fid/) for large evaluations.",
            inputs=[
                io.Image.Input("images"),
                io.String.Input("reference", default="", tooltip=f"Statistics .npz: a name in models/{REF_FOLDER}, "
                                                                 "an absolute path, or relative to output/."),
                io.Combo.Input("feature_net", options=FEATURE_NETS, default="inception",
                               tooltip="inception = FID (needs the local Inception weights); fmnist = FD-FMNIST."),
                io.String.Input("accumulator", default="", tooltip="Name of a running accumulator ('' = this "
                                                                   "batch only)."),
                io.Boolean.Input("reset", default=False, tooltip="Start the accumulator from zero."),
            ],
            outputs=[io.Float.Output(display_name="fid"), io.String.Output(display_name="summary")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> float:
        return float("nan")  # accumulating: never served from the cache

    @classmethod
    def execute(cls, images: torch.Tensor, reference: str, feature_net: str, accumulator: str,
                reset: bool) -> io.NodeOutput:
        from ..evaluation.metrics import frechet_distance
        from ..evaluation.reference import check_feature_net, load_stats, sha256_file
        from ..evaluation.stats import RunningStats

        ref_path = resolve_reference(reference)
        net = globals()["feature_net"](feature_net)
        ref = load_stats(ref_path)
        check_feature_net(ref, net.name, dim=net.dim, weights_sha256=net.info.get("weights_sha256"))
        feats = image_features(net, images)
        acc_path = _accumulator_path(accumulator) if accumulator.strip() else None
        stats = RunningStats(net.dim, meta={"feature_net": net.name})
        if acc_path and os.path.isfile(acc_path) and not reset:
            stats = RunningStats.load(acc_path)
            if stats.dim != net.dim or stats.meta.get("feature_net") not in (None, net.name):
                raise ValueError(f"FID Evaluate: accumulator {acc_path} holds {stats.meta.get('feature_net')} "
                                 f"features (dim {stats.dim}), not {net.name}; use another name or reset=true")
        stats.update(feats)
        if acc_path:
            stats.save(acc_path)
        if stats.n < 2:
            value, res = float("nan"), None
        else:
            res = frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
            value = float(res)
        result = {"metric": getattr(net, "metric", "FID"), "value": value, "num_images": int(stats.n),
                  "batch_images": int(images.shape[0]), "feature_net": net.name, "reference": ref_path,
                  "reference_sha256": sha256_file(ref_path)[:16], "reference_images": ref.n,
                  "accumulator": acc_path or "", "mean_term": getattr(res, "mean_term", None),
                  "trace_term": getattr(res, "trace_term", None)}
        summary = (f"{result['metric']} = {value:.4f} over {stats.n} images (+{images.shape[0]} this run) against "
                   f"{os.path.basename(ref_path)} [{net.name}]")
        if stats.n < 2:
            summary = f"{result['metric']}: need at least 2 images, have {stats.n}"
        if stats.n < 2048 and getattr(net, "metric", "") == "FID":
            summary += f"; note: FID is biased upward below ~10k images (have {stats.n})"
        return io.NodeOutput(value, summary, ui={"adasde_fid": [result], "text": [summary]})


class SaveFIDReferenceStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaSDESaveFIDReferenceStats",
            display_name="Save FID Reference Stats",
            category=CATEGORY,
            search_aliases=["adasde", "fid", "reference statistics"],
            description=f"Feature statistics of IMAGE batches written (atomically) to models/{REF_FOLDER}/<name>.npz; "
                        "'append' adds to the statistics of earlier runs.",
            inputs=[
                io.Image.Input("images"),
                io.Combo.Input("feature_net", options=FEATURE_NETS, default="inception"),
                io.String.Input("file_name", default="reference"),
                io.Combo.Input("mode", options=["append", "overwrite"], default="append"),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> float:
        return float("nan")

    @classmethod
    def execute(cls, images: torch.Tensor, feature_net: str, file_name: str, mode: str) -> io.NodeOutput:
        from ..evaluation.reference import save_stats
        from ..evaluation.stats import RunningStats

        name = _name_ok(file_name[:-4] if file_name.endswith(".npz") else file_name, "Save FID Reference Stats: "
                        "file_name")
        folder = register_ref_folder()
        path = os.path.join(folder, name + ".npz")
        state_path = os.path.join(folder, name + ".state")
        net = globals()["feature_net"](feature_net)
        stats = RunningStats(net.dim, meta={"feature_net": net.name})
        if mode == "append" and os.path.isfile(state_path):
            stats = RunningStats.load(state_path)
        stats.update(image_features(net, images))
        stats.save(state_path)
        if stats.n >= 2:
            save_stats(path, stats, meta={"feature_net": net.name, "metric": getattr(net, "metric", "FD")})
        info = {"path": path, "num_images": int(stats.n), "feature_net": net.name}
        return io.NodeOutput(path, ui={"adasde_fid_ref": [info], "text": [json.dumps(info)]})

