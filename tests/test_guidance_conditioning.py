"""``conditioning``: guidance flags -> wrapped model + per-seed / per-iteration extra_args, on the real
built-in model and its noise-conditional classifier; presets filling flags; the CLI doors (sample, fid sample,
distill) with classifier guidance."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from adasde.cli import build_parser, main
from adasde.conditioning import build_conditioning, parse_classes
from adasde.errors import UsageError
from adasde.loaders.guidance import ClassifierGuided
from adasde.models import load_model
from adasde.policy.presets import GUIDANCE, PRESETS, add_guidance_arguments, get_preset, solver_options


@pytest.fixture(scope="module")
def fmnist():
    return load_model("builtin:fmnist")


def test_parse_classes() -> None:
    assert parse_classes("7") == [7]
    assert parse_classes(" 0, 3,7 ") == [0, 3, 7]
    assert parse_classes([1, 2]) == [1, 2]
    assert parse_classes(None) is None
    for bad in ("x", "", "-1", "1,,a"):
        with pytest.raises(UsageError, match="--classes"):
            parse_classes(bad)


def test_cg_wraps_the_builtin_model_with_the_noisy_classifier(fmnist) -> None:
    cond = build_conditioning(fmnist, guidance="cg", classes="0,3,7", guidance_rate=2.0)
    assert isinstance(cond.model, ClassifierGuided) and cond.model.inner is fmnist and cond.model.rate == 2.0
    assert type(cond.model.classifier).__name__ == "NoisyFMNISTClassifier"
    assert cond.record == {"guidance": "cg", "guidance_rate": 2.0, "classifier": "builtin:fmnist-noisy-classifier",
                           "classes": [0, 3, 7]}
    # seed s gets classes[s mod 3], whatever the batch
    assert cond.extra_for([0, 1, 2, 3, 4])["class_labels"].tolist() == [0, 3, 7, 0, 3]
    assert cond.extra_for([4])["class_labels"].tolist() == [3]
    # the guided denoiser is D + sigma^2 * rate * grad log p(y | x; sigma) (docs/ALGORITHMS.md section 11)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.5, 1.0, 2.0])
    y = torch.tensor([0, 3, 7])
    clf = cond.model.classifier
    xg = x.clone().requires_grad_(True)
    torch.log_softmax(clf(xg, s), -1).gather(1, y[:, None]).sum().backward()
    want = fmnist(x, s) + 2.0 * s.view(-1, 1, 1, 1) ** 2 * xg.grad
    torch.testing.assert_close(cond.model(x, s, class_labels=y), want, atol=1e-5, rtol=1e-4)
    # distillation draws the labels of an iteration from the engine's generator, within --classes
    fn = cond.distill_condition(16)
    a, b = fn(0, torch.Generator().manual_seed(5)), fn(0, torch.Generator().manual_seed(5))
    assert torch.equal(a["class_labels"], b["class_labels"]) and set(a["class_labels"].tolist()) <= {0, 3, 7}


def test_random_classes_per_seed_do_not_depend_on_the_batch(fmnist) -> None:
    cond = build_conditioning(fmnist, guidance="cg")
    assert cond.record["classes"] == "drawn per seed from 0..9"
    whole = cond.extra_for(list(range(40)))["class_labels"]
    parts = torch.cat([cond.extra_for([s])["class_labels"] for s in range(40)])
    assert torch.equal(whole, parts) and len(set(whole.tolist())) > 3


def test_uncond_and_inference_of_the_guidance_type(fmnist) -> None:
    cond = build_conditioning(fmnist)
    assert cond.model is fmnist and cond.extra_for is None and cond.distill_condition(4) is None
    assert cond.record["guidance"] == "uncond"
    assert build_conditioning(fmnist, classifier="builtin:fmnist-noisy-classifier", classes=1).record["guidance"] \
        == "cg"
    guided = build_conditioning(fmnist, guidance="cg", classes=1).model
    assert build_conditioning(guided, guidance="uncond").model is fmnist


@pytest.mark.parametrize("kw, match", [
    ({"guidance": "cfg"}, "needs a text-to-image model"),
    ({"guidance": "nope"}, "use one of cfg, cg, uncond"),
    ({"classes": "3"}, "unconditional; use --guidance cg"),
    ({"guidance": "cg", "classes": "10"}, r"classes 0..9"),
    ({"guidance": "cg", "guidance_rate": -1.0}, "--guidance-rate"),
    ({"guidance": "uncond", "classifier": "builtin:fmnist-noisy-classifier"}, "--guidance cg only"),
    ({"guidance": "cg", "classifier": "builtin:nope"}, "unknown built-in classifier"),
    ({"guidance": "cg", "classifier": "missing_classifier.pt", "classes": "1"}, "file not found"),
    ({"prompts": ["a cat"]}, "not a text-to-image model"),
])
def test_inconsistent_settings_are_one_line_errors(fmnist, kw, match) -> None:
    from adasde.errors import AdasdeError

    with pytest.raises(AdasdeError, match=match) as e:
        build_conditioning(fmnist, **kw)
    assert "\n" not in str(e.value)


def test_cg_on_a_model_without_a_default_classifier_needs_one() -> None:
    gmm = load_model("testbed:gmm")
    with pytest.raises(UsageError, match="give --classifier SPEC"):
        build_conditioning(gmm, guidance="cg", classes="1")


def test_presets_fill_only_what_was_not_given() -> None:
    assert set(PRESETS) == {"cifar10", "ffhq", "afhqv2", "imagenet64", "lsun_bedroom", "imagenet256",
                            "lsun_bedroom_ldm", "ms_coco"}
    assert all(p.guidance in GUIDANCE for p in PRESETS.values())
    with pytest.raises(UsageError, match="--preset 'nope' is not known"):
        get_preset("nope")
    p = argparse.ArgumentParser()
    p.add_argument("--schedule", default=None)
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--gamma-max", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--method", default="adasde")
    seen = {}
    p.set_defaults(func=lambda a: seen.update(vars(a)) or 0)
    add_guidance_arguments(p, "distill")
    a = p.parse_args(["--preset", "ms_coco", "--batch", "8"])
    a.func(a)
    assert (seen["schedule"], seen["rho"], seen["guidance"], seen["guidance_rate"]) == ("discrete", 1.0, "cfg", 7.5)
    assert (seen["batch"], seen["gamma_max"], seen["lr"], seen["trajectories"]) == (8, 0.01, 0.01, 5000)
    a = p.parse_args(["--preset", "cifar10", "--schedule", "polynomial", "--cfg", "3"])
    a.func(a)  # an explicit schedule keeps its own exponent; --cfg is the CFG rate
    assert (seen["schedule"], seen["rho"], seen["gamma_max"], seen["guidance_rate"]) == ("polynomial", None, 0.02, 3)
    a = p.parse_args([])
    a.func(a)  # no preset: the parser's own defaults
    assert (seen["schedule"], seen["gamma_max"], seen["batch"], seen["guidance"]) == (None, 0.01, 32, None)
    a = p.parse_args(["--preset", "cifar10", "--method", "amed"])
    a.func(a)  # AMED keeps its own optimiser settings
    assert seen["lr"] is None and seen["teacher"] is None and seen["schedule"] == "time_uniform"
    assert solver_options(PRESETS["ms_coco"], "dpmpp_3m") == {"predict_x0": False, "lower_order_final": True}
    assert solver_options(PRESETS["lsun_bedroom_ldm"], "unipc") == {"predict_x0": False, "max_order": 3}
    assert solver_options(PRESETS["cifar10"], "dpmpp_3m") == {} and solver_options(PRESETS["ms_coco"], "adasde") == {}


def test_every_door_has_the_guidance_flags() -> None:
    parser = build_parser()
    for argv in (["sample", "--model", "m", "--nfe", "3"], ["fid", "sample", "--model", "m", "--ref", "r"],
                 ["distill", "--model", "m", "--out", "o"]):
        a = parser.parse_args([*argv, "--guidance", "cg", "--guidance-rate", "2", "--classes", "7", "--classifier",
                               "builtin:fmnist-noisy-classifier", "--preset", "imagenet256"])
        assert (a.guidance, a.guidance_rate, a.classes, a.preset) == ("cg", 2.0, "7", "imagenet256")
    a = parser.parse_args(["distill", "--model", "m", "--out", "o", "--prompts", "p.csv", "--cfg", "7.5"])
    assert (a.prompts, a.cfg) == ("p.csv", 7.5)


def _clean_predictions(folder: Path) -> list[int]:
    from adasde.builtin.classifier import load_classifier
    from adasde.evaluation.images import read_image

    imgs = torch.stack([read_image(p) for p in sorted(folder.glob("*.png"))]).float() / 255
    with torch.no_grad():
        return load_classifier()(imgs).argmax(1).tolist()


def test_sample_cg_turns_the_builtin_model_class_conditional(tmp_path: Path) -> None:
    base = ["sample", "--model", "builtin:fmnist", "--nfe", "5", "--seeds", "0-47", "--batch", "24", "--no-progress"]
    counts = {}
    for sampler in ("adasde", "euler"):
        for g in ("uncond", "cg"):
            extra = ["--guidance", "cg", "--classes", "7"] if g == "cg" else []
            assert main([*base, "--sampler", sampler, *extra, "--out", str(tmp_path / f"{sampler}-{g}")]) == 0
            counts[sampler, g] = _clean_predictions(tmp_path / f"{sampler}-{g}").count(7)
    # the clean classifier sees the requested class (7, sneaker) far more often with guidance (default rate 4)
    # (48 images: at 5 model calls the large steps of the learned solver take less of the guidance than Euler's)
    assert counts["euler", "cg"] >= 36 and counts["euler", "uncond"] <= 12
    assert counts["adasde", "cg"] >= counts["adasde", "uncond"] + 6
    rec = json.loads((tmp_path / "adasde-cg" / ".adasde_sample.json").read_text())
    assert rec["guidance"] == {"guidance": "cg", "guidance_rate": 4.0, "classifier": "builtin:fmnist-noisy-classifier",
                               "classes": [7]}
    from PIL import Image

    assert "Classifier guidance: 4 (builtin:fmnist-noisy-classifier)" in \
        Image.open(tmp_path / "adasde-cg" / "000003.png").text["parameters"]
    # another guidance setting into the same folder is another run: refused before any work
    assert main([*base, "--guidance", "cg", "--classes", "3", "--out", str(tmp_path / "adasde-cg")]) == 2


def test_fid_sample_and_distill_with_classifier_guidance(tmp_path: Path) -> None:
    from adasde.builtin.classifier import STATS_DIR
    from adasde.coefficients import load

    ref = str(STATS_DIR / "fmnist_test.npz")
    fid = ["fid", "sample", "--model", "builtin:fmnist", "--sampler", "euler", "--nfe", "3", "--seeds", "0-7",
           "--ref", ref, "--quiet", "--batch", "8"]
    assert main([*fid, "--guidance", "cg", "--classes", "2", "--json", str(tmp_path / "cg.json")]) == 0
    assert main([*fid, "--json", str(tmp_path / "plain.json")]) == 0
    cg, plain = (json.loads((tmp_path / f).read_text()) for f in ("cg.json", "plain.json"))
    assert cg["protocol"]["guidance"]["guidance"] == "cg" and plain["protocol"]["guidance"]["guidance"] == "uncond"
    assert cg["value"] != plain["value"]
    out = tmp_path / "c.safetensors"
    assert main(["distill", "--model", "builtin:fmnist", "--guidance", "cg", "--classes", "7", "--nfe", "3",
                 "--trajectories", "4", "--batch", "2", "--M", "1", "--out", str(out), "--no-progress",
                 "--threads", "1"]) == 0
    assert load(out).nfe == 3 and load(out).model.family == "builtin-fmnist"


class _ClassEcho(torch.nn.Module):
    """A class-conditional sigma-form model (``label_dim`` like the EDM ImageNet-64 network): x0 = its class index."""

    family, label_dim, text_conditioned = "echo-cond", 5, False

    def forward(self, x, sigma, class_labels=None, **extra):
        return torch.as_tensor(class_labels, dtype=x.dtype).view(-1, 1, 1, 1).expand_as(x)


def test_class_conditional_models_get_labels_per_seed() -> None:
    m = _ClassEcho()
    cond = build_conditioning(m, classes="1,4")
    assert cond.record == {"guidance": "uncond", "guidance_rate": None, "classes": [1, 4]}
    assert cond.model(torch.zeros(3, 1, 2, 2), torch.ones(3), **cond.extra_for([0, 1, 2]))[:, 0, 0, 0].tolist() == \
        [1, 4, 1]
    drawn = build_conditioning(m).extra_for(list(range(30)))["class_labels"]
    assert set(drawn.tolist()) <= set(range(5)) and len(set(drawn.tolist())) > 2
    assert build_conditioning(m).distill_condition(8)(3, torch.Generator().manual_seed(0))["class_labels"].shape == (8,)
    with pytest.raises(UsageError, match="classes 0..4"):
        build_conditioning(m, classes="5")
    with pytest.raises(UsageError, match="needs a text-to-image model"):
        build_conditioning(m, guidance="cfg")


def test_adm_model_with_a_guided_diffusion_classifier_file(tmp_path: Path) -> None:
    """``--preset imagenet256 --classifier FILE.pt`` on guided-diffusion state dicts with the original key names."""
    from adasde.loaders.networks.adm import ADMConfig, ADMUNet

    def save(cfg: ADMConfig, path: Path, seed: int) -> None:
        torch.manual_seed(seed)
        net = ADMUNet(cfg)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(net.state_dict(), path)

    save(ADMConfig(16, 64, 6, 1, (2,), (1, 2), num_classes=10), tmp_path / "unet16.pt", 0)
    save(ADMConfig(16, 64, 10, 1, (2,), (1, 2), pool="attention"), tmp_path / "classifier16.pt", 1)
    base = ["sample", "--model", f"adm:{tmp_path / 'unet16.pt'}", "--sampler", "euler", "--nfe", "3", "--seeds",
            "0-1", "--no-progress"]
    assert main([*base, "--preset", "imagenet256", "--classifier", str(tmp_path / "classifier16.pt"), "--classes",
                 "3", "--guidance-rate", "50", "--out", str(tmp_path / "cg")]) == 0
    assert main([*base, "--preset", "imagenet256", "--guidance", "uncond", "--classes", "3", "--out",
                 str(tmp_path / "plain")]) == 0
    rec = json.loads((tmp_path / "cg" / ".adasde_sample.json").read_text())
    assert rec["guidance"]["guidance"] == "cg" and rec["guidance"]["guidance_rate"] == 50
    assert rec["plan"]["schedule"] == ["time_uniform", 1.0]
    from adasde.evaluation.images import read_image

    a, b = (read_image(tmp_path / d / "000000.png") for d in ("cg", "plain"))
    assert not torch.equal(a, b)
    # the preset asks for cg: without a classifier for this model that is a one-line error
    assert main([*base, "--preset", "imagenet256", "--out", str(tmp_path / "x")]) == 2
