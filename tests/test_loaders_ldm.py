"""``single-file:FILE`` on original CompVis / Stability Stable Diffusion checkpoints (SD 1.x, SD 2.x, SDXL) written
in their on-disk formats (Lightning ``.ckpt`` with ``state_dict``, flat ``.safetensors``) from tiny random models:
configs built in code, denoiser checked against the preconditioning formulas, sampling, distillation, refusal of
pickles that would run code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from adasde.loaders import ModelSpecError
from adasde.models import load_model
from adasde.samplers import get_sigmas, sample_adasde
from helpers.ldm_layout import tiny_sd

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    return tiny_sd(tmp_path_factory.mktemp("sd15") / "pipe", "sd15")


def _ckpt(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """The Lightning checkpoint layout of the original training code: {"state_dict": ..., "global_step": ...}."""
    torch.save({"state_dict": sd, "global_step": 840000, "epoch": 6}, path)
    return path


def _embed(pipe_dir: Path, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states of the padded prompts, straight from the reference text model."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(pipe_dir / "tokenizer"), local_files_only=True)
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def _reference(pipe_dir: Path):
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(pipe_dir / "unet"), local_files_only=True)
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(str(pipe_dir / "text_encoder"), local_files_only=True)
    sched = diffusers.DDIMScheduler.from_pretrained(str(pipe_dir / "scheduler"), local_files_only=True)
    return unet, te, sched


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_sd15_file_matches_the_preconditioning_formula(sd15, tmp_path: Path, fmt: str) -> None:
    sd, pipe_dir = sd15
    f = _ckpt(sd, tmp_path / "v1.ckpt") if fmt == "ckpt" else tmp_path / "v1.safetensors"
    if fmt == "safetensors":
        save_file(sd, f)
    den = load_model(f"single-file:{f} --config {pipe_dir}", image_size=16)
    assert (den.family, den.prediction, den.flow, den.flow_shift) == ("sd15", "eps", False, None)
    assert den.sample_shape == (4, 8, 8) and den.default_schedule == ("discrete", 1.0)
    unet, te, sched = _reference(pipe_dir)
    # float64 throughout: float32 results depend on how prompts are batched (rounding, amplified by cfg 7.5), float64
    # leaves only the formula to compare
    den.double(), unet.double(), te.double()
    i = 500  # an integer timestep: sigma sits on the table, so t is exact
    # the table is alpha_bar in float64; the scheduler's is the same in float32
    table = den.param.table
    torch.testing.assert_close(1 / (1 + table.sigmas**2), sched.alphas_cumprod.double(), atol=0, rtol=1e-5)
    sigma = table.sigmas[i]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ctx = _embed(pipe_dir, te, ["a cat", "dog"])
        unc = _embed(pipe_dir, te, ["", ""])
        x_in = x / (1 + sigma**2).sqrt()
        t = torch.full((2,), float(i))
        e_c = unet(x_in, t, encoder_hidden_states=ctx).sample
        e_u = unet(x_in, t, encoder_hidden_states=unc).sample
        want = x - sigma * (e_u + 7.5 * (e_c - e_u))
        got = den(x, torch.full((2,), float(sigma), dtype=torch.float64), prompts=["a cat", "dog"], cfg=7.5)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    assert den.model_sigmas is not None and float(den.model_sigmas[i]) == pytest.approx(float(sigma), rel=1e-5)


def test_sd15_samples_and_distils_with_cfg(sd15, tmp_path: Path) -> None:
    from adasde.distill import distill
    from adasde.loaders.prompts import PromptCondition

    sd, pipe_dir = sd15
    f = tmp_path / "v1.safetensors"
    save_file(sd, f)
    den = load_model(f"single-file:{f}", config=str(pipe_dir), image_size=16)
    sig = get_sigmas(*den.default_schedule[:1], 4, den.sigma_min, den.sigma_max, rho=den.default_schedule[1],
                     model_sigmas=den.model_sigmas)
    x = torch.randn(2, *den.sample_shape) * sig[0]
    y = sample_adasde(den, x, sig, extra_args={"prompts": ["a cat", "dog"], "cfg": 7.5, "seed": 0})
    assert torch.isfinite(y).all() and den.decode(y).shape == (2, 3, 16, 16)
    cond = PromptCondition(["a cat", "dog"], cfg=7.5).distill_condition(2)
    co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=2, condition_fn=cond, seed=0)
    assert co.steps == 2 and torch.isfinite(co.r).all() and co.model.family == "sd15"


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_files_match_their_diffusers_pipelines(tmp_path: Path, family: str) -> None:
    sd, pipe_dir = tiny_sd(tmp_path / "pipe", family)
    save_file(sd, tmp_path / "m.safetensors")
    den = load_model(f"single-file:{tmp_path / 'm.safetensors'} --config {pipe_dir}", image_size=16)
    ref = load_model(f"diffusers:{pipe_dir}")
    assert den.family == family and den.prediction == ("v" if family == "sd2" else "eps")
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 0.3])
    with torch.no_grad():  # float64: float32 rounding depends on how prompts are batched and cfg 7.5 amplifies it
        kw = {"prompts": ["a cat", "dog"], "cfg": 7.5}
        den.double(), ref.double()
        x64, s64 = x.double(), s.double()
        torch.testing.assert_close(den(x64, s64, **kw), ref(x64, s64, **kw), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(den.decode(x64), ref.decode(x64), atol=1e-10, rtol=1e-10)
    if family == "sd2":  # SD 2.x v-prediction: D = x / (1 + s^2) - s / sqrt(1 + s^2) v, v from the raw network
        unet = ref.unet
        emb, _ = ref.text.encode(["a cat", "dog"], torch.device("cpu"))
        with torch.no_grad():
            t = ref.param.timestep(s64).float()
            v = unet(x64 / (1 + s64[:, None, None, None] ** 2).sqrt(), t, encoder_hidden_states=emb).sample
            sv = s64[:, None, None, None]
            want = x64 / (1 + sv**2) - sv / (1 + sv**2).sqrt() * v
            torch.testing.assert_close(den(x64, s64, prompts=["a cat", "dog"]), want, atol=1e-10, rtol=1e-10)
        eps = load_model(f"single-file:{tmp_path / 'm.safetensors'}?config={pipe_dir}&image_size=16&prediction=eps")
        assert eps.prediction == "eps" and eps.sample_shape == (4, 8, 8)
        with pytest.raises(ModelSpecError, match="option image_size='x' is not a valid int"):
            load_model(f"single-file:{tmp_path / 'm.safetensors'}?config={pipe_dir}&image_size=x")
    default = load_model(f"single-file:{tmp_path / 'm.safetensors'} --config {pipe_dir}")
    side = {"sd2": 768, "sdxl": 1024}[family] // 2  # the tiny VAE downsamples by 2
    assert default.sample_shape == (4, side, side)


class _Payload:
    """Unpickling this would create ``marker`` (the code a malicious checkpoint runs)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_malicious_checkpoints_are_refused_and_run_nothing(sd15, tmp_path: Path) -> None:
    sd, pipe_dir = sd15
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "callbacks": _Payload(marker)}, bad)
    with pytest.raises(ModelSpecError, match=r"evil.ckpt: cannot be read with torch.load\(weights_only=True\)"):
        load_model(f"single-file:{bad} --config {pipe_dir}")
    raw = tmp_path / "raw.ckpt"  # a plain pickle (not a torch zip archive)
    raw.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ModelSpecError, match="raw.ckpt: cannot be read"):
        load_model(f"single-file:{raw} --config {pipe_dir}")
    assert not marker.exists()


def test_wrong_or_partial_original_checkpoints_name_the_file(sd15, tmp_path: Path, monkeypatch) -> None:
    sd, pipe_dir = sd15
    unet_only = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    save_file(unet_only, tmp_path / "unet.safetensors")
    with pytest.raises(ModelSpecError, match=r"unet.safetensors: no first_stage_model"):
        load_model(f"single-file:{tmp_path / 'unet.safetensors'}")
    cut = dict(sd)
    del cut["model.diffusion_model.out.2.weight"]
    save_file(cut, tmp_path / "cut.safetensors")
    with pytest.raises(ModelSpecError, match=r"cut.safetensors: missing tensor model.diffusion_model.out.2.weight"):
        load_model(f"single-file:{tmp_path / 'cut.safetensors'} --config {pipe_dir}", image_size=16)
    wrong = dict(sd)
    k = next(k for k in sd if k.endswith("attn2.to_v.weight"))
    wrong[k] = torch.zeros(3, 3)
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(ModelSpecError, match=r"wrong.safetensors: the weights do not fit the U-Net built for this"):
        load_model(f"single-file:{tmp_path / 'wrong.safetensors'} --config {pipe_dir}", image_size=16)
    import adasde.loaders.ldm_checkpoint as ldm

    monkeypatch.setitem(ldm.HUB_TOKENIZERS, "sd15", [("adasde-tests/no-such-tokenizer", None)])
    save_file(sd, tmp_path / "v1.safetensors")
    with pytest.raises(ModelSpecError, match=r"v1.safetensors: the sd15 tokenizer is not stored in checkpoints"):
        load_model(f"single-file:{tmp_path / 'v1.safetensors'}", image_size=16)
    with pytest.raises(ModelSpecError, match="not a multiple of the VAE's factor"):
        load_model(f"single-file:{tmp_path / 'v1.safetensors'} --config {pipe_dir}", image_size=15)
