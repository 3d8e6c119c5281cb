"""coefficients.io: round trip, atomic write, and every malformed-file case raising CoefficientFileError."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from adasde.coefficients import (
    CoefficientFileError,
    Coefficients,
    ModelIdentity,
    describe,
    find_coefficients,
    list_coefficient_files,
    load,
    save,
)
from adasde.coefficients.io import read_header, to_metadata
from adasde.samplers import get_sigmas
from safetensors.torch import save_file


def make(steps: int = 3, K: int = 1, family: str = "gmm", afs: bool = True, **kw) -> Coefficients:  # noqa: N803
    sig = get_sigmas("time_uniform", steps + 1, 0.002, 80.0)
    g = torch.Generator().manual_seed(steps * 10 + K)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(steps, K, generator=g)  # noqa: E731
    w = torch.softmax(torch.randn(steps, K, generator=g), -1)
    return Coefficients(r=u(0.1, 0.9), a=u(0.8, 1.2), c=u(0.95, 1.05), gamma=u(0, 1e-3), w=w, sigmas=sig, afs=afs,
                        model=ModelIdentity(family=family, prediction="edm"),
                        training={"teacher": "dpm", "M": 3, "lr": 0.2, "losses": [1.5, 0.25, float("nan")]}, **kw)


def test_round_trip(tmp_path):
    c = make(steps=4, K=2)
    c.predictor_config = {"hidden": 128}
    path = save(c, tmp_path / "sub" / "x.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["x.safetensors"]  # no tmp left behind
    d = load(path)
    for k in ("r", "a", "c", "gamma", "w"):
        assert torch.equal(getattr(d, k), getattr(c, k).float())
    assert torch.equal(d.sigmas, c.sigmas.double())
    assert d.sigmas.dtype == torch.float64
    assert (d.steps, d.K, d.nfe, d.afs, d.schedule, d.rho) == (4, 2, c.nfe, True, "time_uniform", 1.0)
    assert d.model == c.model
    assert d.training["losses"] == [1.5, 0.25, None]  # non-finite losses stored as null
    assert d.predictor_config == {"hidden": 128}
    assert d.source == str(path)
    meta = read_header(path)[1]
    assert meta["nfe"] == c.nfe and meta["steps"] == 4 and meta["version"] == 1


def test_amed_predictor_round_trip(tmp_path):
    from adasde.samplers.amed import AMEDPredictor

    net = AMEDPredictor(0.01, 0.2, seed=4)
    c = make(kind="amed")
    c.predictor, c.predictor_config = dict(net.state_dict()), net.config()
    d = load(save(c, tmp_path / "amed.safetensors"))
    assert d.kind == "amed" and set(d.predictor) == set(net.state_dict()) and d.predictor_config == net.config()
    assert torch.equal(d.predictor["enc1.weight"], c.predictor["enc1.weight"])
    with pytest.raises(CoefficientFileError, match="predictor weights"):
        save(make(kind="amed"), tmp_path / "no_pred.safetensors")
    # weights that do not rebuild the network of their config are refused when the file is written or read
    c.predictor, c.predictor_config = {"enc.0.weight": torch.randn(128, 64), "enc.0.bias": torch.zeros(128)}, None
    with pytest.raises(CoefficientFileError, match="the AMED predictor does not load: .*missing"):
        save(c, tmp_path / "bad.safetensors")
    c.predictor, c.predictor_config = dict(net.state_dict()), {**net.config(), "hidden": 1 << 30}
    with pytest.raises(CoefficientFileError, match="hidden=1073741824 does not match the predictor weights"):
        save(c, tmp_path / "huge.safetensors")


def test_save_is_atomic_on_failure(tmp_path):
    good = save(make(), tmp_path / "c.safetensors")
    before = good.read_bytes()
    bad = make()
    bad.r[0, 0] = 1.5
    with pytest.raises(CoefficientFileError, match="r must be in"):
        save(bad, good)
    assert good.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


# --------------------------------------------------------------------------------------------- malformed files
def _write_raw(path, tensors, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata=None if meta is None else {"adasde": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def _parts(c):
    t = {k: getattr(c, k).float() for k in ("r", "a", "c", "gamma", "w")}
    t["sigmas"] = c.sigmas.double()
    return t, to_metadata(c)


def test_missing_file(tmp_path):
    with pytest.raises(CoefficientFileError, match="no such file") as e:
        load(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("payload, msg", [
    (b"", "not a safetensors file"),
    (b"hello", "not a safetensors file"),
    (b"\xff" * 64, "header length"),
    (struct.pack("<Q", 10) + b"not json!!", "not JSON"),
    (struct.pack("<Q", 1000) + b"{}", "truncated"),
])
def test_not_safetensors(tmp_path, payload, msg):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(payload)
    with pytest.raises(CoefficientFileError, match=msg) as e:
        load(p)
    assert str(p) in str(e.value)


def test_truncated_data(tmp_path):
    p = save(make(), tmp_path / "t.safetensors")
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(CoefficientFileError, match="truncated"):
        load(p)


def test_plain_weights_file(tmp_path):
    p = _write_raw(tmp_path / "w.safetensors", {"weight": torch.zeros(3)}, None)
    with pytest.raises(CoefficientFileError, match="no 'adasde' metadata"):
        load(p)
    p = _write_raw(tmp_path / "j.safetensors", {"weight": torch.zeros(3)}, "{not json")
    with pytest.raises(CoefficientFileError, match="not valid JSON"):
        load(p)


def test_unknown_version(tmp_path):
    t, meta = _parts(make())
    meta["version"] = 99
    with pytest.raises(CoefficientFileError, match="unknown format version 99.*upgrade adasde"):
        load(_write_raw(tmp_path / "v.safetensors", t, meta))


def test_missing_tensor_and_field(tmp_path):
    t, meta = _parts(make())
    del t["gamma"]
    with pytest.raises(CoefficientFileError, match=r"missing tensors \['gamma'\]"):
        load(_write_raw(tmp_path / "m.safetensors", t, meta))
    t, meta = _parts(make())
    del meta["schedule"]
    with pytest.raises(CoefficientFileError, match="'schedule' is missing"):
        load(_write_raw(tmp_path / "f.safetensors", t, meta))
    t, meta = _parts(make())
    meta["afs"] = "yes"
    with pytest.raises(CoefficientFileError, match="'afs' has the wrong type"):
        load(_write_raw(tmp_path / "ty.safetensors", t, meta))


def _bad(tmp_path, mutate, msg):
    t, meta = _parts(make())
    mutate(t, meta)
    with pytest.raises(CoefficientFileError, match=msg) as e:
        load(_write_raw(tmp_path / "b.safetensors", t, meta))
    assert "b.safetensors" in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("mutate, msg", [
    (lambda t, m: t.__setitem__("a", torch.ones(2, 1)), "inconsistent shapes"),
    (lambda t, m: t.__setitem__("sigmas", t["sigmas"][:-1]), "steps \\+ 1 = 4 points, got 3"),
    (lambda t, m: t.__setitem__("r", torch.ones(3)), "r must be a \\[steps, K\\] tensor"),
    (lambda t, m: t["c"].__setitem__((1, 0), float("nan")), "c contains non-finite"),
    (lambda t, m: t["sigmas"].__setitem__(0, float("inf")), "sigmas contains non-finite"),
    (lambda t, m: t["r"].__setitem__((0, 0), 1.0), "r must be in \\(0, 1\\)"),
    (lambda t, m: t["r"].__setitem__((0, 0), 0.0), "r must be in \\(0, 1\\)"),
    (lambda t, m: t["a"].__setitem__((0, 0), -0.1), "a must be > 0"),
    (lambda t, m: t["c"].__setitem__((2, 0), 0.0), "c must be > 0"),
    (lambda t, m: t["gamma"].__setitem__((1, 0), -1e-3), "gamma must be >= 0"),
    (lambda t, m: t["w"].__setitem__((1, 0), 0.7), "simplex"),
    (lambda t, m: t["sigmas"].__setitem__(-1, 0.0), "sigmas must be positive"),
    (lambda t, m: t["sigmas"].__setitem__(2, 50.0), "strictly decreasing"),
    (lambda t, m: m.__setitem__("kind", "ddim"), "unknown kind 'ddim'"),
    (lambda t, m: m.update(kind="amed_plugin", base="heun"), "unknown AMED-Plugin base solver 'heun'"),
    (lambda t, m: m.__setitem__("schedule", "cosine"), "unknown schedule 'cosine'"),
    (lambda t, m: m.__setitem__("rho", -1), "rho must be a positive"),
    (lambda t, m: m["model"].__setitem__("prediction", "magic"), "unknown prediction 'magic'"),
])
def test_invalid_values(tmp_path, mutate, msg):
    _bad(tmp_path, mutate, msg)


# -------------------------------------------------------------------------------------------------------- lookup
def test_lookup_order_and_filters(tmp_path, monkeypatch):
    user, env = tmp_path / "user", tmp_path / "env"
    save(make(steps=3, family="sd15"), user / "a3.safetensors")
    save(make(steps=4, family="sd15"), user / "nested" / "a4.safetensors")
    save(make(steps=3, family="sd15"), env / "e3.safetensors")
    save(make(steps=5, family="sdxl"), env / "x5.safetensors")
    save(make(steps=3, family="sd15", kind="amed_plugin", base="dpmpp"), env / "plug.safetensors")
    (user / "broken.safetensors").write_bytes(b"garbage")
    monkeypatch.setenv("ADASDE_COEFFICIENTS", str(env))
    files = list_coefficient_files([user])
    assert [f.name for f in files[:3]] == ["a3.safetensors", "broken.safetensors", "a4.safetensors"]
    assert {f.name for f in files} >= {"e3.safetensors", "x5.safetensors"}
    c = find_coefficients("SD1.5", steps=3, dirs=[user])
    assert c is not None and c.source.endswith("a3.safetensors")  # caller folder before the env folder
    assert find_coefficients("sd15", steps=3).source.endswith("e3.safetensors")  # env only
    assert find_coefficients("sd15", nfe=7, dirs=[user]).source.endswith("a4.safetensors")  # 4 steps + AFS = 7
    assert find_coefficients("sdxl", dirs=[user]).steps == 5
    assert find_coefficients("sd15", steps=3, kind="amed_plugin").base == "dpmpp"
    assert find_coefficients("sd15", steps=9, dirs=[user]) is None
    assert find_coefficients("flux") is None
    assert find_coefficients("sd15", prediction="eps", steps=3, dirs=[user]) is None  # file says edm


def test_lookup_skips_bad_data_with_valid_header(tmp_path, caplog):
    d = tmp_path / "d"
    d.mkdir()
    t, meta = _parts(make(family="gmm"))
    t["r"][0, 0] = 2.0
    _write_raw(d / "0bad.safetensors", t, meta)
    save(make(family="gmm"), d / "1good.safetensors")
    c = find_coefficients("gmm", dirs=[d])
    assert c.source.endswith("1good.safetensors")
    assert "0bad.safetensors" in caplog.text


def test_describe():
    c = make(steps=3)
    c.source = "/x/y/sd15_nfe5.safetensors"
    s = describe(c)
    assert "AdaSDE" in s and "NFE 5" in s and "3 steps" in s and "sd15_nfe5.safetensors" in s and "gmm" in s
    assert "untrained" in describe(None)


def test_header_disagrees_with_tensors(tmp_path):
    t, meta = _parts(make())
    meta["steps"] = 7
    with pytest.raises(CoefficientFileError, match="metadata says steps=7 but the tensors have steps=3"):
        load(_write_raw(tmp_path / "h.safetensors", t, meta))
    t, meta = _parts(make())
    meta["version"] = True
    with pytest.raises(CoefficientFileError, match="unknown format version True"):
        load(_write_raw(tmp_path / "v.safetensors", t, meta))
