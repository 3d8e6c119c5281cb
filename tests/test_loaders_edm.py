"""``edm:FILE.pkl``: NVIDIA EDM persistence pickles re-created with tiny random weights.

The writer below re-creates the on-disk structure of EDM's ``torch_utils.persistence`` format: the top-level
``dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)``; every network object pickled as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class', version=6,
module_src=<the module's source>, class_name=<name>, state=<the nn.Module __dict__>)``, the state holding
``_init_args`` / ``_init_kwargs``, ``_parameters`` (``nn.Parameter``s), ``_buffers`` and ``_modules`` (persistent
children and plain ``torch.nn.ModuleDict`` containers).  The module source is a payload that would create a marker
file if it were ever executed.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from adasde.errors import UsageError
from adasde.loaders import ModelSpecError
from adasde.loaders.networks.edm import DhariwalUNet, SongUNet
from adasde.models import load_model
from adasde.samplers import get_sigmas, sample_adasde, sample_heun
from helpers.pickles import fake_modules

MARKER = "EDM_SOURCE_WAS_EXECUTED"


def _payload(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\nclass SongUNet: pass\n"



class _Persistent:
    """Pickles as EDM's persistent objects do: a reconstruct call with the meta dict."""

    def __init__(self, fn, class_name, state, src):
        self.fn, self.meta = fn, dict(type="class", version=6, module_src=src, class_name=class_name, state=state)

    def __reduce__(self):
        return (self.fn, (self.meta,))


def _wrap(module, fn, src, init_kwargs=None, attrs=None, name=None):
    """The persistence view of ``module``: its __dict__ with persistent children (containers stay torch classes)."""
    state = dict(module.__dict__)
    state["_init_args"], state["_init_kwargs"] = (), dict(init_kwargs or {})
    state.update(attrs or {})
    state["_modules"] = {k: _child(m, fn, src) for k, m in module._modules.items()}
    state.pop("bottleneck", None)
    return _Persistent(fn, name or type(module).__name__, state, src)


def _child(m, fn, src):
    if m is None:
        return None
    if isinstance(m, torch.nn.ModuleDict):
        c = torch.nn.ModuleDict()
        c.__dict__["_modules"] = {k: _child(v, fn, src) for k, v in m._modules.items()}
        return c
    return _wrap(m, fn, src)


def write_edm_pickle(path: Path, net: torch.nn.Module, net_kwargs: dict, precond: str, precond_attrs: dict,
                     *, src: str, evil=None, label_dim: int = 0, protocol: int = 4, state_patch=None,
                     net_patch=None) -> Path:
    names = ["torch_utils", "torch_utils.persistence", "training", "training.networks", "training.loss", "dnnlib",
             "dnnlib.util"]
    with fake_modules(names) as mods:
        def _reconstruct_persistent_obj(meta):  # what EDM's loader would run: exec(meta['module_src'])
            raise AssertionError("never called while pickling")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

        class EasyDict(dict):
            pass

        EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
        mods["dnnlib.util"].EasyDict = EasyDict
        fn = _reconstruct_persistent_obj
        res, ch = net_kwargs["img_resolution"], net_kwargs["in_channels"]
        model_kwargs = {k: v for k, v in net_kwargs.items()
                        if k not in ("img_resolution", "in_channels", "out_channels", "label_dim")}
        outer = torch.nn.Module()
        outer.model = net
        pre_kwargs = dict(img_resolution=res, img_channels=ch, label_dim=label_dim, use_fp16=False,
                          model_type=type(net).__name__, **model_kwargs)
        attrs = dict(img_resolution=res, img_channels=ch, label_dim=label_dim, use_fp16=False, **precond_attrs)
        ema = _wrap(outer, fn, src, pre_kwargs, attrs, name=precond)
        ema.meta["state"]["_modules"]["model"] = _wrap(net, fn, src, net_kwargs)
        ema.meta["state"]["_modules"]["model"].meta["state"].update(net_patch or {})
        ema.meta["state"].update(state_patch or {})
        if evil is not None:
            ema.meta["state"]["hidden"] = evil
        loss = _Persistent(fn, "EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5), src)
        data = dict(ema=ema, loss_fn=loss, augment_pipe=None,
                    dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip"))
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    return path


SONG = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=0, augment_dim=0, model_channels=16,
            channel_mult=[1, 2], channel_mult_emb=4, num_blocks=1, attn_resolutions=[4], dropout=0.13,
            embedding_type="positional", channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
            resample_filter=[1, 1])
NCSN = {**SONG, "embedding_type": "fourier", "channel_mult_noise": 2, "encoder_type": "residual",
        "resample_filter": [1, 3, 3, 1]}
ADM = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=10, augment_dim=0, model_channels=32,
           channel_mult=[1, 2], channel_mult_emb=4, num_blocks=1, attn_resolutions=[4], dropout=0.1)
PRECONDS = {
    "EDMPrecond": dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5),
    "VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,
                      sigma_min=0.0010000, sigma_max=152.4262),
    "VEPrecond": dict(sigma_min=0.02, sigma_max=100),
}


def _net(kind, kwargs, seed=0):
    torch.manual_seed(seed)
    net = (SongUNet if kind == "song" else DhariwalUNet)(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no exactly-zero / one layers anywhere
    return net.eval()


def expected(net, precond, attrs, x, sigma, labels=None):
    """EDM Table 1, written out here independently of the loader."""
    s = sigma.double().view(-1, 1, 1, 1)
    if precond == "EDMPrecond":
        sd = attrs["sigma_data"]
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        c_noise = s.log().flatten() / 4
    elif precond == "VPPrecond":
        bd, bm, M = attrs["beta_d"], attrs["beta_min"], attrs["M"]
        t = ((bm**2 + 2 * bd * torch.log(1 + s**2)).sqrt() - bm) / bd
        c_skip, c_out, c_in, c_noise = 1.0, -s, 1 / (1 + s**2).sqrt(), ((M - 1) * t).flatten()
    else:
        c_skip, c_out, c_in, c_noise = 1.0, s, 1.0, torch.log(0.5 * s).flatten()
    with torch.no_grad():
        f = net((c_in * x.double()).float(), c_noise.float(), labels).double()
    return (c_skip * x.double() + c_out * f).float()


@pytest.fixture(autouse=True)
def _marker_guard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / MARKER).exists(), "embedded module source was executed"


@pytest.mark.parametrize("precond,arch", [("EDMPrecond", "ddpmpp"), ("VPPrecond", "ddpmpp"), ("VEPrecond", "ncsnpp")])
def test_song_unet_pickle_matches_preconditioning(tmp_path, precond, arch):
    kw = SONG if arch == "ddpmpp" else NCSN
    net = _net("song", kw)
    f = write_edm_pickle(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", net, kw, precond, PRECONDS[precond],
                         src=_payload(tmp_path / MARKER), protocol=2 if precond == "VEPrecond" else 4)
    den = load_model(f"edm:{f}")
    assert den.family == "edm-cifar10" and den.prediction == "edm" and den.sample_shape == (3, 8, 8)
    assert den.default_schedule == ("time_uniform", 1.0) and den.model_sigmas is None
    lo = {"EDMPrecond": 0.002, "VPPrecond": 0.002, "VEPrecond": 0.02}[precond]  # VP: sigma(1e-5) = 0.001
    assert den.sigma_min == pytest.approx(lo, rel=1e-5) and den.sigma_max == 80.0
    # the tensors arrive unchanged under EDM's names
    own = den.net.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(own[k], v), k
    assert "enc.8x8_conv.weight" in own and "dec.4x4_in0.qkv.weight" in own and "dec.8x8_aux_conv.weight" in own
    if arch == "ncsnpp":
        assert "enc.4x4_aux_residual.resample_filter" in own and "map_noise.freqs" in own
    x = torch.randn(3, 3, 8, 8) * 2
    sigma = torch.tensor([0.01, 1.3, 70.0])
    with torch.no_grad():
        got = den(x, sigma)
    scale = (1 + sigma).view(-1, 1, 1, 1)  # c_out grows like sigma: compare on the scale of the output
    ref = expected(den.net, precond, PRECONDS[precond], x, sigma)
    torch.testing.assert_close(got / scale, ref / scale, atol=1e-5, rtol=1e-5)
    assert den.bottleneck().shape == (3, 32, 4, 4)


def test_adm_conditional_pickle_sample_and_distill(tmp_path):
    from adasde.distill import distill

    net = _net("adm", ADM, seed=1)
    f = write_edm_pickle(tmp_path / "edm-imagenet-64x64-cond-adm.pkl", net, ADM, "EDMPrecond",
                         PRECONDS["EDMPrecond"], src=_payload(tmp_path / MARKER), label_dim=10)
    den = load_model(f"edm:{f}")
    assert den.family == "edm-imagenet64" and den.label_dim == 10
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        got = den(x, sigma, class_labels=labels)
        ref = expected(den.net, "EDMPrecond", PRECONDS["EDMPrecond"], x, sigma,
                       torch.nn.functional.one_hot(labels, 10).float())
        other = den(x, sigma, class_labels=torch.tensor([4, 7]))
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got[0], other[0]) and torch.allclose(got[1], other[1])  # labels act per sample
    with pytest.raises(UsageError, match="class_labels"):
        den(x, sigma)
    sig = get_sigmas("time_uniform", 4, den.sigma_min, den.sigma_max)
    z = torch.randn(2, *den.sample_shape) * den.sigma_max
    for fn in (sample_heun, sample_adasde):
        y = fn(den, z, sig, extra_args={"seed": 1, "class_labels": labels})
        assert y.shape == z.shape and torch.isfinite(y).all()

    def cond(it, rng):
        return {"class_labels": torch.randint(0, 10, (2,), generator=rng)}

    co = distill(den, num_steps=3, afs=True, M=1, batch=2, trajectories=4, condition_fn=cond, seed=0)
    assert co.steps == 2 and torch.isfinite(co.r).all() and co.model.family == "edm-imagenet64"


def test_uncond_distill_and_dtype(tmp_path):
    from adasde.distill import distill

    f = write_edm_pickle(tmp_path / "edm-ffhq-64x64-uncond-vp.pkl", _net("song", SONG), SONG, "EDMPrecond",
                         PRECONDS["EDMPrecond"], src=_payload(tmp_path / MARKER))
    den = load_model(f"edm:{f}")
    assert den.family == "edm-ffhq"
    co = distill(den, num_steps=3, afs=False, M=1, batch=2, trajectories=2, seed=0)
    assert co.steps == 2 and torch.isfinite(co.r).all()
    half = load_model(f"edm:{f}", dtype="bf16")
    assert next(half.net.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        y = half(torch.randn(1, 3, 8, 8), torch.tensor([1.0]))
    assert torch.isfinite(y.float()).all()


class _System:
    """An object whose unpickling would run ``os.system``."""

    def __init__(self, marker):
        self.cmd = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path):
    src = _payload(tmp_path / MARKER)
    # 1. a global that would execute a shell command
    f1 = write_edm_pickle(tmp_path / "evil1.pkl", _net("song", SONG), SONG, "EDMPrecond", PRECONDS["EDMPrecond"],
                          src=src, evil=_System(tmp_path / MARKER))
    with pytest.raises(ModelSpecError, match=r"refusing to load .*evil1\.pkl.*(posix|nt)\.system"):
        load_model(f"edm:{f1}")
    # 2. an unknown persistent class (its source would define anything it likes)
    f2 = tmp_path / "evil2.pkl"
    write_edm_pickle(f2, _net("song", SONG), SONG, "EvilPrecond", PRECONDS["EDMPrecond"], src=src)
    with pytest.raises(ModelSpecError, match=r"evil2\.pkl.*EvilPrecond"):
        load_model(f"edm:{f2}")
    # 3. a known preconditioner hiding an unknown network class
    f3 = tmp_path / "evil3.pkl"
    write_edm_pickle(f3, _net("song", SONG), SONG, "EDMPrecond", PRECONDS["EDMPrecond"], src=src)
    raw = f3.read_bytes().replace(b"\x8c\x08SongUNet", b"\x8c\x08EvilUNet")
    f3.write_bytes(raw)
    with pytest.raises(ModelSpecError, match=r"evil3\.pkl.*EvilUNet"):
        load_model(f"edm:{f3}")
    # 4. a plain pickle of a stranger
    f4 = tmp_path / "evil4.pkl"
    f4.write_bytes(pickle.dumps({"ema": _System(tmp_path / MARKER)}))
    with pytest.raises(ModelSpecError, match="refusing to load"):
        load_model(f"edm:{f4}")
    assert not (tmp_path / MARKER).exists()


def test_bad_files(tmp_path):
    with pytest.raises(ModelSpecError, match="not found"):
        load_model(f"edm:{tmp_path / 'missing.pkl'}")
    bad = tmp_path / "trunc.pkl"
    f = write_edm_pickle(tmp_path / "ok.pkl", _net("song", SONG), SONG, "EDMPrecond", PRECONDS["EDMPrecond"],
                         src="")
    bad.write_bytes(f.read_bytes()[:4000])
    with pytest.raises(ModelSpecError, match="trunc.pkl"):
        load_model(f"edm:{bad}")
    broken = write_edm_pickle(tmp_path / "edm-broken.pkl", _net("song", SONG), SONG, "EDMPrecond",
                              PRECONDS["EDMPrecond"], src="", state_patch={"_modules": ["not", "a", "dict"]})
    with pytest.raises(ModelSpecError, match=r"edm-broken\.pkl: not a well-formed EDM network pickle"):
        load_model(f"edm:{broken}")
    nokw = write_edm_pickle(tmp_path / "edm-nokw.pkl", _net("song", SONG), SONG, "EDMPrecond",
                            PRECONDS["EDMPrecond"], src="", net_patch={"_init_kwargs": None, "_init_args": None})
    with pytest.raises(ModelSpecError, match=r"edm-nokw\.pkl: SongUNet has no recorded constructor arguments"):
        load_model(f"edm:{nokw}")
    huge = write_edm_pickle(tmp_path / "edm-huge.pkl", _net("song", SONG), SONG, "EDMPrecond", PRECONDS["EDMPrecond"],
                            src="", net_patch={"_init_kwargs": {**SONG, "model_channels": 1 << 20}})
    with pytest.raises(ModelSpecError, match=r"edm-huge\.pkl: the weights do not fit"):  # checked before allocating
        load_model(f"edm:{huge}")
    with pytest.raises(ModelSpecError, match=r"\*\.pkl"):
        load_model(f"edm:{tmp_path / 'x.pt'}")


def test_released_architectures_parameter_counts():
    """Our networks with the release's recorded arguments have the published sizes (EDM paper: 55.7M CIFAR-10
    DDPM++, 61.8M FFHQ/AFHQv2 DDPM++, 296M ImageNet-64 ADM)."""
    cfgs = [
        (SongUNet, dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=[2, 2, 2],
                        num_blocks=4, attn_resolutions=[16]), 55.73),
        (SongUNet, dict(img_resolution=64, in_channels=3, out_channels=3, model_channels=128,
                        channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16]), 61.80),
        (DhariwalUNet, dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, model_channels=192,
                            channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8]), 295.90),
    ]
    for cls, kw, millions in cfgs:
        with torch.device("meta"):
            n = sum(p.numel() for p in cls(**kw).parameters())
        assert math.isclose(n / 1e6, millions, abs_tol=0.01), (cls.__name__, n)
