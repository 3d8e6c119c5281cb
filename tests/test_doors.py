"""The cross-door matrix: every door yields the sampling policy's plan, the library's latent and the same text.

Models: ``builtin:fmnist`` (library, CLI) and tiny random SD1.5-, SDXL- and SD3-architecture diffusers checkpoints
built here (library, CLI, the diffusers scheduler in the real pipelines; SD3: diffusers only, the library side is the
policy's plan run by ``adasde.samplers`` on the transformer).  The WebUI door runs the real ``scripts/adasde.py``
against the labelled stand-in of A1111 1.10 (SD1.5 model) and Forge (SDXL model), whose models have the same identity
(family, prediction, sigma table) as the tiny checkpoints.  Cases and files: ``tests/helpers/doors.py``.

Tolerances: plans must agree exactly (sigmas to 1e-6 relative: hosts keep grids in float32); CLI images are
compared bit for bit with the library's; latents of the diffusers pipelines agree with the library's direct call to
5e-4 absolute (float32 UNet / transformer evaluated on differently ordered batches); WebUI latents to 1e-6.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from adasde import policy
from adasde.errors import AdasdeError, UsageError
from adasde.samplers import CoefficientMismatchWarning
from adasde.samplers.registry import SAMPLERS
from helpers import doors

ROOT = Path(__file__).resolve().parent.parent
PROMPT, CFG = "a cat", 3.0
CLI_CASES = ("auto", "named", "wrong_family", "wrong_steps", "named_wrong_steps", "batch")  # no --denoise / split


class World:
    """One model with its files: ``info`` as the library sees it, ``den`` (library denoiser), ``pipe``."""

    def __init__(self, name: str, root: Path) -> None:
        from adasde.models import load_model

        self.name, self.folder = name, root / "coefficients"
        self.pipe = None
        if name == "fmnist":
            self.spec = "builtin:fmnist"
        else:
            import diffusers

            path = doors.make_pipeline(name, root / name)
            self.spec = f"diffusers:{path}"
            cls = {"sd15": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline,
                   "sd3": diffusers.StableDiffusion3Pipeline}[name]
            extra = {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3" else {}
            self.pipe = cls.from_pretrained(path, local_files_only=True, **extra)
            self.pipe.set_progress_bar_config(disable=True)
        if name == "sd3":  # the library side of a flow model: the policy's ModelInfo from the scheduler config
            from adasde.diffusers_scheduler import AdaSDEScheduler

            self.den = None
            self.info = AdaSDEScheduler.for_pipeline(self.pipe.scheduler.config, model_family="sd3").model_info()
        else:
            self.den = load_model(self.spec)
            self.info = policy.ModelInfo.of(self.den)
        sd3 = name == "sd3"  # the SD3 pipeline never calls scale_model_input: files without AFS / first-row churn
        self.files = doors.write_files(self.folder, self.info, afs=not sd3, churn=not sd3)

    def extra(self, seeds: list[int]) -> dict:
        return {} if self.name == "fmnist" else {"prompts": [PROMPT] * len(seeds), "cfg": CFG}


_WORLDS: dict[str, World] = {}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("doors")


def get_world(name: str, root: Path) -> World:
    if name not in _WORLDS:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _WORLDS[name] = World(name, root)
        finally:
            torch.set_num_threads(n)
    return _WORLDS[name]


@pytest.fixture
def search(monkeypatch):
    def use(w: World) -> None:
        monkeypatch.setenv("ADASDE_COEFFICIENTS", str(w.folder))
    return use


def library_latents(w: World, plans: list[policy.Plan], seeds: list[int]) -> torch.Tensor:
    """The library's direct call: ``generate.sample_batch`` for the first stage, the sampler function on the previous
    stage's output for the next ones (per-sample seeds for the churn noise)."""
    from adasde.generate import sample_batch

    if w.den is not None:
        x = sample_batch(w.den, plans[0], seeds, w.extra(seeds))
        model = w.den
    else:
        from adasde.samplers.presets import initial_noise

        model = doors.SD3Denoiser(w.pipe, [PROMPT] * len(seeds), CFG)
        x = initial_noise(seeds, (4, 8, 8), float(plans[0].sigmas[0]))
        x = SAMPLERS["adasde"](model, x, plans[0].sigmas.float(), extra_args={"seed": seeds}, disable=True,
                               **plans[0].options())
    for p in plans[1:]:
        x = SAMPLERS["adasde"](model, x, p.sigmas.float(), extra_args={**w.extra(seeds), "seed": seeds},
                               disable=True, **p.options())
    return x


# ------------------------------------------------------------------------------------------------ library + CLI
@pytest.mark.parametrize("name", ["fmnist", "sd15", "sdxl"])
@pytest.mark.parametrize("which", CLI_CASES)
def test_cli_door(name, which, world_root, search, tmp_path):
    """``adasde sample`` (through ``cli.main``): the plan in its run record and its notes are the policy's, its
    PNGs are the library's ``generate`` images bit for bit; a refused file is the policy's one line, exit 2."""
    from adasde import cli
    from adasde.evaluation.images import read_image
    from adasde.generate import generate_all

    w = get_world(name, world_root)
    search(w)
    c = doors.case(which)
    want = doors.expected(w.info, which, w.files)
    seeds = list(c.seeds)
    argv = ["sample", "--model", w.spec, "--sampler", "adasde", "--steps", str(c.steps), "--seeds",
            ",".join(map(str, seeds)), "--no-progress"]
    if c.coefficients != "auto":
        argv += ["--coeffs", str(w.files[c.coefficients])]
    if name != "fmnist":
        argv += ["--prompt", PROMPT, "--cfg", str(CFG)]
    runs = [1, 4] if which == "batch" else [2]
    images = []
    for b in runs:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv + ["--out", str(tmp_path / f"b{b}"), "--batch", str(b)])
        if isinstance(want, str):
            assert rc == 2 and err.getvalue() == f"adasde sample: error: {want}\n"
            return
        assert rc == 0, err.getvalue()
        record = json.loads((tmp_path / f"b{b}" / ".adasde_sample.json").read_text())["plan"]
        door = {"sigmas": record["sigmas"], "coefficients": record["coefficients"],
                "offset": record["coefficient_rows_from"] or 0, "nfe": record["nfe"], "notes": record["notes"]}
        doors.assert_same(door, doors.summary(want[0]), rtol=0)
        assert [ln[len("note: "):] for ln in err.getvalue().splitlines() if ln.startswith("note: ")] == want[0].notes
        images.append(torch.stack([read_image(tmp_path / f"b{b}" / f"{s:06d}.png") for s in seeds]))
    for b, im in zip(runs, images):  # the library at the CLI's batch size: bit for bit
        ref = generate_all(w.den, want[0], seeds, batch=b, progress=False, extra_for=lambda s: w.extra(s))
        assert torch.equal(im, ref)
    if len(images) == 2:  # batch 1 vs 4: float32 kernels may round differently by batch size: <= 1 grey level
        assert (images[0].int() - images[1].int()).abs().max() <= 1


# ------------------------------------------------------------------------------------------------ diffusers
@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd3"])
@pytest.mark.parametrize("which", doors.CASES)
def test_diffusers_door(name, which, world_root, search):
    """``AdaSDEScheduler`` in the real tiny pipeline: the policy's plan (``sched.plan``), one timestep per model
    call, the notes as warnings, and the library's latent."""
    from adasde.diffusers_scheduler import AdaSDEScheduler

    w = get_world(name, world_root)
    search(w)
    c = doors.case(which)
    want = doors.expected(w.info, which, w.files)
    choice = doors.choice(c, w.files)
    sched = AdaSDEScheduler.for_pipeline(w.pipe.scheduler.config, model_family=w.info.family,
                                         coefficients=str(choice))
    assert sched.model_info().schedule() == w.info.schedule()
    w.pipe.scheduler = sched

    def call(latents, seeds):
        sched.set_noise_seeds(seeds)
        kw = dict(prompt=[PROMPT] * len(seeds), num_inference_steps=c.steps, guidance_scale=CFG, latents=latents,
                  output_type="latent", height=16, width=16)
        if name == "sd3":
            kw["max_sequence_length"] = 8
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = w.pipe(**kw).images
        return out, [str(r.message) for r in rec if issubclass(r.category, CoefficientMismatchWarning)]

    seeds = list(c.seeds)
    z = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    if isinstance(want, str):
        with pytest.raises(UsageError) as err:
            call(z, seeds)
        assert str(err.value) == want
        return
    x = None
    for (lo, hi), plan in zip(c.stages, want):
        sched.set_cut(c.denoise, lo, hi)
        start = z * float(plan.sigmas[0]) if x is None else x
        scale = 1.0 if name == "sd3" else float(plan.sigmas[0])  # SD pipelines multiply by init_noise_sigma
        x, notes = call(start / scale, seeds)
        doors.assert_same(doors.summary(sched.plan), doors.summary(plan), rtol=0)
        assert notes == plan.notes and len(sched.timesteps) == plan.nfe
    ref = library_latents(w, want, seeds)
    torch.testing.assert_close(x, ref, atol=5e-4, rtol=0)
    if which == "batch":
        alone = []
        for s in seeds:
            y, _ = call(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) * float(
                want[0].sigmas[0]) / (1.0 if name == "sd3" else float(want[0].sigmas[0])), [s])
            alone.append(y)
        torch.testing.assert_close(torch.cat(alone), x, atol=5e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ WebUI
WEBUI = {"a1111": "sd15", "forge": "sdxl"}


@pytest.mark.parametrize("host", list(WEBUI))
@pytest.mark.parametrize("which", [c for c in doors.CASES if c != "split"])  # the WebUI has no split sampling
def test_webui_door(host, which, world_root, tmp_path, monkeypatch):
    """``scripts/adasde.py`` in the WebUI stand-in: the model identity equals the tiny checkpoint's, the sampler
    runs the policy's plan (img2img with "img2img_fix_steps" = the policy's denoise cut), the notes go to
    ``p.comment``, refused files stop the generation with the policy's line, latents equal the direct call."""
    from adasde.webui import detect_model

    w = get_world(WEBUI[host], world_root)
    monkeypatch.delenv("ADASDE_COEFFICIENTS", raising=False)
    c = doors.case(which)
    with doors.webui_host(host, tmp_path / "models") as st:
        from modules import sd_samplers, shared
        from modules.processing import StableDiffusionProcessing, process_images

        mod = doors.run_webui_script(ROOT)
        wrap = sd_samplers.create_sampler("AdaSDE", shared.sd_model).model_wrap
        info = detect_model(shared.sd_model, wrap)
        assert (info.family, info.prediction, info.flow) == (w.info.family, w.info.prediction, w.info.flow)
        torch.testing.assert_close(info.model_sigmas, w.info.model_sigmas, rtol=1e-5, atol=0)
        files = doors.write_files(tmp_path / "models" / "adasde", info)
        want = doors.expected(info, which, files, dirs=[tmp_path / "models" / "adasde"])
        same_files = doors.write_files(tmp_path / "lib", w.info)  # the same files for the checkpoint, same plan
        lib = doors.expected(w.info, which, same_files, dirs=[tmp_path / "lib"])
        if isinstance(want, str):
            assert lib == want.replace(str(files[c.coefficients]), str(same_files[c.coefficients]))
        else:
            for a, b in zip(want, lib):
                sa, sb = doors.summary(a), doors.summary(b)
                assert (sa["offset"], sa["nfe"], Path(sa["coefficients"] or "-").name, sa["notes"]) == (
                    sb["offset"], sb["nfe"], Path(sb["coefficients"] or "-").name, sb["notes"])
                torch.testing.assert_close(a.sigmas, b.sigmas, rtol=1e-5, atol=0)
        shared.opts.img2img_fix_steps = True
        label = files[c.coefficients].name if c.coefficients != "auto" else "auto"

        def process(seeds):
            init = torch.full((len(seeds), *st.LATENT), 0.2) if c.denoise < 1 else None
            p = StableDiffusionProcessing(steps=c.steps, seeds=list(seeds), script_args=(label,),
                                          denoising_strength=c.denoise if c.denoise < 1 else 0.0, init_latent=init)
            return p, process_images(p, [mod.Script()])

        if isinstance(want, str):
            with pytest.raises(AdasdeError) as err:
                process(c.seeds)
            assert str(err.value) == want
            return
        p, (samples, text, sampler) = process(c.seeds)
        plan = want[0]
        doors.assert_same(doors.summary(p.adasde_last_plan), doors.summary(plan), rtol=1e-6)
        assert list(p.comments) == plan.notes
        assert f"AdaSDE NFE: {plan.nfe}" in text
        assert f"AdaSDE coefficients: {Path(plan.coeffs_path).name if plan.trained else 'untrained'}" in text
        sig = sampler.last_kwargs["sigmas"]
        s = sd_samplers.create_sampler("AdaSDE", shared.sd_model)
        q = StableDiffusionProcessing(steps=c.steps, seeds=list(c.seeds))
        s.initialize(q)
        cond, uncond = q.conds()
        extra = {"cond": cond, "image_cond": None, "uncond": uncond, "cond_scale": q.cfg_scale, "s_min_uncond": 0.0}
        x = q.initial_noise() * sig[0] + (0.2 if c.denoise < 1 else 0.0)
        full = policy.plan(info, "adasde", steps=int(c.steps / c.denoise), dirs=[tmp_path / "models" / "adasde"])
        noise = s.create_noise_sampler(x, full.sigmas.float() if c.denoise < 1 else sig, q)
        ref = SAMPLERS["adasde"](s.model_wrap_cfg, x, plan.sigmas.float(), extra_args=extra, noise_sampler=noise,
                                 disable=True, **plan.options())
        torch.testing.assert_close(samples, ref, atol=1e-6, rtol=0)
        if which == "batch":
            for i, seed in enumerate(c.seeds):
                _, (one, _, _) = process([seed])
                torch.testing.assert_close(one[0], samples[i], atol=1e-6, rtol=0)


def test_sd3_pipeline_refuses_an_afs_plan(world_root, search, tmp_path):
    """The SD3 pipeline never calls scale_model_input, so the first input of an AFS plan cannot be moved: the run
    stops with one line naming the fix instead of sampling from the wrong point."""
    from adasde.coefficients import save
    from adasde.diffusers_scheduler import AdaSDEScheduler

    w = get_world("sd3", world_root)
    path = save(doors.trained(w.info, 3, 9, afs=True), tmp_path / "afs.safetensors")
    w.pipe.scheduler = AdaSDEScheduler.for_pipeline(w.pipe.scheduler.config, model_family="sd3",
                                                    coefficients=str(path))
    with pytest.raises(UsageError, match="did not call scale_model_input.*AFS.*without AFS"):
        w.pipe(prompt=[PROMPT], num_inference_steps=3, guidance_scale=CFG, output_type="latent", height=16,
               width=16, max_sequence_length=8)
