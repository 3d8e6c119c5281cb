"""``adasde sample`` (PNGs, grid, prompts, torchrun shards), prompt files and ``single-file:`` specs on tiny
random-weight diffusers folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from adasde.cli import main
from adasde.loaders import ModelSpecError
from adasde.loaders.prompts import PromptCondition, prompts_for_seeds, read_prompts
from adasde.models import load_model
from PIL import Image


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("0*.png"))}


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert read_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    (tmp_path / "coco.csv").write_text('image_id,id,caption\n1,10,a cat\n2,11,"a dog, running"\n')
    assert read_prompts(tmp_path / "coco.csv") == ["a cat", "a dog, running"]
    assert prompts_for_seeds(["a", "b", "c"], [4, 0, 2]) == ["b", "a", "c"]
    cond = PromptCondition(["x", "y"], cfg=3.0)
    assert cond([1, 2]) == {"prompts": ["y", "x"], "cfg": 3.0}
    (tmp_path / "bad.csv").write_text("image_id,text2\n1,a\n")
    with pytest.raises(ModelSpecError, match=r"bad.csv.*no 'caption' column"):
        read_prompts(tmp_path / "bad.csv")
    with pytest.raises(ModelSpecError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_sample_sd_with_prompts_writes_images_and_grid(sd_dir: Path, tmp_path: Path) -> None:
    from adasde.coefficients import Coefficients, ModelIdentity, save
    from adasde.samplers import get_sigmas

    (tmp_path / "caps.csv").write_text("image_id,id,caption\n1,2,a cat\n3,4,dog\n")
    den = load_model(f"diffusers:{sd_dir}")
    co = Coefficients.untrained(get_sigmas("discrete", 3, model_sigmas=den.model_sigmas, dtype=torch.float64),
                                afs=True, schedule="discrete", model=ModelIdentity(**den.identity()))
    co.gamma[1:] = 0.02  # a trained-looking churn: exercises the seeded churn noise
    save(co, tmp_path / "c.safetensors")
    out = tmp_path / "out"
    rc = main(["sample", "--model", f"diffusers:{sd_dir}", "--coeffs", str(tmp_path / "c.safetensors"),
               "--seeds", "0-2", "--prompts",
               str(tmp_path / "caps.csv"), "--cfg", "5", "--out", str(out), "--grid", str(tmp_path / "grid.png"),
               "--no-progress",
               "--batch", "2"])
    assert rc == 0
    imgs = _pngs(out)
    assert sorted(imgs) == ["000000.png", "000001.png", "000002.png"]
    assert imgs["000000.png"].shape == (16, 16, 3) and imgs["000000.png"].std() > 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)
    assert json.loads((out / ".adasde_sample.json").read_text())["num_images"] == 3
    # a bare conditional UNet without its pipeline: a clear error, exit code 2
    assert main(["sample", "--model", f"diffusers:{sd_dir}/unet", "--nfe", "3", "--seeds", "0", "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2
    with pytest.raises(ModelSpecError, match="needs its text encoder"):
        load_model(f"diffusers:{sd_dir}/unet")


def test_prompts_on_a_pixel_model_is_a_clear_error(ddpm_dir: Path, tmp_path: Path) -> None:
    from adasde.generate.sample import sample_images

    with pytest.raises(ModelSpecError, match="not a text-to-image model"):
        sample_images(f"diffusers:{ddpm_dir}", nfe=3, seeds="0", prompts=["a cat"], out=tmp_path, progress=False)


def _torchrun(args: list[str], nproc: int, cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "adasde", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_gloo_processes_equal_one(ddpm_dir: Path, tmp_path: Path) -> None:
    args = ["sample", "--model", f"diffusers:{ddpm_dir}", "--sampler", "adasde", "--nfe", "5", "--seeds", "0-4",
            "--batch", "2", "--no-progress", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one"), "--grid", str(tmp_path / "one.png")]) == 0
    _torchrun([*args, "--out", str(tmp_path / "two"), "--grid", str(tmp_path / "two.png")], 2, tmp_path)
    one, two = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert sorted(one) == sorted(two) == [f"{s:06d}.png" for s in range(5)]
    for name in one:  # batch composition differs (float rounding): at most one uint8 level apart
        diff = np.abs(one[name].astype(int) - two[name].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, name
    g1, g2 = (np.asarray(Image.open(tmp_path / f"{d}.png")).astype(int) for d in ("one", "two"))
    assert g1.shape == g2.shape and np.abs(g1 - g2).max() <= 1


def test_single_file_layouts_and_errors(sd_dir: Path, ddpm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = load_model(f"diffusers:{sd_dir}")
    st = lambda sd: {k: v.contiguous() for k, v in sd.items()}  # noqa: E731
    save_file(st(ref.unet.state_dict()), tmp_path / "unet.safetensors")
    cfg = tmp_path / "cfg"  # configs only: every weight must come from the file
    shutil.copytree(sd_dir, cfg)
    for f in cfg.rglob("*.safetensors"):
        f.unlink()
    whole = {f"unet.{k}": v for k, v in ref.unet.state_dict().items()}
    whole |= {f"vae.{k}": v for k, v in ref.vae.state_dict().items()}
    whole |= {f"text_encoder.{k}": v for k, v in ref.text.text_encoder.state_dict().items()}
    save_file(st(whole), tmp_path / "pipe.safetensors")
    x, s = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    with torch.no_grad():
        want = ref(x, s, prompts=["a cat"], cfg=3.0)
        a = load_model(f"single-file:{tmp_path / 'unet.safetensors'} --config {sd_dir}")
        torch.testing.assert_close(a(x, s, prompts=["a cat"], cfg=3.0), want, atol=1e-5, rtol=1e-5)
        b = load_model(f"single-file:{tmp_path / 'pipe.safetensors'}", config=str(cfg))
        torch.testing.assert_close(b(x, s, prompts=["a cat"], cfg=3.0), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.decode(x), ref.decode(x), atol=1e-5, rtol=1e-5)
    unet_file = tmp_path / "unet.safetensors"
    with pytest.raises(ModelSpecError, match="needs a config folder"):
        load_model(f"single-file:{unet_file}")
    with pytest.raises(ModelSpecError, match=rf"{unet_file}: the weights do not fit the UNet2DModel config"):
        load_model(f"single-file:{unet_file} --config {ddpm_dir}")  # an SD UNet given a pixel-UNet config
    with pytest.raises(ModelSpecError, match=r"unet has no \.safetensors weights|no 'unet\.' keys"):
        save_file(st({f"vae.{k}": v for k, v in ref.vae.state_dict().items()}), tmp_path / "vae.safetensors")
        load_model(f"single-file:{tmp_path / 'vae.safetensors'}?config={cfg}")
    data = unet_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSpecError, match=r"cut.safetensors.*truncated"):
        load_model(f"single-file:{tmp_path / 'cut.safetensors'} --config {sd_dir}")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, tmp_path / "ldm.safetensors")
    with pytest.raises(ModelSpecError, match=r"ldm.safetensors: no first_stage_model.* \(VAE\) keys"):
        load_model(f"single-file:{tmp_path / 'ldm.safetensors'} --config {sd_dir}")
    torch.save({"a": torch.zeros(1)}, tmp_path / "w.ckpt")
    with pytest.raises(ModelSpecError, match="do not fit"):  # read with weights_only=True, then checked
        load_model(f"single-file:{tmp_path / 'w.ckpt'} --config {sd_dir}")


def test_fid_sample_on_a_diffusers_unet_two_processes_equal_one(tmp_path: Path) -> None:
    """``adasde fid sample`` (evaluation) on a tiny 1x28x28 diffusers UNet2DModel folder: 2 gloo ranks == 1 rank."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=28,
                       in_channels=1, out_channels=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="linear")).save_pretrained(tmp_path / "m")
    spec = f"diffusers:{tmp_path / 'm'}"
    assert main(["sample", "--model", spec, "--nfe", "3", "--seeds", "100-107", "--out", str(tmp_path / "ref"),
                 "--no-progress"]) == 0
    assert main(["fid", "ref", "--data", str(tmp_path / "ref"), "--net", "fmnist", "--dest",
                 str(tmp_path / "ref.npz"), "--no-progress", "--device", "cpu"]) == 0
    args = ["fid", "sample", "--model", spec, "--sampler", "adasde", "--nfe", "3", "--seeds", "0-4", "--ref",
            str(tmp_path / "ref.npz"), "--net", "fmnist", "--batch", "2", "--no-progress", "--device", "cpu"]
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    _torchrun([*args, "--json", str(tmp_path / "two.json")], 2, tmp_path)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["num_images"] == two["num_images"] == 5
    assert two["protocol"]["world_size"] == 2
    assert two["value"] == pytest.approx(one["value"], rel=1e-3, abs=1e-3)
